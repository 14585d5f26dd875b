"""Rendering a :class:`~codegen.plan.ModelPlan` to formatted Python source.

The templates (``codegen/templates/*.jinja``, one per construct) lay out decisions already
taken in the plan. The jinja2 environment is strict (an undefined name is an error, never an
empty string) and the output goes through ``ruff format`` with explicit settings, so the
result depends on the plan and ruff's version only, not on the directory it runs in. A
formatter that is missing or fails is an error: unformatted or empty output is never returned.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from shutil import which

import jinja2

from codegen.errors import RenderError as RenderError  # its home; named here as always
from codegen.plan import ModelPlan

TEMPLATES = Path(__file__).resolve().parent / "templates"
LINE_LENGTH = 100
TARGET_VERSION = "py310"
# The settings of `ruff format`; --isolated ignores any pyproject.toml/ruff.toml around.
RUFF_FORMAT_ARGS = (
    "format",
    "--isolated",
    f"--line-length={LINE_LENGTH}",
    f"--target-version={TARGET_VERSION}",
    "--stdin-filename=model.py",
    "-",
)


_GROUPED = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_KEEP_TOGETHER = "\u00a0"  # textwrap breaks at ASCII whitespace only


def _fill(text: str, first: str, rest: str) -> str:
    """Wrap one paragraph; never break inside (...) or [...], where shapes live."""
    text = _GROUPED.sub(lambda m: m.group(0).replace(" ", _KEEP_TOGETHER), " ".join(text.split()))
    wrapped = textwrap.fill(
        text,
        width=LINE_LENGTH - 3,  # room for closing quotes
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return wrapped.replace(_KEEP_TOGETHER, " ")


def _wrap(text: str, indent: str = "") -> str:
    """Wrap prose for a bullet of the module docstring; continuation lines get ``indent``."""
    return _fill(text, "", indent)


def _docstring(text: str, indent: int = 4) -> str:
    """The inside of a docstring that opens with triple quotes at column ``indent``.

    Paragraphs are separated by blank lines and wrapped so that every line, the closing
    quotes included, fits. In a paragraph, lines that start with ``* `` are items (an
    ``Args:`` list): each is indented by four more spaces, and its continuation lines by
    eight."""
    margin = " " * indent
    opening = margin + '"""'
    out: list[str] = []
    for paragraph in text.strip().split("\n\n"):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        blocks: list[list[str]] = [[]]
        for line in lines:
            if line.startswith("* "):
                blocks.append([line[2:]])
            else:
                blocks[-1].append(line)
        parts = []
        if blocks[0]:
            parts.append(_fill(" ".join(blocks[0]), opening if not out else margin, margin))
        for item in blocks[1:]:
            parts.append(_fill(" ".join(item), margin + "    ", margin + "        "))
        out.append("\n".join(parts))
    body = "\n\n".join(out)
    if not body.startswith(opening):
        raise RenderError(f"a docstring must open with a sentence, got {text[:40]!r}")
    return body[len(opening) :]


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["wrap"] = _wrap
    env.filters["doc"] = _docstring
    return env


def render_unformatted(plan: ModelPlan) -> str:
    """The template output before formatting (for debugging templates)."""
    try:
        return environment().get_template("model.jinja").render(plan=plan, p=plan.prefix)
    except jinja2.TemplateError as err:
        raise RenderError(f"rendering {plan.spec_name!r} failed: {err}") from err


def ruff_command() -> list[str]:
    """How to run ruff: the one installed next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return [str(beside)]
    try:
        import ruff  # noqa: F401
    except ImportError:
        pass
    else:
        return [sys.executable, "-m", "ruff"]

    found = which("ruff")
    if found is None:
        raise RenderError(
            "ruff is not installed; code generation formats its output with it "
            "(pip install ruff, or install llmspec[dev])"
        )
    return [found]


def format_source(source: str) -> str:
    """``source`` formatted by ``ruff format`` with this module's fixed settings."""
    command = [*ruff_command(), *RUFF_FORMAT_ARGS]
    try:
        done = subprocess.run(
            command, input=source, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RenderError(f"running {' '.join(command)} failed: {err}") from err
    if done.returncode != 0 or not done.stdout.strip():
        raise RenderError(
            f"ruff format failed (exit {done.returncode}) on the generated source:\n"
            f"{done.stderr.strip()}"
        )
    return done.stdout


def render(plan: ModelPlan) -> str:
    """The formatted source of the model file that ``plan`` describes."""
    return format_source(render_unformatted(plan))
