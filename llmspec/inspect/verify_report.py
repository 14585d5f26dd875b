"""The report of ``llmspec verify``: one :class:`CheckResult` per check, gathered in a
:class:`VerifyReport` that renders as text or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.artifact import Manifest


@dataclass
class CheckResult:
    """One check: what it compared, on how many examples, the worst figure and, on failure,
    why (for a property: the falsifying example, shrunk by hypothesis)."""

    name: str
    passed: bool
    detail: str = ""
    examples: int = 0
    worst: float | None = None  # equal-properties: largest |diff|; "changes": smallest change
    tolerance: float | None = None  # the tolerance (or floor) at the worst example
    kind: str = "check"  # "check", "equal" (must stay within tolerance), "changes"
    where: str = ""  # where the worst figure was seen
    falsifying: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "kind": self.kind,
            "detail": self.detail,
            "examples": self.examples,
            "worst": self.worst,
            "tolerance": self.tolerance,
            "where": self.where,
            "falsifying_example": self.falsifying,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        if self.kind == "check":
            return self.detail
        if self.worst is None:
            figures = "no examples ran"
        elif self.kind == "equal":
            figures = f"worst |diff| {self.worst:.3g} (tolerance {self.tolerance:.3g})"
        else:
            figures = f"smallest change {self.worst:.3g} (must exceed {self.tolerance:.3g})"
        if not self.passed:
            text = f"failed at example {self.examples}, {figures}"
        else:
            text = f"{self.examples} examples, {figures}"
        if self.detail:
            return f"{text}; {self.detail}"
        return f"{text}, {self.where}" if self.where else text


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`. ``error`` is set when the artifact itself is unusable
    (missing, truncated or modified files, another format version); the checks that ran before
    it are kept."""

    path: str
    name: str | None = None
    architecture: str | None = None
    precision: str | None = None
    provider: str | None = None
    examples: int = 0
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": self.path,
            "name": self.name,
            "architecture": self.architecture,
            "precision": self.precision,
            "provider": self.provider,
            "examples": self.examples,
            "passed": self.passed,
            "error": self.error,
            "checks": [c.to_json() for c in self.checks],
        }

    def render(self) -> str:
        about = ", ".join(x for x in (self.architecture, self.precision, self.provider) if x)
        lines = [f"llmspec verify {self.path}" + (f": {self.name} ({about})" if self.name else "")]
        width = max((len(c.name) for c in self.checks), default=0)
        for check in self.checks:
            mark = "PASS" if check.passed else "FAIL"
            lines.append(f"  {mark}  {check.name:<{width}}  {check.summary()}")
            if check.falsifying is not None:
                example = json.dumps(check.falsifying, separators=(", ", ": "))
                lines.append(f"        falsifying example: {example}")
        if self.error:
            lines.append(f"  FAIL  {self.error}")
        failed = sum(not c.passed for c in self.checks)
        if self.passed:
            lines.append(f"verified: all {len(self.checks)} checks passed")
        elif self.error:
            lines.append("not verified: the artifact is unusable")
        else:
            lines.append(f"not verified: {failed} of {len(self.checks)} checks failed")
        return "\n".join(lines)


def precision_key(manifest: Manifest) -> str:
    """The precision the report names: the quantization when there is one, else the dtype."""
    return manifest.quantize if manifest.quantize not in ("", "none") else manifest.precision


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
