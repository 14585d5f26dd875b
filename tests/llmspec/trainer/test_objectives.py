"""The objectives' collators: what each one promises about its batches, as properties."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import llmspec
from llmspec import load_spec
from llmspec.spec.sections import Denoising, MaskedLM, SpanCorruption
from llmspec.tokenizer import load_for_spec, sentinel
from llmspec.trainer.objectives import (
    IGNORE,
    CausalLMCollator,
    DenoisingCollator,
    MaskedLMCollator,
    ObjectiveError,
    SpanCorruptionCollator,
    TokenIds,
    make_collator,
    random_spans_noise_mask,
    target_count,
    to_torch,
)

SPECS = Path(__file__).resolve().parents[3] / "specs"

# A byte-level layout: pad 0, bos 1, eos 2, unk 3, mask 4, bytes 5..260, sentinels from 399 down.
PAD, BOS, EOS, UNK, MASK = 0, 1, 2, 3, 4
BYTES = tuple(range(5, 261))
DOT = 5 + ord(".")
IDS = TokenIds(
    vocab_size=400,
    pad=PAD,
    bos=BOS,
    eos=EOS,
    unk=UNK,
    mask=MASK,
    sentinels=tuple(range(399, 399 - 64, -1)),
    decoder_start=PAD,
    ordinary=BYTES,
    sentence_ends=frozenset({DOT}),
)
SPECIALS = np.asarray(sorted(IDS.specials))

# Examples: ordinary tokens with, now and then, a special one inside (documents joined by eos).
token = st.one_of(st.sampled_from(BYTES), st.sampled_from((EOS, UNK)))
examples = st.lists(st.lists(token, min_size=1, max_size=60), min_size=1, max_size=4)
seeds = st.integers(0, 2**32 - 1)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def real(row: np.ndarray, mask: np.ndarray) -> list[int]:
    return row[mask.astype(bool)].tolist()


# ----------------------------------------------------------------------------------------
# causal-lm


@given(examples, seeds)
def test_causal_lm_labels_are_the_inputs_with_padding_ignored(batch: list[list[int]], seed: int):
    collator = CausalLMCollator(IDS, seq_len=64)
    out = collator(batch, rng(seed))
    assert set(out) == {"input_ids", "attention_mask", "position_ids", "labels"}
    assert out["input_ids"].shape == (len(batch), max(map(len, batch)))
    for i, example in enumerate(batch):
        n = len(example)
        assert out["input_ids"][i, :n].tolist() == example
        assert (out["input_ids"][i, n:] == PAD).all()
        assert out["attention_mask"][i].tolist() == [1] * n + [0] * (out["labels"].shape[1] - n)
        assert out["labels"][i, :n].tolist() == example
        assert (out["labels"][i, n:] == IGNORE).all()
        assert out["position_ids"][i, :n].tolist() == list(range(n))
    # The model shifts: position t is scored against label t + 1.
    assert target_count(out, causal=True) == sum(len(e) - 1 for e in batch)


# ----------------------------------------------------------------------------------------
# masked-lm


@given(examples, seeds)
def test_masked_lm_selects_no_special_and_labels_only_selected(batch: list[list[int]], seed: int):
    collator = MaskedLMCollator(IDS, 64, MaskedLM(type="masked-lm"))
    out = collator(batch, rng(seed))
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    for i, example in enumerate(batch):
        original = np.asarray([BOS, *example, EOS])
        n = len(original)
        inputs, labels = out["input_ids"][i], out["labels"][i]
        assert (out["attention_mask"][i, :n] == 1).all() and (
            out["attention_mask"][i, n:] == 0
        ).all()
        assert (labels[n:] == IGNORE).all() and (inputs[n:] == PAD).all()
        selected = labels[:n] != IGNORE
        special = np.isin(original, SPECIALS)
        # Specials and padding are never selected, and never changed.
        assert not (selected & special).any()
        assert (inputs[:n][special] == original[special]).all()
        # Labels hold the original token exactly where one was selected; the rest is intact.
        assert (labels[:n][selected] == original[selected]).all()
        assert (inputs[:n][~selected] == original[~selected]).all()
        candidates = int((~special).sum())
        assert selected.sum() == (max(1, round(0.15 * candidates)) if candidates else 0)


def test_masked_lm_rate_and_80_10_10_split_within_statistical_tolerance():
    collator = MaskedLMCollator(IDS, 512, MaskedLM(type="masked-lm"))
    generator = rng(7)
    batch = [generator.choice(BYTES, size=510) for _ in range(64)]
    out = collator(batch, rng(1))
    original = np.stack([np.asarray([BOS, *b, EOS]) for b in batch])
    selected = out["labels"] != IGNORE
    n = selected.sum()
    assert abs(n / (64 * 510) - 0.15) < 0.001  # exactly round(0.15 * 510) per row
    inputs = out["input_ids"][selected]
    masked = (inputs == MASK).mean()
    changed = ((inputs != MASK) & (inputs != original[selected])).mean()
    kept = (inputs == original[selected]).mean()
    # Binomial standard deviations at n ~ 4900: 0.006 for 0.8, 0.004 for 0.1; allow 5.
    assert abs(masked - 0.8) < 0.03
    # A random token equals the original with probability 1/256.
    assert abs(changed - 0.1 * 255 / 256) < 0.02
    assert abs(kept - (0.1 + 0.1 / 256)) < 0.02


def test_masked_lm_split_follows_the_spec():
    objective = MaskedLM(type="masked-lm", mask_rate=0.5, mask_fraction=1.0, random_fraction=0.0)
    out = MaskedLMCollator(IDS, 130, objective)([list(BYTES[:128])] * 8, rng(3))
    selected = out["labels"] != IGNORE
    assert (out["input_ids"][selected] == MASK).all()
    assert selected.sum() == 8 * 64


# ----------------------------------------------------------------------------------------
# span-corruption


def merge_spans(inputs: list[int], targets: list[int]) -> list[int]:
    """Replace each sentinel of the inputs by the tokens that follow it in the targets."""
    sentinels = set(IDS.sentinels)
    spans: dict[int, list[int]] = {}
    current: int | None = None
    for t in targets:
        if t in sentinels:
            current = t
            spans[t] = []
        elif current is not None:
            spans[current].append(t)
    merged: list[int] = []
    for t in inputs:
        merged.extend(spans[t] if t in sentinels else [t])
    return merged


long_examples = st.lists(st.lists(token, min_size=1, max_size=120), min_size=1, max_size=4)


@given(
    long_examples,
    seeds,
    st.floats(0.05, 0.5),
    st.sampled_from([1.0, 2.0, 3.0, 5.5]),
)
def test_span_corruption_inputs_and_targets_merge_back_into_the_original(
    batch: list[list[int]], seed: int, density: float, mean: float
):
    objective = SpanCorruption(type="span-corruption", noise_density=density, mean_span_length=mean)
    collator = SpanCorruptionCollator(IDS, 128, objective)
    out = collator(batch, rng(seed))
    assert out["input_ids"].shape[1] <= 128
    for i, example in enumerate(batch):
        inputs = real(out["input_ids"][i], out["attention_mask"][i])
        labels = out["labels"][i]
        targets = labels[labels != IGNORE].tolist()
        assert inputs[-1] == EOS and targets[-1] == EOS
        assert merge_spans(inputs[:-1], targets[:-1]) == example
        # Sentinels in order, <extra_id_0> first, the same ones in inputs and targets.
        in_inputs = [t for t in inputs if t in IDS.sentinels]
        in_targets = [t for t in targets if t in IDS.sentinels]
        assert in_inputs == in_targets == list(IDS.sentinels[: len(in_inputs)])
        assert len(in_inputs) == collator.sentinels_needed(len(example))
        # Targets start with a sentinel: T5's masks start with kept tokens, end with noise.
        assert len(example) < 2 or targets[0] == IDS.sentinels[0]
        decoder = real(out["decoder_input_ids"][i], out["decoder_attention_mask"][i])
        assert decoder == [PAD, *targets[:-1]]


@given(st.integers(2, 600), seeds, st.floats(0.01, 0.9), st.floats(1.0, 10.0))
def test_noise_mask_has_t5s_noise_count_and_span_count(
    length: int, seed: int, density: float, mean: float
):
    noise = random_spans_noise_mask(length, density, mean, rng(seed))
    count = min(max(round(length * density), 1), length - 1)
    assert noise.sum() == count
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    assert starts.sum() == min(max(round(count / mean), 1), count, length - count)
    assert not noise[0] and noise[-1]


def test_noise_span_lengths_average_the_mean_span_length():
    lengths = []
    for seed in range(200):
        noise = random_spans_noise_mask(512, 0.15, 3.0, rng(seed)).astype(int)
        edges = np.diff(np.concatenate([[0], noise, [0]]))
        lengths += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
    assert abs(np.mean(lengths) - 77 / 26) < 1e-9  # round(512 * 0.15) / round(77 / 3) exactly


def test_span_corruption_needing_more_sentinels_than_exist_is_a_clear_error():
    few = TokenIds(**{**IDS.__dict__, "sentinels": IDS.sentinels[:2]})
    objective = SpanCorruption(type="span-corruption")
    with pytest.raises(ObjectiveError, match=r"makes 6 noise spans but the vocabulary has 2"):
        SpanCorruptionCollator(few, 128, objective)
    collator = SpanCorruptionCollator(few, 32, objective)
    with pytest.raises(ObjectiveError, match="an example of 100 tokens does not fit"):
        collator([list(BYTES[:100])], rng(0))
    with pytest.raises(ObjectiveError, match="100 tokens makes 5 noise spans"):
        collator.example(np.asarray(BYTES[:100]), rng(0))


# ----------------------------------------------------------------------------------------
# denoising


def expand_masks(corrupted: list[int], lengths: list[int], original: list[int]) -> list[int]:
    """Each mask of ``corrupted`` replaced by the next ``lengths`` tokens of ``original``."""
    out: list[int] = []
    spans = iter(lengths)
    for t in corrupted:
        if t == MASK:
            out.extend(original[len(out) : len(out) + next(spans)])
        else:
            out.append(t)
    return out


@given(st.lists(token, min_size=0, max_size=200), seeds, st.floats(0.05, 0.9), st.floats(0.5, 6))
def test_text_infilling_replaces_each_span_by_one_mask(
    example: list[int], seed: int, rate: float, lam: float
):
    objective = Denoising(type="denoising", mask_rate=rate, poisson_lambda=lam)
    collator = DenoisingCollator(IDS, 256, objective)
    corrupted, lengths = collator.infill(np.asarray(example, np.int64), rng(seed))
    assert expand_masks(corrupted.tolist(), lengths.tolist(), example) == example
    assert int((corrupted == MASK).sum()) == len(lengths)
    assert lengths.sum() == math.ceil(rate * len(example))


@given(examples, seeds, st.booleans())
def test_denoising_targets_are_the_original_text(batch: list[list[int]], seed: int, permute: bool):
    objective = Denoising(type="denoising", permute_sentences=permute)
    collator = DenoisingCollator(IDS, 64, objective)
    out = collator(batch, rng(seed))
    for i, example in enumerate(batch):
        labels = out["labels"][i]
        assert labels[labels != IGNORE].tolist() == [BOS, *example, EOS]
        decoder = real(out["decoder_input_ids"][i], out["decoder_attention_mask"][i])
        assert decoder == [PAD, BOS, *example]
        inputs = real(out["input_ids"][i], out["attention_mask"][i])
        assert inputs[0] == BOS and inputs[-1] == EOS and len(inputs) <= 64
        assert MASK in inputs


def test_poisson_span_lengths_average_lambda():
    collator = DenoisingCollator(IDS, 64, Denoising(type="denoising", poisson_lambda=3.0))
    lengths = collator.span_lengths(200_000, rng(0))
    assert lengths.sum() == 200_000
    assert abs(lengths.mean() - 3.0) < 0.05
    # Zero-length spans (insertions) occur at Poisson's rate e^-3.
    assert abs((lengths == 0).mean() - math.exp(-3)) < 0.005


def split_sentences(tokens: list[int]) -> list[tuple[int, ...]]:
    out, current = [], []
    for t in tokens:
        current.append(t)
        if t == DOT:
            out.append(tuple(current))
            current = []
    return [*out, tuple(current)] if current else out


@given(st.lists(st.sampled_from((*BYTES[:40], DOT)), max_size=80), seeds)
def test_sentence_permutation_reorders_whole_sentences(body: list[int], seed: int):
    example = [*body, DOT]
    collator = DenoisingCollator(IDS, 128, Denoising(type="denoising", permute_sentences=True))
    permuted = collator.permute_sentences(np.asarray(example, np.int64), rng(seed)).tolist()
    assert sorted(split_sentences(permuted)) == sorted(split_sentences(example))


def test_sentence_permutation_keeps_an_unfinished_last_sentence_whole():
    a, b, c = [BYTES[0], DOT], [BYTES[1], BYTES[2], DOT], [BYTES[3], BYTES[4]]
    collator = DenoisingCollator(IDS, 128, Denoising(type="denoising", permute_sentences=True))
    seen = set()
    for seed in range(40):
        permuted = collator.permute_sentences(np.asarray(a + b + c), rng(seed)).tolist()
        orders = [
            order
            for order in itertools.permutations((a, b, c))
            if [*order[0], *order[1], *order[2]] == permuted
        ]
        assert orders
        seen.add(tuple(map(tuple, orders[0])))
    assert len(seen) == 6


# ----------------------------------------------------------------------------------------
# Every objective


def collators():
    return [
        CausalLMCollator(IDS, 96),
        MaskedLMCollator(IDS, 96, MaskedLM(type="masked-lm")),
        SpanCorruptionCollator(IDS, 96, SpanCorruption(type="span-corruption")),
        DenoisingCollator(IDS, 96, Denoising(type="denoising", permute_sentences=True)),
    ]


@given(seeds, st.integers(1, 2**32 - 1))
def test_same_seed_same_batch_and_another_seed_another(seed: int, delta: int):
    generator = rng(seed)
    batch = [generator.choice((*BYTES, DOT), size=90).tolist() for _ in range(4)]
    for collator in collators():
        first, again = collator(batch, rng(seed)), collator(batch, rng(seed))
        other = collator(batch, rng((seed + delta) % 2**32))
        assert first.keys() == again.keys()
        assert all(np.array_equal(first[k], again[k]) for k in first)
        if not isinstance(collator, CausalLMCollator):  # the only one without randomness
            assert any(
                first[k].shape != other[k].shape or not np.array_equal(first[k], other[k])
                for k in first
            )


def test_an_example_does_not_depend_on_the_rest_of_its_batch():
    # Each example gets its own child generator, so a batch split across processes is
    # corrupted the same way as the whole batch in one process.
    generator = rng(5)
    batch = [generator.choice(BYTES, size=90).tolist() for _ in range(4)]
    for collator in collators()[1:]:
        children = rng(11).spawn(4)
        whole = collator.pad(
            [collator.example(np.asarray(b), r) for b, r in zip(batch, children, strict=True)]
        )
        children = rng(11).spawn(4)
        halves = [
            collator.pad(
                [collator.example(np.asarray(b), r) for b, r in zip(part, kids, strict=True)]
            )
            for part, kids in ((batch[:2], children[:2]), (batch[2:], children[2:]))
        ]
        for key, value in whole.items():
            for half, rows in zip(halves, (slice(0, 2), slice(2, 4)), strict=True):
                width = half[key].shape[1]
                assert np.array_equal(value[rows, :width], half[key])


@pytest.mark.parametrize("name", ["tiny-decoder", "tiny-encoder", "tiny-t5", "tiny-bart"])
def test_tiny_spec_batches_run_through_their_model(name: str):
    import torch

    spec = load_spec(SPECS / f"{name}.yaml")
    tokenizer = load_for_spec(spec)
    ids = TokenIds.from_tokenizer(spec, tokenizer)
    collator = make_collator(spec, ids, 48)
    text = "The quick brown fox jumps over the lazy dog. It was not amused! " * 2
    tokens = tokenizer.encode(text).ids
    batch = collator([tokens[: collator.raw_length], tokens[3:20]], rng(0))
    torch.manual_seed(0)
    model = llmspec.build(spec, dtype="fp32")
    output = model(**to_torch(batch))
    assert torch.isfinite(output.loss)
    assert output.loss.item() == pytest.approx(math.log(spec.vocabulary.size), rel=0.25)


def test_token_ids_come_from_the_tokenizer():
    spec = load_spec(SPECS / "tiny-t5.yaml")
    tokenizer = load_for_spec(spec)
    ids = TokenIds.from_tokenizer(spec, tokenizer)
    assert ids.sentinels[0] == spec.vocabulary.size - 1 == tokenizer.token_to_id(sentinel(0))
    assert ids.sentinels == tuple(range(274, 274 - 16, -1))
    assert ids.decoder_start == ids.pad == 0
    assert tokenizer.token_to_id(".") in ids.sentence_ends
    assert not ids.specials & set(ids.ordinary) and len(ids.ordinary) == 256
    bart = load_spec(SPECS / "tiny-bart.yaml")
    bart_ids = TokenIds.from_tokenizer(bart, load_for_spec(bart))
    assert bart_ids.decoder_start == bart_ids.eos


def test_missing_tokens_are_reported():
    no_mask = TokenIds(**{**IDS.__dict__, "mask": None})
    with pytest.raises(ObjectiveError, match="mask token"):
        MaskedLMCollator(no_mask, 64, MaskedLM(type="masked-lm"))
    with pytest.raises(ObjectiveError, match="mask token"):
        DenoisingCollator(no_mask, 64, Denoising(type="denoising"))
    with pytest.raises(ObjectiveError, match="too short"):
        DenoisingCollator(IDS, 2, Denoising(type="denoising"))
