"""Structured output: a JSON schema, a regular expression or a context-free grammar as a step
of the decoding chain.

A :class:`Constraint` is compiled once for an artifact's tokenizer
(``model.constraint(json_schema=...)``, ``regex=...`` or ``grammar=...``: exactly one) and is a
stateful logits processor of :mod:`runtime.sampling`'s protocol: each request row gets its own
matcher (``start``), which learns the accepted tokens (``accept``) and follows a beam-like
reorder (``reorder``). At each step it sets the logits of the tokens the grammar does not allow
next to ``-inf``; once the grammar is complete it allows only the model's stop tokens (eos and
generation.json's other stop tokens), and while it is complete but could go on (a regex
``a+``) it allows both. So a row that ends with a stop token (finish reason ``"eos"``) holds a
complete match; a row cut by ``max_new_tokens`` or a stop string holds a prefix of one.

``SamplerChain(chain, constraint=...)`` applies the constraint before the chain's processors
(temperature, top-k, ...), so they and the selector see only allowed tokens; ``generate(...,
constraint=...)`` builds that chain. Beam search does not take a constraint.

Engine: llguidance (``pip install 'llmspec[structured]'``), chosen by measurement (see
bench/README.md, "Structured output"): it reads the artifact's tokenizer.json as it is, compiles
JSON Schema, regular expressions and Lark grammars in milliseconds (30-100x faster than
xgrammar at 128k-152k tokens, which matters when every request brings its schema), and computes
a step's mask in ~50-70 us at the median (~0.4 ms mean) at those sizes. It is imported only
when a constraint is made. JSON is
compact (no whitespace between tokens, ``,`` and ``:`` separators), so a schema with bounded
strings, numbers and arrays has a bounded output; a schema's ``x-guidance`` options can ask
for other separators.

Grammar formats: ``json_schema`` a JSON Schema (a dict, or its JSON text); ``regex`` a Rust
``regex`` pattern matched against the whole output; ``grammar`` a Lark grammar (llguidance's
dialect: ``start: ...`` rules, ``/regex/`` terminals, ``%json`` for embedded schemas).
Compiled tokenizers and constraints are cached per model (:data:`CACHED_CONSTRAINTS` per
model), so a server that sees the same schema again does not compile it again.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.decoding import DecodingError
from runtime.errors import RuntimeInputError
from runtime.logits import active_rows, keep_only

if TYPE_CHECKING:
    from runtime.model import GenerativeModel
    from runtime.sampling import DecodingState

__all__ = ["CACHED_CONSTRAINTS", "KINDS", "Constraint", "constraint_for"]

KINDS = ("json_schema", "regex", "grammar")
# Constraints kept per model, least recently used dropped first.
CACHED_CONSTRAINTS = 64
# How much of a long engine message an error quotes.
MAX_MESSAGE_LINES = 8
# JSON compiler options: compact JSON, so bounded schemas give bounded outputs.
JSON_OPTIONS = {"whitespace_flexible": False}


def _engine() -> Any:
    """llguidance, or a RuntimeInputError saying how to install it."""
    try:
        import llguidance
        import llguidance.numpy  # the mask helpers
    except ImportError:
        raise RuntimeInputError(
            "structured output (json_schema, regex, grammar) needs llguidance; "
            "install it with pip install 'llmspec[structured]'"
        ) from None
    return llguidance


def _short(message: str, most: int = MAX_MESSAGE_LINES) -> str:
    lines = [line.rstrip() for line in str(message).strip().splitlines() if line.strip()]
    shown = "\n".join(lines[:most])
    more = "\n..." if most > 1 else " (...)"
    return shown + (more if len(lines) > most else "")


class Constraint:
    """A grammar compiled for one artifact's tokenizer; a stateful logits processor.

    Make it with :meth:`runtime.model.GenerativeModel.constraint`. It holds no request's
    state (each request row's matcher is in the request's :class:`DecodingState`), so one
    constraint serves concurrent requests.
    """

    # how a decoding error names this step (runtime.decoding.step_text)
    type = "constraint"
    parameter = "kind"

    def __init__(
        self, kind: str, source: str, prototype: Any, vocab_size: int, stop_ids: frozenset[int]
    ) -> None:
        self.kind = kind  # "json_schema", "regex" or "grammar"
        self.source = source  # the schema (JSON text), pattern or grammar as given
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        self._prototype = prototype  # a matcher at the start, never advanced
        self._lock = threading.Lock()
        self._stops = np.asarray(sorted(stop_ids), dtype=np.int64)
        self._words = (vocab_size + 31) // 32  # int32 words of one row's bit mask

    def __repr__(self) -> str:
        shown = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"Constraint({self.kind}={shown!r})"

    def check_model(self, model: GenerativeModel) -> None:
        """Refuse a model other than one with the tokenizer this was compiled for."""
        if model.vocab_size != self.vocab_size or model.stop_ids != self.stop_ids:
            raise RuntimeInputError(
                f"this constraint was compiled for another model (vocabulary "
                f"{self.vocab_size}, stop tokens {sorted(self.stop_ids)}); make it with this "
                "model's constraint(...)"
            )

    def matcher(self) -> Any:
        """A fresh matcher at the start of the grammar."""
        with self._lock:
            return self._prototype.deep_copy()

    # -- the processor protocol (runtime.sampling.LogitsProcessor)

    def start(self, request: DecodingState) -> ConstraintState:
        if request.vocab_size != self.vocab_size:
            raise DecodingError(
                f"{self!r} was compiled for a vocabulary of {self.vocab_size} tokens, but the "
                f"logits have {request.vocab_size}"
            )
        return ConstraintState([self.matcher() for _ in range(request.batch_size)], self._words)

    def process(
        self, logits: np.ndarray, request: DecodingState, state: ConstraintState
    ) -> np.ndarray:
        import llguidance.numpy

        for row in active_rows(request):
            matcher = state.matchers[row]
            if matcher.is_error():
                raise DecodingError(f"row {row}: {self!r} failed: {_short(matcher.get_error(), 1)}")
            if matcher.is_stopped():  # complete: only a stop token may follow
                keep = np.zeros(self.vocab_size, dtype=bool)
                keep[self._stops] = True
            else:
                llguidance.numpy.fill_next_token_bitmask(matcher, state.bitmask, row)
                bits = np.unpackbits(state.bitmask[row].view(np.uint8), bitorder="little")
                keep = bits[: self.vocab_size].view(bool)
                if keep[self._stops].any():  # complete, and could go on: every stop token
                    keep[self._stops] = True
            if not keep.any():
                raise DecodingError(f"row {row}: {self!r} allows no token here")
            keep_only(logits[row], keep, request)
        return logits


class ConstraintState:
    """The request's matchers, one per row (see :class:`runtime.sampling.ProcessorState`)."""

    def __init__(self, matchers: list[Any], words: int) -> None:
        self.matchers = matchers
        self.bitmask = np.full((len(matchers), words), -1, dtype=np.int32)  # [batch, words]

    def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            matcher = self.matchers[row]
            if not matcher.consume_token(token):
                raise DecodingError(
                    f"row {row}: token {token} does not follow the constraint "
                    f"({_short(matcher.get_error(), 1)})"
                )

    def reorder(self, rows: np.ndarray) -> None:
        self.matchers = [self.matchers[row].deep_copy() for row in rows.tolist()]
        self.bitmask = np.ascontiguousarray(self.bitmask[rows])


