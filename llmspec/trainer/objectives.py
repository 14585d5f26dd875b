"""Data collators for the four pre-training objectives: token ids in, model batches out.

Pure numpy and seeded: the same examples and the same random generator give the same batch,
bit for bit. A batch is a dict of int64 arrays whose keys are the arguments of the generated
model's ``forward`` (:func:`to_torch` turns it into tensors):

==================  =========================================================================
objective           keys
==================  =========================================================================
causal-lm           input_ids, attention_mask, position_ids, labels
masked-lm           input_ids, attention_mask, labels
span-corruption     input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels
denoising           input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels
==================  =========================================================================

Rows are padded on the right to the longest row of the batch with the pad token (id 0 for a
model without one; padding is masked out either way), and every padded label is -100, which
the models' losses ignore.

What each collator takes: an *example* is a chunk of the token stream of a corpus (documents
joined by eos), at most :attr:`Collator.raw_length` long, so that whatever the objective adds
(framing specials, sentinels, masks) still fits ``seq_len``.

* **causal-lm** (GPT): the chunk is the input; the labels are the input ids, and the model
  scores position t against label t + 1 (the shift is in its loss, see the generated
  ``causal_lm_loss``).
* **masked-lm** (BERT, Devlin et al. 2019, https://arxiv.org/abs/1810.04805): the chunk is
  framed ``[bos] chunk [eos]`` (where the spec has them); ``mask_rate`` of the positions that
  are neither special nor padding are selected (exactly ``max(1, round(rate * n))`` of the
  ``n`` candidates, as BERT's ``create_pretraining_data``); of those, ``mask_fraction`` become
  the mask token, ``random_fraction`` a random ordinary token, the rest keep theirs. Labels hold
  the original token at selected positions and -100 everywhere else.
* **span-corruption** (T5, Raffel et al. 2020, https://arxiv.org/abs/1910.10683): the noise
  mask is T5's ``random_spans_noise_mask``: ``round(n * noise_density)`` noise tokens in
  ``round(noise / mean_span_length)`` spans, span and gap lengths drawn by random segmentation,
  the chunk starting with kept tokens. Inputs: each noise span replaced by one sentinel,
  ``<extra_id_0>``, ``<extra_id_1>``, ... in order, then eos. Targets: each sentinel followed
  by the span it replaced, then eos. Replacing every sentinel of the inputs by what follows it
  in the targets gives back the chunk.
* **denoising** (BART text infilling, Lewis et al. 2020, https://arxiv.org/abs/1910.13461):
  ``ceil(mask_rate * n)`` tokens of the chunk are masked in spans with Poisson(``lambda``)
  lengths; each span becomes one mask token, and a zero-length span inserts one. Spans never
  touch each other, so expanding each mask of the inputs back into its span gives the chunk.
  With ``permute_sentences`` the chunk's sentences (split after sentence-ending tokens such as
  ``.``) are shuffled first. Inputs and targets are framed ``[bos] ... [eos]``; the targets are
  the original chunk. Decisions: the spans are placed uniformly among the gaps between kept
  tokens (fairseq's spans may overlap and merge); the framing tokens are never masked, but a
  document separator (eos) inside the chunk may fall in a span, as any token; a rare input
  that insertions make longer than ``seq_len`` loses tokens at its end (before its eos).

Encoder-decoder batches: ``decoder_input_ids`` are the targets shifted right by one, starting
with the spec's ``decoder_start`` token (T5: pad, BART: eos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from llmspec.errors import LlmspecError
from llmspec.spec.sections import CausalLM, Denoising, MaskedLM, ModelSpec, SpanCorruption

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tokenizers import Tokenizer

IGNORE = -100  # the label the models' losses ignore
SENTENCE_ENDINGS = (".", "!", "?")

IntArray = np.ndarray[Any, np.dtype[np.int64]]
Features = dict[str, IntArray]


class ObjectiveError(ValueError, LlmspecError):
    """An example an objective cannot turn into training data (e.g. more noise spans than the
    vocabulary has sentinels)."""


@dataclass(frozen=True)
class TokenIds:
    """The ids a collator needs, taken once from the tokenizer.

    ``sentinels[i]`` is the id of ``<extra_id_i>``; ``ordinary`` the ids a masked-LM random
    replacement draws from (every id of the tokenizer that is not special);
    ``sentence_ends`` the ids of tokens that end a sentence (for BART's sentence permutation).
    """

    vocab_size: int
    pad: int | None = None
    bos: int | None = None
    eos: int | None = None
    unk: int | None = None
    mask: int | None = None
    sentinels: tuple[int, ...] = ()
    decoder_start: int | None = None
    ordinary: tuple[int, ...] = ()
    sentence_ends: frozenset[int] = frozenset()

    @property
    def specials(self) -> frozenset[int]:
        """Every special token and sentinel: never selected for masking."""
        named = (self.pad, self.bos, self.eos, self.unk, self.mask)
        return frozenset(i for i in named if i is not None) | frozenset(self.sentinels)

    @classmethod
    def from_tokenizer(cls, spec: ModelSpec, tokenizer: Tokenizer) -> TokenIds:
        from llmspec.tokenizer import check_fits, sentinel

        named = check_fits(tokenizer, spec)  # every special and sentinel is present
        found = [tokenizer.token_to_id(sentinel(i)) for i in range(spec.vocabulary.sentinels)]
        sentinels = tuple(i for i in found if i is not None)
        specials = set(named.values()) | set(sentinels)
        vocab = tokenizer.get_vocab(with_added_tokens=True).values()
        ordinary = tuple(sorted(i for i in vocab if i not in specials))
        ends = frozenset(
            i for i in ordinary if tokenizer.decode([i]).rstrip().endswith(SENTENCE_ENDINGS)
        )
        start = named.get(spec.decoder_start) if spec.architecture == "encoder-decoder" else None
        return cls(
            vocab_size=spec.vocabulary.size,
            pad=named.get("pad"),
            bos=named.get("bos"),
            eos=named.get("eos"),
            unk=named.get("unk"),
            mask=named.get("mask"),
            sentinels=sentinels,
            decoder_start=start,
            ordinary=ordinary,
            sentence_ends=ends,
        )


class Collator(Protocol):
    """Turns examples (1-D token-id arrays) into one padded batch of rows of at most
    ``seq_len`` tokens.

    ``example`` transforms one example with its own generator; ``pad`` stacks transformed
    examples; calling the collator does both, one child generator per example, so that an
    example's transformation does not depend on the others in its batch."""

    seq_len: int
    raw_length: int  # the longest example whose rows fit seq_len tokens

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features: ...

    def pad(self, features: Sequence[Features]) -> Features: ...

    def __call__(self, examples: Sequence[Any], rng: np.random.Generator) -> Features: ...


def _as_ids(tokens: Any) -> IntArray:
    array = np.asarray(tokens, dtype=np.int64)
    if array.ndim != 1:
        raise ObjectiveError(f"an example is a 1-D sequence of token ids, got shape {array.shape}")
    return array


def _pad_rows(rows: Sequence[IntArray], value: int) -> IntArray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _frame(ids: TokenIds, tokens: IntArray) -> IntArray:
    """``[bos] tokens [eos]``, each where the vocabulary has it."""
    head = [ids.bos] if ids.bos is not None else []
    tail = [ids.eos] if ids.eos is not None else []
    return np.concatenate([np.asarray(head, np.int64), tokens, np.asarray(tail, np.int64)])


class _Base:
    added = 0  # the tokens the objective adds to an example, at most

    def __init__(self, ids: TokenIds, seq_len: int) -> None:
        self.ids = ids
        self.seq_len = seq_len
        self.raw_length = seq_len - self.added
        if self.raw_length < 1:
            raise ObjectiveError(f"seq_len {seq_len} is too short for {type(self).__name__}")
        self.pad_id = ids.pad if ids.pad is not None else 0

    def __call__(self, examples: Sequence[Any], rng: np.random.Generator) -> Features:
        children = rng.spawn(len(examples))
        return self.pad(
            [self.example(self._checked(t), r) for t, r in zip(examples, children, strict=True)]
        )

    def _checked(self, tokens: Any) -> IntArray:
        array = _as_ids(tokens)
        if len(array) > self.raw_length:
            raise ObjectiveError(
                f"an example of {len(array)} tokens does not fit: {type(self).__name__} takes "
                f"at most {self.raw_length} for rows of {self.seq_len}"
            )
        return array

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features:
        raise NotImplementedError

    def pad(self, features: Sequence[Features]) -> Features:
        raise NotImplementedError


class CausalLMCollator(_Base):
    """Next-token prediction: inputs are the chunk, labels the same ids (the model shifts)."""

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features:
        return {"input_ids": _as_ids(tokens)}

    def pad(self, features: Sequence[Features]) -> Features:
        rows = [f["input_ids"] for f in features]
        input_ids = _pad_rows(rows, self.pad_id)
        attention_mask = _pad_rows([np.ones(len(r), np.int64) for r in rows], 0)
        width = input_ids.shape[1]
        position_ids = np.broadcast_to(np.arange(width, dtype=np.int64), input_ids.shape).copy()
        labels = np.where(attention_mask == 1, input_ids, IGNORE)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
        }


