"""Decoding strategy configuration: what a chain of logits processors and a selector is.

A decoding chain is an ordered list of steps. Logits processors (temperature, top_k, ...) are
applied in the order the user lists them, because the order changes the result (temperature
before top_p widens or narrows the nucleus). The chain ends with exactly one selector
(``greedy`` or ``sample``), or it is a ``beam_search``, a search strategy of its own because it
reorders the KV cache.

The same types serve the spec's ``generation`` section (validated by pydantic there), Python
callers, ``generation.json`` in an artifact, and the command line's compact form::

    temperature=0.7,top_k=50,top_p=0.9,sample

:meth:`DecodingChain.coerce` turns whatever a caller may pass as a chain (a chain, its compact
form, a list of step objects, JSON dicts or compact strings) into a chain, and refuses anything
else with a :class:`DecodingError` that says what a chain may be.

Sizes are bounded, so that no configuration can make a request allocate without limit: a beam
search keeps at most :data:`MAX_BEAMS` beams (each beam is a full row of the KV cache, and
wider beams rarely give better text: Koehn & Knowles 2017, "Six challenges", found quality
falling beyond a few dozen), its ``length_penalty`` is within +-:data:`MAX_LENGTH_PENALTY`
(``length ** length_penalty`` must stay a finite, non-zero float), and a chain has at most
:data:`MAX_STEPS` steps (every step runs once per token). ``top_k`` and ``no_repeat_ngram``
may exceed the vocabulary or the context: they then keep every token / never match, and cost
nothing more. The request-level sizes (prompt + ``max_new_tokens`` against the context
window, batch x beams x positions of KV cache against the machine's memory) are checked with the
model, which knows them (:func:`runtime.generation.checked_request`).

Each step documents its no-op value and rejects bad parameters with an actionable message.
This module holds configuration only; it imports nothing heavy. The behaviour lives in
``runtime.processors`` (numpy logits processors), ``runtime.selectors`` and ``runtime.sampling``
(the runnable :class:`runtime.sampling.SamplerChain`); beam search bookkeeping in
``runtime.beam_search``.

Plugins
-------
Third-party steps are found by name in the entry-point group ``llmspec.decoding``, so an
installed package can add ``--chain "my_step=3,sample"``. Each entry point's name is the step's
name and its object is a class that is both the configuration and the behaviour::

    # entry_points.txt of the distribution
    [llmspec.decoding]
    my_step = my_package.decoding:MyStep

    @dataclass(frozen=True, kw_only=True)
    class MyStep:
        # A docstring: what it does, its paper, its no-op value.

        type: Literal["my_step"] = "my_step"   # the literal tag: equals the entry point's name
        strength: float = 0.0                   # parameters are plain fields with defaults
        parameter: ClassVar[str] = "strength"   # optional: the field ``my_step=VALUE`` sets

        def __post_init__(self) -> None:        # reject bad parameters, actionably
            if self.strength < 0:
                raise DecodingError(f"my_step must be >= 0 (0 disables it), got {self.strength}")

        # a logits processor (see runtime.sampling.LogitsProcessor) owns its per-request
        # state: start() makes it for the request's batch (None if it keeps none) ...
        def start(self, request: DecodingState) -> MyState | None: ...
        # ... and process() reads it; the request's rows, sequences and scratch are shared
        def process(self, logits: np.ndarray, request: DecodingState, state: MyState | None
                    ) -> np.ndarray: ...
        # ... or a selector, which ends the chain (see runtime.sampling.TokenSelector)
        def select(self, logits: np.ndarray, state: DecodingState) -> np.ndarray: ...

    class MyState:  # a processor's state for one request (runtime.sampling.ProcessorState)
        def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None: ...  # new tokens
        def reorder(self, rows: np.ndarray) -> None: ...  # row i becomes the old row rows[i]

A processor's state learns the tokens the request accepts through ``accept`` alone (the
unfinished rows and their tokens, once per step); ``start`` is called once per request, the
first time the processor runs on it, and may read the prompts and tokens so far
(``request.sequence(row)``, ``request.generated(row)``). The processor itself stays
immutable, so one chain serves concurrent requests. Processors written to the old contract,
``process(logits, state)`` reading counts and n-grams from a shared ``DecodingState``, have no
``start`` and are refused with a message that says how to update them.

The class must be a dataclass (``to_json``/``from_json`` and ``generation.json`` use its
fields), its ``type`` default must equal the entry point's name, it must define exactly one of
``process`` (with ``start``) and ``select``, and its name must not shadow a built-in step. A
compact-form value is read as an int when the field is annotated ``int``, else as a float.
Plugins are loaded on the first name this module does not know, once per process; a plugin that
fails to import or breaks the contract is reported when its name is used, and named in the list
of known steps.
The spec's ``generation`` section accepts built-in steps only (it is validated by pydantic
against their types); plugins are for Python callers, ``generation.json`` and the CLI.

This module is a little over 600 lines because it is one thing: what a decoding chain may be.
The step types, the plugins and the chain's forms (compact, JSON, Python) share one name space
(a plugin's name must not shadow a built-in step; parsing looks up built-ins, then plugins) and
one set of bounds, so they are checked in one place; the behaviour is elsewhere
(:mod:`runtime.sampling`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, fields, is_dataclass
from importlib.metadata import entry_points
from typing import Any, Literal

from runtime.errors import LlmspecError


class DecodingError(ValueError, LlmspecError):
    """A decoding chain or one of its parameters is invalid."""


# Bounds on sizes (see the module docstring, "Sizes are bounded").
MAX_BEAMS = 128
MAX_LENGTH_PENALTY = 10.0
MAX_STEPS = 64


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
        if self.beams > MAX_BEAMS:
            raise DecodingError(
                f"beam_search takes at most {MAX_BEAMS} beams, got {self.beams}: every beam "
                "is a full row of the KV cache, and wider beams rarely give better text; "
                "lower beams (4 to 8 is typical)"
            )
        _number("length_penalty", self.length_penalty)
        if math.isinf(self.length_penalty):
            raise DecodingError(f"length_penalty must be finite, got {self.length_penalty}")
        if abs(self.length_penalty) > MAX_LENGTH_PENALTY:
            raise DecodingError(
                f"length_penalty must be within -{MAX_LENGTH_PENALTY:g} to "
                f"{MAX_LENGTH_PENALTY:g}, got {self.length_penalty} (it is an exponent of the "
                "length: 1.0 is neutral, 0.6 to 2.0 is typical)"
            )
        if not isinstance(self.early_stopping, bool):
            raise DecodingError(
                f"early_stopping must be true or false, got {self.early_stopping!r}"
            )


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


ENTRY_POINT_GROUP = "llmspec.decoding"

_plugin_lock = threading.Lock()
_plugins: dict[str, type] | None = None  # loaded on first use, once per process
_broken_plugins: dict[str, str] = {}  # name -> why it cannot be used


def _contract_problem(name: str, obj: Any) -> str | None:
    """Why ``obj`` (an entry point's object) is not a usable decoding step, or None."""
    if not isinstance(obj, type) or not is_dataclass(obj):
        return "it must name a dataclass (the step's configuration and behaviour)"
    if name in STEPS:
        return f"its name shadows the built-in step {name!r}"
    tag = {f.name: f.default for f in fields(obj)}.get("type")
    if tag != name:
        return f"its 'type' field must default to the entry point's name {name!r}, got {tag!r}"
    kinds = [m for m in ("process", "select") if callable(getattr(obj, m, None))]
    if len(kinds) != 1:
        return (
            "it must define exactly one of process(logits, request, state) (with "
            "start(request)) and select(logits, state)"
        )
    problem = plugin_shape_problem(obj)
    if problem:
        return problem
    parameter = getattr(obj, "parameter", None)
    if parameter is not None and parameter not in {f.name for f in fields(obj)}:
        return f"its 'parameter' {parameter!r} is not one of its fields"
    return None


OLD_PROCESSOR_SHAPE = (
    "it is written to the old processor contract, process(logits, state) reading a shared "
    "DecodingState (generated_counts, seen_pairs, banned_ngram_tokens are gone); a processor "
    "now owns its per-request state: define start(request) returning its state for the "
    "batch (an object with accept(rows, tokens) and reorder(rows), or None if it keeps "
    "none), and process(logits, request, state) receiving that state; see the "
    "runtime.decoding module's 'Plugins' section"
)


def plugin_shape_problem(obj: Any) -> str | None:
    """Why a plugin step (class or instance) with a ``process`` method is written to the old
    processor contract (no ``start``), or None."""
    if callable(getattr(obj, "process", None)) and not callable(getattr(obj, "start", None)):
        return OLD_PROCESSOR_SHAPE
    return None


def plugin_steps() -> dict[str, type]:
    """The usable third-party steps of the ``llmspec.decoding`` entry-point group, by name.

    Loaded once per process (thread-safe); broken plugins are left out and remembered, so that
    using one of their names says what is wrong with it.
    """
    global _plugins
    with _plugin_lock:
        if _plugins is None:
            found: dict[str, type] = {}
            for point in entry_points(group=ENTRY_POINT_GROUP):
                origin = f"{point.value!r}" + (f" (from {point.dist.name})" if point.dist else "")
                try:
                    obj = point.load()
                except Exception as err:  # a plugin's import error must not break the chain
                    _broken_plugins[point.name] = f"{origin} failed to load: {err!r}"
                    continue
                problem = _contract_problem(point.name, obj)
                if problem:
                    _broken_plugins[point.name] = f"{origin}: {problem}"
                else:
                    found[point.name] = obj
            _plugins = found
        return _plugins


def step_type(name: str) -> type:
    """The configuration type of the step called ``name``: built-in first, then plugins.

    Raises DecodingError for a broken plugin (saying why) or an unknown name (listing the known
    ones, built-in and plugin).
    """
    found = STEPS.get(name) or plugin_steps().get(name)
    if found is not None:
        return found
    if name in _broken_plugins:
        raise DecodingError(f"decoding step {name!r} cannot be used: {_broken_plugins[name]}")
    known = ", ".join(sorted(STEPS))
    plugins = sorted({*plugin_steps(), *_broken_plugins})
    listed = f"; plugins: {', '.join(plugins)}" if plugins else ""
    raise DecodingError(f"unknown decoding step {name!r}; known steps: {known}{listed}")


def is_selector(step: Any) -> bool:
    """Whether ``step`` ends a chain: greedy, sample, or a plugin with a ``select`` method."""
    if isinstance(step, Greedy | Sample):
        return True
    return type(step) not in STEPS.values() and callable(getattr(step, "select", None))


def _main_parameter(step_type: type) -> str | None:
    """The field that the compact form ``name=value`` sets, if the step takes one."""
    builtin = _MAIN_PARAMETER.get(getattr(step_type, "type", ""))
    return builtin if step_type in STEPS.values() else getattr(step_type, "parameter", None)


def is_step(step: Any) -> bool:
    """Whether ``step`` is a decoding step: a built-in one, or a plugin-like object with a
    ``process`` or ``select`` method."""
    return type(step) in STEPS.values() or (
        not isinstance(step, type)
        and (callable(getattr(step, "process", None)) or callable(getattr(step, "select", None)))
    )


STEP_FORMS = (
    "a step object (TopK(k=50)), its JSON dict ({'type': 'top_k', 'k': 50}) "
    "or its compact form ('top_k=50')"
)


def chain_problems(steps: list[Any]) -> list[tuple[int | None, str]]:
    """Structural problems of a chain: (index of the step or None, message)."""
    problems: list[tuple[int | None, str]] = []
    if not steps:
        return [(None, "the chain is empty; end it with 'greedy' or 'sample'")]
    if len(steps) > MAX_STEPS:
        return [(None, f"the chain has {len(steps)} steps, more than the {MAX_STEPS} allowed")]
    strangers = [(i, s) for i, s in enumerate(steps) if not is_step(s)]
    if strangers:
        return [
            (i, f"step {i} is {_shown(s)}, not a decoding step; give {STEP_FORMS}")
            for i, s in strangers
        ]
    searches = [i for i, s in enumerate(steps) if isinstance(s, BeamSearch)]
    selectors = [i for i, s in enumerate(steps) if is_selector(s)]
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
    def coerce(cls, chain: Any) -> DecodingChain:
        """A chain from what a caller may pass: a :class:`DecodingChain`, its compact form
        (``"temperature=0.7,top_k=50,sample"``), or a list (or tuple) of steps, each a step
        object, its JSON dict or its compact form (``["top_k=50", {"type": "sample"}]``).

        Raises DecodingError for anything else, saying what a chain may be."""
        if isinstance(chain, DecodingChain):
            return chain
        if isinstance(chain, str):
            return cls.parse(chain)
        if not isinstance(chain, list | tuple):
            hint = "; wrap the step in a list" if isinstance(chain, dict) or is_step(chain) else ""
            raise DecodingError(
                "a decoding chain is its compact form ('temperature=0.7,top_k=50,sample') or "
                f"a list of steps, each {STEP_FORMS}; got {_shown(chain)}{hint}"
            )
        steps: list[Any] = []
        for index, item in enumerate(chain):
            if isinstance(item, dict):
                steps.append(_step_from_json(index, item))
            elif isinstance(item, str):
                steps.extend(_parse_steps(item) if item.strip() else [item])
            else:
                steps.append(item)
        return cls(tuple(steps))

    @classmethod
    def parse(cls, text: str) -> DecodingChain:
        """Parse the compact form ``temperature=0.7,top_k=50,top_p=0.9,sample``."""
        return cls(tuple(_parse_steps(text)))

    def to_json(self) -> list[dict[str, Any]]:
        """The chain as JSON-ready dicts (``generation.json``)."""
        return [asdict(step) for step in self.steps]

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> DecodingChain:
        """Rebuild a chain from :meth:`to_json`'s output (a list of JSON objects, each with
        a ``type``); raises DecodingError for anything else."""
        if not isinstance(items, list):
            raise DecodingError(
                f"a chain in JSON is a list of steps such as {{'type': 'greedy'}}, "
                f"got {_shown(items)}"
            )
        if len(items) > MAX_STEPS:
            raise DecodingError(
                f"the chain has {len(items)} steps, more than the {MAX_STEPS} allowed"
            )
        return cls(tuple(_step_from_json(index, item) for index, item in enumerate(items)))

    def __str__(self) -> str:
        return ",".join(step_text(step) for step in self.steps)


def _shown(value: Any) -> str:
    """``value`` for a message: its repr, cut short, with its type."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _step_from_json(index: int, item: Any) -> Any:
    """Step ``index`` of a JSON chain: a dict with a ``type`` and the step's fields."""
    if not isinstance(item, dict):
        raise DecodingError(
            f"step {index} is {_shown(item)}; a step in JSON is an object such as "
            "{'type': 'top_k', 'k': 50}"
        )
    params = dict(item)
    name = params.pop("type", None)
    if not isinstance(name, str):
        missing = "has no 'type'" if name is None else f"has the type {_shown(name)}"
        raise DecodingError(
            f"step {index} {missing}; name the step, e.g. {{'type': 'greedy'}} (known steps: "
            f"{', '.join(sorted(STEPS))})"
        )
    return _build(step_type(name), name, params)


def _parse_steps(text: str) -> list[Any]:
    """The steps of the compact form ``temperature=0.7,top_k=50,sample`` (not yet a chain)."""
    if not isinstance(text, str):
        raise DecodingError(f"a chain's compact form is a string, got {_shown(text)}")
    steps: list[Any] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip().replace("-", "_")
        kind = step_type(name)
        if not value:
            steps.append(_build(kind, name, {}))
            continue
        parameter = _main_parameter(kind)
        if parameter is None:
            raise DecodingError(f"{name!r} takes no value; write it as '{name}'")
        annotation = {f.name: f.type for f in fields(kind)}[parameter]
        whole = "int" in str(annotation)
        try:
            parsed: Any = int(value) if whole else float(value)
        except ValueError:
            shown = value.strip() if len(value) <= 40 else value.strip()[:40] + "..."
            if whole and value.strip().lstrip("+-").isdigit():
                raise DecodingError(f"{name}={shown}: the number has too many digits") from None
            if whole and _is_float(value):
                raise DecodingError(f"{name} must be a whole number, got {shown}") from None
            raise DecodingError(f"{name}={shown!r}: {shown!r} is not a number") from None
        steps.append(_build(kind, name, {parameter: parsed}))
    return steps


def _build(kind: type, name: str, params: dict[str, Any]) -> Any:
    """``kind(**params)``, with a plugin's own TypeError or ValueError as a DecodingError."""
    try:
        return kind(**params)
    except DecodingError:
        raise
    except (TypeError, ValueError) as err:
        raise DecodingError(f"{name}: {err}") from None


def step_text(step: Any) -> str:
    """One step in the compact form: ``top_p=0.9``, ``greedy``."""
    parameter = _main_parameter(type(step))
    return f"{step.type}={getattr(step, parameter)}" if parameter else str(step.type)