# ----------------------------------------------------------------------------------------
# Compiling, cached per model


class _ModelGrammars:
    """A model's llguidance tokenizer (made once: it reads the whole vocabulary) and its most
    recently used constraints."""

    def __init__(self, model: GenerativeModel) -> None:
        engine = _engine()
        stops = sorted(model.stop_ids)
        if not stops:
            raise RuntimeInputError(
                f"{model.manifest.name} has no eos (nor another stop token), so a constrained "
                "output could never end; structured output needs a model with an eos token "
                "(vocabulary.special_tokens.eos in the spec)"
            )
        eos = model.special_tokens.get("eos")
        first = [eos] if eos in model.stop_ids else []
        try:
            self.tokenizer = engine.LLTokenizer(
                model.tokenizer.raw.to_str(),
                n_vocab=model.vocab_size,
                eos_token=first + [t for t in stops if t not in first],
            )
        except Exception as err:
            raise RuntimeInputError(
                f"{model.path}/tokenizer.json: the structured-output engine (llguidance) cannot "
                f"use this tokenizer: {_short(str(err))}"
            ) from None
        self.vocab_size = model.vocab_size
        self.stop_ids = model.stop_ids
        self.lock = threading.Lock()
        self.constraints: OrderedDict[tuple[str, str], Constraint] = OrderedDict()

    def get(self, kind: str, source: str, compiled: str) -> Constraint:
        key = (kind, source)
        with self.lock:
            found = self.constraints.get(key)
            if found is not None:
                self.constraints.move_to_end(key)
                return found
        constraint = self._compile(kind, source, compiled)
        with self.lock:
            self.constraints[key] = constraint
            while len(self.constraints) > CACHED_CONSTRAINTS:
                self.constraints.popitem(last=False)
        return constraint

    def _compile(self, kind: str, source: str, grammar: str) -> Constraint:
        engine = _engine()
        prototype = None
        problem = engine.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if not problem:
            prototype = engine.LLMatcher(self.tokenizer, grammar, log_level=0)
            problem = prototype.get_error() if prototype.is_error() else ""
        if problem or prototype is None:
            raise RuntimeInputError(f"{kind} is invalid: {_short(problem)}")
        return Constraint(kind, source, prototype, self.vocab_size, self.stop_ids)


