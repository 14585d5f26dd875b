"""What generation returns: the result of a request, and the events of a streaming one.

* :class:`GenerationResult`: per row the generated text, token ids and finish reason
  (``"eos"``: eos or another stop token of generation.json, ``"stop"``: a stop string, or
  ``"length"``), and the request's :class:`Timing`.
* :class:`StreamEvent`: one per row and step while streaming: the token, the text it adds and,
  on the row's last event, its finish reason.
* :class:`TokenLogprob`: when a request asks for ``logprobs``, each generated token's
  log-probability and the most likely alternatives (in the result, one list per row aligned
  with its tokens; in a stream, on each event). A :class:`GenerationStream` yields them and,
  once exhausted, holds the :class:`GenerationResult`.

Decisions: the generated token ids include the eos (or stop) token and the tokens that formed
a stop string; the texts include neither (the stop string and what follows it are trimmed). The
texts leave out pad, bos, eos and stop tokens but keep other special tokens (a T5 model's
sentinels, a mask token), because those carry meaning in what such models generate. The loop
that makes them is :mod:`runtime.generation`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

FinishReason = Literal["eos", "stop", "length"]


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
    # One list per row, aligned with ``tokens``, when the request asked for logprobs; else None.
    logprobs: list[list[TokenLogprob]] | None = None

    @property
    def text(self) -> str:
        """The text of a one-prompt request."""
        if len(self.texts) != 1:
            raise ValueError(f"the request had {len(self.texts)} prompts; use .texts")
        return self.texts[0]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready data; each row has ``logprobs`` (see
        :meth:`TokenLogprob.to_json`) when the request asked for them."""
        results = [
            {"text": text, "tokens": tokens, "finish_reason": reason, "prompt_tokens": prompt}
            for text, tokens, reason, prompt in zip(
                self.texts, self.tokens, self.finish_reasons, self.prompt_tokens, strict=True
            )
        ]
        if self.logprobs is not None:
            for row, entries in zip(results, self.logprobs, strict=True):
                row["logprobs"] = [entry.to_json() for entry in entries]
        return {
            "results": results,
            "timing": {**asdict(self.timing), "tokens_per_second": self.timing.tokens_per_second},
        }


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its step.

    Log-probabilities are the model's own: ``log_softmax`` of the logits the graph returned,
    before the decoding chain's processors (temperature, top-k, penalties, a grammar), as
    vLLM's default and Hugging Face's ``output_scores`` raw logits are. So they describe the
    model, not the chain, stay finite for every token, and are the same for any chain. ``top``
    holds the requested number of most likely tokens, most likely first (ties by lower id);
    the chosen token is among them only if it is that likely."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{"token": id, "logprob": x, "top": [[id, x], ...]}``."""
        return {
            "token": self.token,
            "logprob": self.logprob,
            "top": [[token, value] for token, value in self.top],
        }


@dataclass(frozen=True)
class StreamEvent:
    """One generated token of one row: ``text`` is what it adds to the row's text (possibly
    ``""`` while the characters are incomplete or could begin a stop string, and possibly more
    than this token's text when held-back text is released); ``finish_reason`` is set on the
    row's last event; ``logprob`` is the token's :class:`TokenLogprob` when the request asked
    for logprobs."""

    row: int
    token: int
    text: str
    finish_reason: FinishReason | None = None
    logprob: TokenLogprob | None = None


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