class MaskedLMCollator(_Base):
    """BERT's masked LM with the 80/10/10 split (see the module docstring)."""

    def __init__(self, ids: TokenIds, seq_len: int, objective: MaskedLM) -> None:
        self.added = (ids.bos is not None) + (ids.eos is not None)
        super().__init__(ids, seq_len)
        if ids.mask is None:
            raise ObjectiveError("masked-lm needs a mask token; add special_tokens.mask")
        if not ids.ordinary:
            raise ObjectiveError("masked-lm needs ordinary tokens to draw random ones from")
        self.mask: int = ids.mask
        self.objective = objective
        self.ordinary = np.asarray(ids.ordinary, dtype=np.int64)
        self.specials = np.asarray(sorted(ids.specials), dtype=np.int64)

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features:
        o = self.objective
        original = _frame(self.ids, _as_ids(tokens))
        candidates = np.flatnonzero(~np.isin(original, self.specials))
        inputs = original.copy()
        labels = np.full_like(original, IGNORE)
        if len(candidates):
            count = max(1, round(o.mask_rate * len(candidates)))
            chosen = np.sort(rng.choice(candidates, size=count, replace=False))
            labels[chosen] = original[chosen]
            draw = rng.random(count)
            to_mask = chosen[draw < o.mask_fraction]
            to_random = chosen[
                (draw >= o.mask_fraction) & (draw < o.mask_fraction + o.random_fraction)
            ]
            inputs[to_mask] = self.mask
            inputs[to_random] = rng.choice(self.ordinary, size=len(to_random))
        return {"input_ids": inputs, "labels": labels}

    def pad(self, features: Sequence[Features]) -> Features:
        rows = [f["input_ids"] for f in features]
        return {
            "input_ids": _pad_rows(rows, self.pad_id),
            "attention_mask": _pad_rows([np.ones(len(r), np.int64) for r in rows], 0),
            "labels": _pad_rows([f["labels"] for f in features], IGNORE),
        }