_MODELS: weakref.WeakKeyDictionary[Any, _ModelGrammars] = weakref.WeakKeyDictionary()
_MODELS_LOCK = threading.Lock()


def _grammar(kind: str, value: Any) -> tuple[str, str]:
    """(the source as text, llguidance's grammar) of one of :data:`KINDS`."""
    engine = _engine()
    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise RuntimeInputError(f"json_schema is not valid JSON: {err}") from None
        if value is True:  # the schema every value satisfies
            value = {}
        if value is False:
            raise RuntimeInputError("json_schema is false, which no value satisfies")
        if not isinstance(value, dict):
            raise RuntimeInputError(
                f"json_schema must be a JSON Schema object (a dict or its JSON text), got "
                f"{type(value).__name__}"
            )
        try:
            source = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise RuntimeInputError(f"json_schema is not JSON data: {err}") from None
        try:
            compiled = engine.LLMatcher.grammar_from_json_schema(source, defaults=JSON_OPTIONS)
        except ValueError as err:
            raise RuntimeInputError(f"json_schema is invalid: {_short(str(err))}") from None
        return source, compiled
    if not isinstance(value, str) or not value:
        what = "a regular expression" if kind == "regex" else "a Lark grammar's text"
        raise RuntimeInputError(f"{kind} must be {what} (a non-empty str), got {value!r:.60}")
    if kind == "regex":
        return value, engine.LLMatcher.grammar_from_regex(value)
    return value, engine.LLMatcher.grammar_from_lark(value)


def constraint_for(
    model: GenerativeModel,
    *,
    json_schema: Any = None,
    regex: str | None = None,
    grammar: str | None = None,
) -> Constraint:
    """The :class:`Constraint` of exactly one of ``json_schema``, ``regex``, ``grammar`` for
    ``model``'s tokenizer, compiled on first use and cached (see the module docstring).
    Raises :class:`RuntimeInputError` naming the argument for an invalid one, for none or
    several, for a model without an eos, and when llguidance is not installed."""
    given = {
        kind: value
        for kind, value in zip(KINDS, (json_schema, regex, grammar), strict=True)
        if value is not None
    }
    if len(given) != 1:
        named = ", ".join(given) if given else "none"
        raise RuntimeInputError(
            f"give exactly one of json_schema, regex or grammar for a constraint, got {named}"
        )
    ((kind, value),) = given.items()
    source, compiled = _grammar(kind, value)
    with _MODELS_LOCK:
        grammars = _MODELS.get(model)
    if grammars is None:
        made = _ModelGrammars(model)  # outside the lock: it reads the whole vocabulary
        with _MODELS_LOCK:
            grammars = _MODELS.setdefault(model, made)
    return grammars.get(kind, source, compiled)
