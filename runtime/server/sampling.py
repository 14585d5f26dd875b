"""An OpenAI request's sampling fields as a decoding chain.

The chain, in this order (the order is the chain's meaning, see :mod:`runtime.decoding`):
``logit_bias`` (:class:`LogitBias`, OpenAI's: added to the logits), ``repetition_penalty``,
``presence_penalty``, ``frequency_penalty``, ``no_repeat_ngram_size``, then the filters
``temperature``, ``top_k``, ``top_p``, ``typical_p``, ``min_p``, and ``sample``. A temperature
of 0 is greedy decoding: the penalties and the bias still apply, the filters (which cannot change
the most likely token) are left out. An absent field is OpenAI's default (temperature 1, top_p
1, no penalty), not the artifact's ``generation.json``: a client of this API expects OpenAI's
defaults. ``max_tokens`` absent: the artifact's ``max_new_tokens``, cut to what the context
window leaves after the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from runtime.decoding import (
    DecodingChain,
    FrequencyPenalty,
    Greedy,
    MinP,
    NoRepeatNgram,
    PresencePenalty,
    RepetitionPenalty,
    Sample,
    Temperature,
    TopK,
    TopP,
    Typical,
)
from runtime.logits import active_rows
from runtime.server.protocol import ApiError

if TYPE_CHECKING:
    from runtime.sampling import DecodingState
    from runtime.server.protocol import _Sampling


@dataclass(frozen=True, kw_only=True)
class LogitBias:
    """Add ``bias[token]`` to each listed token's logit (OpenAI's ``logit_bias``: -100 bans a
    token in practice, +100 forces it). No-op: no tokens. A plugin-shaped step (see
    :mod:`runtime.decoding`, "Plugins"): it keeps no state per request."""

    type: Literal["logit_bias"] = "logit_bias"
    tokens: tuple[int, ...] = ()
    bias: tuple[float, ...] = ()

    def start(self, request: DecodingState) -> None:
        return None

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        ids = np.asarray(self.tokens, dtype=np.int64)
        values = np.asarray(self.bias, dtype=np.float32)
        for row in active_rows(request):
            logits[row, ids] += values
        return logits


def decoding_chain(request: _Sampling, vocab_size: int) -> DecodingChain:
    """The chain for ``request``'s sampling fields; raises :class:`ApiError` naming a
    ``logit_bias`` token outside the vocabulary."""
    steps: list[Any] = []
    if request.logit_bias:
        bias = {int(key): value for key, value in request.logit_bias.items()}  # "07" is 7
        for token in bias:
            if token >= vocab_size:
                raise ApiError(
                    f"logit_bias: token {token} is outside the vocabulary [0, {vocab_size})",
                    param="logit_bias",
                    code="invalid_value",
                )
        steps.append(LogitBias(tokens=tuple(bias), bias=tuple(bias.values())))
    if request.repetition_penalty is not None and request.repetition_penalty != 1.0:
        steps.append(RepetitionPenalty(penalty=request.repetition_penalty))
    if request.presence_penalty:
        steps.append(PresencePenalty(penalty=request.presence_penalty))
    if request.frequency_penalty:
        steps.append(FrequencyPenalty(penalty=request.frequency_penalty))
    if request.no_repeat_ngram_size:
        steps.append(NoRepeatNgram(n=request.no_repeat_ngram_size))
    temperature = 1.0 if request.temperature is None else request.temperature
    if temperature == 0.0:
        return DecodingChain((*steps, Greedy()))
    if temperature != 1.0:
        steps.append(Temperature(value=temperature))
    if request.top_k is not None and request.top_k > 0:
        steps.append(TopK(k=request.top_k))
    if request.top_p is not None and request.top_p < 1.0:
        steps.append(TopP(p=request.top_p))
    if request.typical_p is not None and request.typical_p < 1.0:
        steps.append(Typical(p=request.typical_p))
    if request.min_p:
        steps.append(MinP(p=request.min_p))
    return DecodingChain((*steps, Sample()))
