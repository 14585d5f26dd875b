"""Decoding strategy configuration: what a chain of logits processors and a selector is.

A decoding chain is an ordered list of steps. Logits processors (temperature, top_k, ...) are
applied in the order the user lists them, because the order changes the result (temperature
before top_p widens or narrows the nucleus). The chain ends with exactly one selector
(``greedy`` or ``sample``), or it is a ``beam_search``, a search strategy of its own because it
reorders the KV cache.

The same types serve the spec's ``generation`` section (validated by pydantic there), Python
callers, ``generation.json`` in an artifact, and the command line's compact form::

    temperature=0.7,top_k=50,top_p=0.9,sample

Each step documents its no-op value and rejects bad parameters with an actionable message.
This module holds configuration only; it imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal


class DecodingError(ValueError):
    """A decoding chain or one of its parameters is invalid."""


def _number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise DecodingError(f"{name} must be a number, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Temperature:
    """Divide logits by ``value``. No-op: 1.0. 0 is greedy; sampling needs ``value`` > 0."""

    type: Literal["temperature"] = "temperature"
    value: float = 1.0

    def __post_init__(self) -> None:
        _number("temperature", self.value)
        if not self.value >= 0 or math.isinf(self.value):
            raise DecodingError(
                f"temperature must be >= 0 and finite, got {self.value}; "
                "1.0 leaves logits unchanged, values below 1 sharpen, above 1 flatten"
            )


@dataclass(frozen=True, kw_only=True)
class TopK:
    """Keep the ``k`` most likely tokens (Fan et al. 2018). No-op: 0."""

    type: Literal["top_k"] = "top_k"
    k: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise DecodingError(f"top_k must be an integer >= 0 (0 disables it), got {self.k!r}")


@dataclass(frozen=True, kw_only=True)
class TopP:
    """Keep the smallest set of tokens whose probability reaches ``p`` (Holtzman et al. 2020,
    nucleus sampling). No-op: 1.0."""

    type: Literal["top_p"] = "top_p"
    p: float = 1.0

    def __post_init__(self) -> None:
        _number("top_p", self.p)
        if not 0.0 < self.p <= 1.0:
            raise DecodingError(f"top_p must be in (0, 1] (1.0 disables it), got {self.p}")


@dataclass(frozen=True, kw_only=True)
class MinP:
    """Drop tokens less likely than ``p`` times the most likely one (Nguyen et al. 2024).
    No-op: 0.0."""

    type: Literal["min_p"] = "min_p"
    p: float = 0.0

    def __post_init__(self) -> None:
        _number("min_p", self.p)
        if not 0.0 <= self.p <= 1.0:
            raise DecodingError(f"min_p must be in [0, 1] (0 disables it), got {self.p}")


@dataclass(frozen=True, kw_only=True)
class Typical:
    """Locally typical sampling (Meister et al. 2023): keep the tokens whose surprisal is
    closest to the entropy until their mass reaches ``p``. No-op: 1.0."""

    type: Literal["typical"] = "typical"
    p: float = 1.0

    def __post_init__(self) -> None:
        _number("typical", self.p)
        if not 0.0 < self.p <= 1.0:
            raise DecodingError(f"typical must be in (0, 1] (1.0 disables it), got {self.p}")


@dataclass(frozen=True, kw_only=True)
class RepetitionPenalty:
    """Divide positive (multiply negative) logits of tokens already present by ``penalty``
    (Keskar et al. 2019, CTRL). No-op: 1.0."""

    type: Literal["repetition_penalty"] = "repetition_penalty"
    penalty: float = 1.0

    def __post_init__(self) -> None:
        _number("repetition_penalty", self.penalty)
        if not 0.0 < self.penalty < math.inf:
            raise DecodingError(
                f"repetition_penalty must be > 0 (1.0 disables it; 1.1-1.3 is typical), "
                f"got {self.penalty}"
            )


@dataclass(frozen=True, kw_only=True)
class PresencePenalty:
    """Subtract ``penalty`` from the logits of tokens already present (OpenAI's presence
    penalty). No-op: 0.0."""

    type: Literal["presence_penalty"] = "presence_penalty"
    penalty: float = 0.0

    def __post_init__(self) -> None:
        _number("presence_penalty", self.penalty)
        if math.isinf(self.penalty):
            raise DecodingError(f"presence_penalty must be finite, got {self.penalty}")


@dataclass(frozen=True, kw_only=True)
class FrequencyPenalty:
    """Subtract ``penalty`` times the count of each token already present. No-op: 0.0."""

    type: Literal["frequency_penalty"] = "frequency_penalty"
    penalty: float = 0.0

    def __post_init__(self) -> None:
        _number("frequency_penalty", self.penalty)
        if math.isinf(self.penalty):
            raise DecodingError(f"frequency_penalty must be finite, got {self.penalty}")


@dataclass(frozen=True, kw_only=True)
class NoRepeatNgram:
    """Forbid any token that would repeat an n-gram already generated. No-op: 0."""

    type: Literal["no_repeat_ngram"] = "no_repeat_ngram"
    n: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise DecodingError(
                f"no_repeat_ngram must be an integer >= 0 (0 disables it), got {self.n!r}"
            )


@dataclass(frozen=True, kw_only=True)
class Greedy:
    """Select the most likely token (argmax)."""

    type: Literal["greedy"] = "greedy"


@dataclass(frozen=True, kw_only=True)
class Sample:
    """Draw a token from the processed distribution with the request's seeded generator."""

    type: Literal["sample"] = "sample"


