"""What generation returns, and the per-row text bookkeeping of the generation loop.

* :class:`GenerationResult`: per row the generated text, token ids and finish reason
  (``"eos"``, ``"stop"`` or ``"length"``), and the request's :class:`Timing`.
* :class:`StreamEvent`: one per row and step while streaming: the token, the text it adds and,
  on the row's last event, its finish reason. A :class:`GenerationStream` yields them and,
  once exhausted, holds the :class:`GenerationResult`.

Text is decoded incrementally (the prefix-offset method of Hugging Face's text-generation-
inference): a step's text is released only once its bytes form whole characters, and, when stop
strings are given, only once it cannot be the beginning of a stop string. So the concatenated
stream of a row equals its final text exactly, and a stop string never leaks into a stream.

Decisions: the generated token ids include the eos token and the tokens that formed a stop
string; the texts include neither (the stop string and what follows it are trimmed). The texts
leave out pad, bos and eos tokens but keep other special tokens (a T5 model's sentinels, a
mask token), because those carry meaning in what such models generate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from runtime.decoding import DecodingChain, DecodingError
from runtime.errors import LlmspecError
from runtime.reading import MiB, UnreadableFile, read_json

FinishReason = Literal["eos", "stop", "length"]

# generation.json holds a number and a short chain: a few hundred bytes, three levels deep.
MAX_GENERATION_BYTES = 1 * MiB
MAX_GENERATION_DEPTH = 16

# Decoding bytes that do not yet form a whole character gives U+FFFD.
_INCOMPLETE = "\ufffd"


class RuntimeInputError(ValueError, LlmspecError):
    """A request the runtime refuses before running anything; the message says what to fix."""


class GenerationConfigError(ValueError, LlmspecError):
    """A generation.json (or its contents) that cannot be used; the message names the file."""


def max_new_tokens_limit(context_length: int) -> int:
    """The most ``max_new_tokens`` a default may ask for: the context window. More can never
    be generated (a decoder-only model's prompt shares the window; an encoder-decoder
    model's decoder has a window of its own), so such a default fails every request."""
    return context_length


def read_generation(path: str | os.PathLike[str], context_length: int) -> tuple[int, DecodingChain]:
    """``(max_new_tokens, chain)`` of an artifact's generation.json, checked.

    The file is read bounded (a regular file of at most :data:`MAX_GENERATION_BYTES`, JSON
    nested at most :data:`MAX_GENERATION_DEPTH` deep), ``max_new_tokens`` must be a whole
    number from 0 to :func:`max_new_tokens_limit` and ``chain`` a valid decoding chain (whose
    sizes :mod:`runtime.decoding` bounds). Raises :class:`GenerationConfigError` naming the
    file, the field and the fix; ``runtime.load`` and ``llmspec verify`` turn it into their
    errors."""
    name = os.fspath(path)
    try:
        data = read_json(path, MAX_GENERATION_BYTES, "generation.json", MAX_GENERATION_DEPTH)
    except UnreadableFile as err:
        raise GenerationConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise GenerationConfigError(
            f"{name}: expected a JSON object with max_new_tokens and chain, "
            f"got {type(data).__name__}"
        )
    missing = [key for key in ("max_new_tokens", "chain") if key not in data]
    if missing:
        raise GenerationConfigError(f"{name}: missing {', '.join(missing)}")
    max_new = data["max_new_tokens"]
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        shown = repr(max_new) if len(repr(max_new)) <= 40 else repr(max_new)[:37] + "..."
        raise GenerationConfigError(
            f"{name}: max_new_tokens must be a whole number >= 0, got {shown}"
        )
    limit = max_new_tokens_limit(context_length)
    if max_new > limit:
        shown = str(max_new) if max_new < 10**30 else f"a {len(str(max_new))}-digit number"
        raise GenerationConfigError(
            f"{name}: max_new_tokens is {shown}, beyond the context window of "
            f"{context_length} tokens, so every request with this default would fail; "
            f"lower it to at most {limit} (generation.max_new_tokens in the spec)"
        )
    try:
        chain = DecodingChain.from_json(data["chain"])
    except DecodingError as err:
        raise GenerationConfigError(f"{name}: chain: {err}") from None
    return max_new, chain


@dataclass(frozen=True)
class Timing:
    """How long a request took (wall clock, the loop's own time; a streaming consumer's time
    between events is not counted).

    ``prefill_ms`` is the time to the first token: tokenizing, the prefill (and, for an
    encoder-decoder model, the encoder) and the first selection. ``per_token_ms`` is the mean
    time of each later step, in which every unfinished row gets one token (0 when there was
    only one step). ``steps`` counts the steps, i.e. the longest row's new tokens.
    """

    prefill_ms: float
    per_token_ms: float
    total_ms: float
    steps: int

    @property
    def tokens_per_second(self) -> float:
        """Steps per second after the first token (per row; multiply by the batch)."""
        return 1000.0 / self.per_token_ms if self.per_token_ms > 0 else 0.0


@dataclass(frozen=True)
class GenerationResult:
    """One request's output, one entry per prompt (batch row) in the order given."""

    texts: list[str]
    tokens: list[list[int]]
    finish_reasons: list[FinishReason]
    prompt_tokens: list[list[int]]
    timing: Timing

    @property
    def text(self) -> str:
        """The text of a one-prompt request."""
        if len(self.texts) != 1:
            raise ValueError(f"the request had {len(self.texts)} prompts; use .texts")
        return self.texts[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [
                {"text": text, "tokens": tokens, "finish_reason": reason, "prompt_tokens": prompt}
                for text, tokens, reason, prompt in zip(
                    self.texts, self.tokens, self.finish_reasons, self.prompt_tokens, strict=True
                )
            ],
            "timing": {**asdict(self.timing), "tokens_per_second": self.timing.tokens_per_second},
        }


@dataclass(frozen=True)
class StreamEvent:
    """One generated token of one row: ``text`` is what it adds to the row's text (possibly
    ``""`` while the characters are incomplete or could begin a stop string, and possibly more
    than this token's text when held-back text is released); ``finish_reason`` is set on the
    row's last event."""

    row: int
    token: int
    text: str
    finish_reason: FinishReason | None = None


class GenerationStream(Iterator[StreamEvent]):
    """The events of a streaming request, as they are produced; ``result`` once exhausted.

    The request's inputs were checked when it was made; running it happens as the stream is
    consumed. Closing (or dropping) the stream early stops the generation."""

    def __init__(self, events: Iterator[StreamEvent], finish: Callable[[], GenerationResult]):
        self._events = events
        self._finish = finish
        self._result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> StreamEvent:
        try:
            return next(self._events)
        except StopIteration:
            if self._result is None:
                self._result = self._finish()
            raise

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("the stream is not exhausted yet; iterate over it first")
        return self._result


class RowText:
    """The text of one row, decoded incrementally; trims at the first stop string.

    ``push`` a token, then ``release`` what may be shown so far. ``decode`` is the tokenizer's
    decode for a list of ids; ``hidden`` ids (pad, bos, eos) never reach it."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop: Sequence[str], hidden: frozenset[int]
    ) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._hidden = hidden
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids before it are decoded into ``text`` for good
        self._read_offset = 0  # ids before it are decoded into ``text``
        self.text = ""
        self._released = 0
        self.stopped = False

    def push(self, token: int) -> None:
        """Add a token; sets ``stopped`` (and trims ``text``) when a stop string appears."""
        if token in self._hidden or self.stopped:
            return
        self._ids.append(token)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_INCOMPLETE):
            self._append(full[len(prefix) :])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)

    def flush(self) -> None:
        """Decode what is left at the end (incomplete characters come out as U+FFFD)."""
        if self.stopped or self._read_offset == len(self._ids):
            return
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._append(full[len(prefix) :])
        self._prefix_offset = self._read_offset = len(self._ids)

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self._longest_stop + 1)
        self.text += delta
        if not self._stop:
            return
        found = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def release(self, final: bool) -> str:
        """The text not released before that is safe to show: all of it when ``final``, else
        all but a tail that could be the beginning of a stop string."""
        end = len(self.text)
        if not final and self._stop:
            for size in range(min(self._longest_stop - 1, end - self._released), 0, -1):
                tail = self.text[end - size :]
                if any(s.startswith(tail) for s in self._stop):
                    end -= size
                    break
        delta = self.text[self._released : end]
        self._released = end
        return delta
