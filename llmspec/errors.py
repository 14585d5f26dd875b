"""The one error a bad spec produces: every problem, located, with a fix where one exists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from codegen.errors import RenderError
from codegen.plan import PlanError
from runtime.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, LlmspecError

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """Render a field path the way a person writes it: ``generation.chain[2].p``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "<document>"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, at a place in its source."""

    source: str  # a file name, or "<string>" for text given directly
    line: int  # 1-based; 0 when the place is unknown
    column: int  # 1-based; 0 when the place is unknown
    path: Path
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        return f"{where}: {format_path(self.path)}: {self.message}"


class SpecError(ValueError, LlmspecError):
    """A spec that cannot be used. ``problems`` lists everything wrong with it, in source order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.source, p.line or 10**9, p.column, format_path(p.path))
        )
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in spec"
        super().__init__("\n".join([head, *(str(p) for p in self.problems)]))


def bad_input_errors() -> tuple[type[Exception], ...]:
    """What ``llmspec``'s ``main`` catches as bad input: :class:`LlmspecError`, and the errors
    of the package that cannot import it (``codegen`` imports nothing of ours). The one list."""

    return (LlmspecError, PlanError, RenderError)


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_USAGE",
    "LlmspecError",
    "Problem",
    "SpecError",
    "bad_input_errors",
    "format_path",
]