@dataclass(frozen=True, kw_only=True)
class BeamSearch:
    """Keep ``beams`` hypotheses; score = log-prob / length ** ``length_penalty``."""

    type: Literal["beam_search"] = "beam_search"
    beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.beams, bool) or not isinstance(self.beams, int) or self.beams < 1:
            raise DecodingError(f"beam_search needs beams >= 1, got {self.beams!r}")
        _number("length_penalty", self.length_penalty)
        if math.isinf(self.length_penalty):
            raise DecodingError(f"length_penalty must be finite, got {self.length_penalty}")


Processor = (
    Temperature
    | TopK
    | TopP
    | MinP
    | Typical
    | RepetitionPenalty
    | PresencePenalty
    | FrequencyPenalty
    | NoRepeatNgram
)
Selector = Greedy | Sample
Step = Processor | Selector | BeamSearch

PROCESSORS: dict[str, type] = {
    cls.type: cls  # type: ignore[attr-defined]
    for cls in (
        Temperature,
        TopK,
        TopP,
        MinP,
        Typical,
        RepetitionPenalty,
        PresencePenalty,
        FrequencyPenalty,
        NoRepeatNgram,
    )
}
SELECTORS: dict[str, type] = {"greedy": Greedy, "sample": Sample}
SEARCHES: dict[str, type] = {"beam_search": BeamSearch}
STEPS: dict[str, type] = {**PROCESSORS, **SELECTORS, **SEARCHES}

# The parameter a step takes in the compact form ``name=value``.
_MAIN_PARAMETER = {
    "temperature": "value",
    "top_k": "k",
    "top_p": "p",
    "min_p": "p",
    "typical": "p",
    "repetition_penalty": "penalty",
    "presence_penalty": "penalty",
    "frequency_penalty": "penalty",
    "no_repeat_ngram": "n",
    "beam_search": "beams",
}


def chain_problems(steps: list[Any]) -> list[tuple[int | None, str]]:
    """Structural problems of a chain: (index of the step or None, message)."""
    problems: list[tuple[int | None, str]] = []
    if not steps:
        return [(None, "the chain is empty; end it with 'greedy' or 'sample'")]
    searches = [i for i, s in enumerate(steps) if isinstance(s, BeamSearch)]
    selectors = [i for i, s in enumerate(steps) if isinstance(s, Greedy | Sample)]
    last = len(steps) - 1
    if searches:
        if len(steps) > 1:
            problems.append((searches[0], "beam_search is a strategy of its own; give it alone"))
        return problems
    if not selectors:
        problems.append((None, "the chain has no selector; end it with 'greedy' or 'sample'"))
    for index in selectors:
        if index != last:
            problems.append(
                (index, f"'{steps[index].type}' must be the last step: processors come first")
            )
    return problems


@dataclass(frozen=True)
class DecodingChain:
    """An ordered chain of processors ending in one selector, or a lone beam search."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        problems = chain_problems(list(self.steps))
        if problems:
            raise DecodingError("; ".join(message for _, message in problems))

    @classmethod
    def parse(cls, text: str) -> DecodingChain:
        """Parse the compact form ``temperature=0.7,top_k=50,top_p=0.9,sample``."""
        steps: list[Step] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip().replace("-", "_")
            step_type = STEPS.get(name)
            if step_type is None:
                known = ", ".join(sorted(STEPS))
                raise DecodingError(f"unknown decoding step {name!r}; known steps: {known}")
            if not value:
                steps.append(step_type())
                continue
            parameter = _MAIN_PARAMETER.get(name)
            if parameter is None:
                raise DecodingError(f"{name!r} takes no value; write it as '{name}'")
            annotation = {f.name: f.type for f in fields(step_type)}[parameter]
            try:
                parsed: Any = int(value) if "int" in str(annotation) else float(value)
            except ValueError:
                raise DecodingError(f"{name}={value!r}: {value!r} is not a number") from None
            steps.append(step_type(**{parameter: parsed}))
        return cls(tuple(steps))

    def to_json(self) -> list[dict[str, Any]]:
        """The chain as JSON-ready dicts (``generation.json``)."""
        return [asdict(step) for step in self.steps]

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> DecodingChain:
        """Rebuild a chain from :meth:`to_json`'s output."""
        steps: list[Step] = []
        for item in items:
            params = dict(item)
            name = params.pop("type", None)
            step_type = STEPS.get(str(name))
            if step_type is None:
                known = ", ".join(sorted(STEPS))
                raise DecodingError(f"unknown decoding step {name!r}; known steps: {known}")
            try:
                steps.append(step_type(**params))
            except TypeError as err:
                raise DecodingError(f"{name}: {err}") from None
        return cls(tuple(steps))

    def __str__(self) -> str:
        parts = []
        for step in self.steps:
            parameter = _MAIN_PARAMETER.get(step.type)
            parts.append(f"{step.type}={getattr(step, parameter)}" if parameter else step.type)
        return ",".join(parts)