class _Seq2SeqBase(_Base):
    def __init__(self, ids: TokenIds, seq_len: int) -> None:
        super().__init__(ids, seq_len)
        if ids.eos is None:
            raise ObjectiveError("encoder-decoder objectives need an eos token")
        if ids.decoder_start is None:
            raise ObjectiveError("encoder-decoder objectives need a decoder start token")
        self.eos: int = ids.eos
        self.decoder_start: int = ids.decoder_start

    def _features(self, inputs: IntArray, targets: IntArray) -> Features:
        decoder_input_ids = np.concatenate([[self.decoder_start], targets[:-1]]).astype(np.int64)
        return {"input_ids": inputs, "decoder_input_ids": decoder_input_ids, "labels": targets}

    def pad(self, features: Sequence[Features]) -> Features:
        inputs = [f["input_ids"] for f in features]
        decoder = [f["decoder_input_ids"] for f in features]
        return {
            "input_ids": _pad_rows(inputs, self.pad_id),
            "attention_mask": _pad_rows([np.ones(len(r), np.int64) for r in inputs], 0),
            "decoder_input_ids": _pad_rows(decoder, self.pad_id),
            "decoder_attention_mask": _pad_rows([np.ones(len(r), np.int64) for r in decoder], 0),
            "labels": _pad_rows([f["labels"] for f in features], IGNORE),
        }


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> IntArray:
    """Split ``num_items`` into ``num_segments`` non-empty runs, uniformly at random
    (T5's ``_random_segmentation``): the lengths of the runs, in order."""
    cuts = np.sort(rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False))
    bounds = np.concatenate([[0], cuts, [num_items]])
    return np.diff(bounds).astype(np.int64)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """T5's noise mask: True at the noise tokens of a sequence of ``length``, about
    ``noise_density`` of them, in spans of mean length ``mean_span_length``. The sequence starts
    with a kept token and ends with a noise span. (T5's ``random_spans_noise_mask``.)"""
    if length < 2:
        return np.zeros(length, dtype=bool)
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span_length), 1)
    spans = min(spans, noise, length - noise)
    noise_lengths = _random_segmentation(noise, spans, rng)
    kept_lengths = _random_segmentation(length - noise, spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    return np.repeat(np.arange(2 * spans) % 2 == 1, interleaved)


class SpanCorruptionCollator(_Seq2SeqBase):
    """T5's span corruption (see the module docstring)."""

    added = 1  # inputs: kept tokens + one sentinel per span (spans <= noise) + eos

    def __init__(self, ids: TokenIds, seq_len: int, objective: SpanCorruption) -> None:
        self.objective = objective
        super().__init__(ids, seq_len)
        self._check_sentinels(self.raw_length)

    def sentinels_needed(self, length: int) -> int:
        """The number of noise spans (so sentinels) an example of ``length`` tokens gets."""
        if length < 2:
            return 0
        o = self.objective
        noise = min(max(round(length * o.noise_density), 1), length - 1)
        return min(max(round(noise / o.mean_span_length), 1), noise, length - noise)

    def _check_sentinels(self, length: int) -> None:
        needed = self.sentinels_needed(length)
        if needed > len(self.ids.sentinels):
            raise ObjectiveError(
                f"span corruption of {length} tokens makes {needed} noise spans but the "
                f"vocabulary has {len(self.ids.sentinels)} sentinels; train on shorter sequences "
                "(--seq-len) or raise vocabulary.sentinels"
            )

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features:
        tokens = _as_ids(tokens)
        self._check_sentinels(len(tokens))
        o = self.objective
        noise = random_spans_noise_mask(len(tokens), o.noise_density, o.mean_span_length, rng)
        eos = np.asarray([self.eos], np.int64)
        inputs = np.concatenate([self._sentinel_spans(tokens, noise), eos])
        # Without noise (a one-token example) there is nothing to predict but eos.
        spans = self._sentinel_spans(tokens, ~noise) if noise.any() else tokens[:0]
        targets = np.concatenate([spans, eos])
        return self._features(inputs, targets)

    def _sentinel_spans(self, tokens: IntArray, drop: np.ndarray[Any, Any]) -> IntArray:
        """``tokens`` with each run of ``drop`` replaced by the next sentinel (T5's
        ``noise_span_to_unique_sentinel``)."""
        starts = drop & ~np.concatenate([[False], drop[:-1]])
        out = tokens.copy()
        sentinels = np.asarray(self.ids.sentinels, np.int64)
        out[starts] = sentinels[: int(starts.sum())]
        return out[~drop | starts]


class DenoisingCollator(_Seq2SeqBase):
    """BART's text infilling, optionally after sentence permutation (see the module
    docstring)."""

    def __init__(self, ids: TokenIds, seq_len: int, objective: Denoising) -> None:
        self.added = (ids.bos is not None) + 1  # [bos] ... eos
        super().__init__(ids, seq_len)
        if ids.mask is None:
            raise ObjectiveError("denoising needs a mask token; add special_tokens.mask")
        self.mask: int = ids.mask
        self.objective = objective
        self.sentence_ends = np.asarray(sorted(ids.sentence_ends), dtype=np.int64)

    def span_lengths(self, budget: int, rng: np.random.Generator) -> IntArray:
        """Poisson(lambda) span lengths that add up to ``budget`` (the last one trimmed), in
        the order drawn; zeros are insertions (fairseq's ``add_whole_word_mask``)."""
        lengths: list[int] = []
        total = 0
        while total < budget:
            drawn = rng.poisson(self.objective.poisson_lambda, size=max(budget, 1))
            for value in drawn.tolist():
                value = min(value, budget - total)
                lengths.append(value)
                total += value
                if total >= budget:
                    break
        return np.asarray(lengths, dtype=np.int64)

    def permute_sentences(self, tokens: IntArray, rng: np.random.Generator) -> IntArray:
        """The sentences of ``tokens`` (each ending after a sentence-ending token; a last one
        may end without) in a random order."""
        ends = np.flatnonzero(np.isin(tokens, self.sentence_ends)) + 1
        sentences = np.split(tokens, ends[ends < len(tokens)])
        order = rng.permutation(len(sentences))
        return np.concatenate([sentences[i] for i in order]) if sentences else tokens

    def infill(self, tokens: IntArray, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        """(corrupted tokens, the span length behind each of their masks)."""
        n = len(tokens)
        budget = math.ceil(self.objective.mask_rate * n)
        if n == 0 or budget == 0:
            return tokens.copy(), np.zeros(0, np.int64)
        lengths = self.span_lengths(budget, rng)
        kept = n - budget
        gaps = kept + 1  # a span goes before one of the kept tokens or after the last
        if len(lengths) > gaps:
            # More spans than places: drop insertions, then merge the surplus into one span.
            lengths = lengths[lengths > 0]
            if len(lengths) > gaps:
                lengths = np.concatenate([lengths[: gaps - 1], [lengths[gaps - 1 :].sum()]])
        places = np.sort(rng.choice(gaps, size=len(lengths), replace=False))
        pieces: list[IntArray] = []
        cursor = 0  # position in tokens
        done = 0  # kept tokens emitted
        for place, length in zip(places.tolist(), lengths.tolist(), strict=True):
            pieces.append(tokens[cursor : cursor + place - done])
            cursor += place - done
            done = place
            pieces.append(np.asarray([self.mask], np.int64))
            cursor += length
        pieces.append(tokens[cursor:])
        return np.concatenate(pieces), lengths

    def example(self, tokens: IntArray, rng: np.random.Generator) -> Features:
        tokens = _as_ids(tokens)
        source = tokens
        if self.objective.permute_sentences:
            source = self.permute_sentences(tokens, rng)
        corrupted, _ = self.infill(source, rng)
        inputs = _frame(self.ids, corrupted)
        if len(inputs) > self.seq_len:
            inputs = np.concatenate([inputs[: self.seq_len - 1], [self.eos]]).astype(np.int64)
        return self._features(inputs, _frame(self.ids, tokens))


def make_collator(spec: ModelSpec, ids: TokenIds, seq_len: int) -> Collator:
    """The collator of ``spec``'s objective, for rows of at most ``seq_len`` tokens."""
    objective = spec.objective
    if isinstance(objective, CausalLM):
        return CausalLMCollator(ids, seq_len)
    if isinstance(objective, MaskedLM):
        return MaskedLMCollator(ids, seq_len, objective)
    if isinstance(objective, SpanCorruption):
        return SpanCorruptionCollator(ids, seq_len, objective)
    if isinstance(objective, Denoising):
        return DenoisingCollator(ids, seq_len, objective)
    raise ObjectiveError(f"no collator for objective {objective.type}")  # pragma: no cover


def target_count(batch: Mapping[str, Any], causal: bool) -> int:
    """How many label positions a batch's loss averages over (for weighting batches that are
    split across processes): labels other than -100, after the causal shift."""
    labels = np.asarray(batch["labels"])
    if causal:
        labels = labels[:, 1:]
    return int((labels != IGNORE).sum())


def to_torch(batch: Mapping[str, IntArray], device: Any = "cpu") -> dict[str, torch.Tensor]:
    """The batch as int64 tensors on ``device``."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in batch.items()}
