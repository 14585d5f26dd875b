"""Prompts for in-context learning: zero-, one- and few-shot, from a template and examples.

A *template* lays out one example with two fields, ``{input}`` and ``{output}`` (``{output}``
after ``{input}``); literal braces are written ``{{`` and ``}}``, as in ``str.format``::

    Review: {input}
    Sentiment: {output}

*Examples* come from a JSONL file, one JSON object per line with string ``input`` and ``output``
keys (other keys are ignored, blank lines skipped). A K-shot prompt is the first K examples,
each laid out by the whole template, then the query laid out by the template up to its
``{output}`` field, all separated by :data:`SEPARATOR` (a blank line)::

    Review: great film
    Sentiment: positive

    Review: dull
    Sentiment: negative

    Review: <the query>
    Sentiment:

The text before ``{output}`` is kept exactly (a trailing space stays), so the template decides
where the model's answer starts; a template file's final newline is dropped.

Decision: the issue asked for jinja2 templates, but jinja2 belongs to the ``compile`` extra and
``llmspec generate --examples`` must work where only the runtime is installed. The two fields
a few-shot layout needs are served by the standard library's ``string.Formatter`` parser,
which also rejects any other field, so a typo such as ``{ouput}`` is an error, not a silent
blank.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from llmspec.errors import LlmspecError
from runtime.reading import MiB, UnreadableFile, parse_json, read_text

SEPARATOR = "\n\n"
DEFAULT_TEMPLATE = "Input: {input}\nOutput: {output}"
FIELDS = ("input", "output")
# Templates are a few lines; examples files hold a handful to a few thousand short examples.
MAX_TEMPLATE_BYTES = 1 * MiB
MAX_EXAMPLES_BYTES = 64 * MiB


class PromptError(ValueError, LlmspecError):
    """A template, an examples file or a shot count that cannot be used; says where and why."""


@dataclass(frozen=True)
class Example:
    input: str
    output: str


@dataclass(frozen=True)
class Template:
    """A parsed template: the text before ``{output}`` (with ``{input}`` in it) and after."""

    source: str
    query_part: str  # the template up to {output}, still with its {input} field
    answer_part: str  # the template from {output} on

    @classmethod
    def parse(cls, text: str, where: str = "template") -> Template:
        """Check ``text`` and split it at ``{output}``; PromptError says what is wrong."""
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as err:  # unbalanced braces
            raise PromptError(f"{where}: {err}; write literal braces as {{{{ and }}}}") from None
        seen: list[str] = []
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in FIELDS:
                raise PromptError(
                    f"{where}: unknown field {{{name}}}; a template has the fields {{input}} "
                    "and {output} (write literal braces as {{ and }})"
                )
            if spec or conversion:
                raise PromptError(f"{where}: write the field {{{name}}} without a format spec")
            seen.append(name)
        for name in FIELDS:
            if seen.count(name) != 1:
                raise PromptError(
                    f"{where}: the template needs the field {{{name}}} exactly once, "
                    f"found it {seen.count(name)} times"
                )
        if seen.index("output") < seen.index("input"):
            raise PromptError(f"{where}: {{output}} must come after {{input}}")
        cut = _field_offset(text, "output")
        return cls(text, text[:cut], text[cut:])

    def render(self, example: Example) -> str:
        return self.source.format(input=example.input, output=example.output)

    def render_query(self, query: str) -> str:
        return self.query_part.format(input=query)


def _field_offset(text: str, field: str) -> int:
    """The offset of the replacement field ``{field}`` in ``text`` (escaped braces skipped)."""
    offset = 0
    for literal, name, spec, conversion in string.Formatter().parse(text):
        # Each {{ or }} in the source is one brace in ``literal``.
        offset += len(literal) + literal.count("{") + literal.count("}")
        if name == field:
            return offset
        if name is not None:
            offset += len(name) + 2 + (len(spec) + 1 if spec else 0)
            offset += 2 if conversion else 0
    raise PromptError(f"the template has no {{{field}}} field")


def read_template(path: str | Path) -> Template:
    """Read a template file (its final newline dropped)."""
    file = Path(path)
    try:
        text = read_text(file, MAX_TEMPLATE_BYTES, "template")
    except UnreadableFile as err:
        raise PromptError(f"cannot read the template: {err}") from None
    return Template.parse(text.removesuffix("\n"), str(file))


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a JSONL file, in order; PromptError names the file and line."""
    file = Path(path)
    try:
        lines = read_text(file, MAX_EXAMPLES_BYTES, "examples file").splitlines()
    except UnreadableFile as err:
        raise PromptError(f"cannot read the examples: {err}") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            item = parse_json(line.encode("utf-8"), where)
        except UnreadableFile as err:  # not JSON, or nested deeper than any example is
            raise PromptError(str(err)) from None
        if not isinstance(item, dict):
            raise PromptError(f"{where}: expected a JSON object with 'input' and 'output'")
        for key in FIELDS:
            if key not in item:
                raise PromptError(f"{where}: missing {key!r}")
            if not isinstance(item[key], str):
                raise PromptError(f"{where}: {key!r} must be a string, got {item[key]!r}")
        examples.append(Example(item["input"], item["output"]))
    return examples


def build_prompt(template: Template, examples: list[Example], query: str, shots: int) -> str:
    """The ``shots``-shot prompt for ``query``: the first ``shots`` examples, then the query.

    ``shots`` 0 gives the zero-shot prompt (the query alone, laid out by the template)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise PromptError(f"shots must be a whole number >= 0, got {shots!r}")
    if shots > len(examples):
        raise PromptError(
            f"{shots} shots asked for, but there are only {len(examples)} examples; "
            f"use --shots {len(examples)} or fewer, or add examples"
        )
    parts = [template.render(example) for example in examples[:shots]]
    parts.append(template.render_query(query))
    return SEPARATOR.join(parts)


def few_shot_prompts(
    queries: list[str],
    examples_path: str | Path,
    shots: int | None = None,
    template_path: str | Path | None = None,
) -> list[str]:
    """One prompt per query from an examples file (all its examples when ``shots`` is None)
    and a template file (default :data:`DEFAULT_TEMPLATE`)."""
    template = (
        read_template(template_path)
        if template_path is not None
        else Template.parse(DEFAULT_TEMPLATE)
    )
    examples = read_examples(examples_path)
    count = len(examples) if shots is None else shots
    return [build_prompt(template, examples, query, count) for query in queries]
