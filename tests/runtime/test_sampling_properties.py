"""Properties of the decoding strategies (hypothesis), each checked against a plain reference:
a sort of the whole vocabulary in float64 where the implementation avoids one."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.decoding import (
    DecodingChain,
    DecodingError,
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
from runtime.logits import softmax
from runtime.sampling import DecodingState, SamplerChain, implementation

# Logits on a 0.01 grid: ties are common (as in fp16 models) and no difference underflows.
GRID = st.integers(-3000, 3000).map(lambda i: i / 100)


@st.composite
def logits(draw, max_batch=3, min_vocab=2, max_vocab=40, elements=GRID):
    batch = draw(st.integers(1, max_batch))
    vocab = draw(st.integers(min_vocab, max_vocab))
    return draw(hnp.arrays(np.float32, (batch, vocab), elements=elements))


@st.composite
def logits_and_state(draw, **kwargs):
    """Logits and a state whose rows have prompts and a few generated tokens."""
    values = draw(logits(**kwargs))
    batch, vocab = values.shape
    token = st.integers(0, vocab - 1)
    prompts = [draw(st.lists(token, max_size=6)) for _ in range(batch)]
    state = DecodingState(prompts, vocab, seed=draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(0, 4))):
        state.append(np.array([draw(token) for _ in range(batch)]))
    return values, state


def processed(step, values, state, processor=None):
    """``values`` after one processor (``step``'s, or ``processor`` to keep its state)."""
    processor = processor or implementation(step)
    return processor.process(values.copy(), state, state.state_of(processor))


def support(row):
    return set(np.flatnonzero(row > -np.inf).tolist())


def reference_top_k(row, k):
    if k == 0 or k >= len(row):
        return set(range(len(row)))
    order = np.lexsort((np.arange(len(row)), -row.astype(np.float64)))
    return set(order[:k].tolist())


def reference_prefix(key, probs, p):
    """The shortest prefix in (key, id) order whose probability reaches p, and how close any
    cumulative sum comes to p (a knife edge where rounding may decide)."""
    order = np.lexsort((np.arange(len(key)), key))
    cumulative = np.cumsum(probs[order])
    end = min(int(np.searchsorted(cumulative, p, side="left")), len(key) - 1)
    return set(order[: end + 1].tolist()), float(np.min(np.abs(cumulative - p)))


def reference_nucleus(row, p):
    probs = softmax(row)
    return reference_prefix(-probs, probs, p)


def reference_typical(row, p):
    with np.errstate(divide="ignore"):
        log_probs = np.log(softmax(row))
    probs = np.exp(log_probs)
    entropy = -np.sum(np.where(probs > 0, probs * log_probs, 0.0))
    return reference_prefix(np.abs(-log_probs - entropy), probs, p)


def reference_min_p(row, p):
    ratio = softmax(row) / softmax(row).max()
    return set(np.flatnonzero(ratio >= p).tolist()), float(np.min(np.abs(ratio - p)))


# ----------------------------------------------------------------------------------------
# Selectors


@given(logits_and_state())
def test_greedy_is_argmax_with_ties_to_the_lowest_id(case):
    values, state = case
    tokens = SamplerChain("greedy").select(values.copy(), state)
    assert tokens.tolist() == np.argmax(values, axis=1).tolist()
    assert tokens.dtype == np.int64


@given(logits_and_state())
def test_top_k_1_then_sample_is_greedy(case):
    values, state = case
    sampled = SamplerChain("top_k=1,sample").select(values.copy(), state)
    assert sampled.tolist() == np.argmax(values, axis=1).tolist()


@given(logits_and_state())
def test_temperature_zero_then_sample_is_greedy(case):
    values, state = case
    sampled = SamplerChain("temperature=0,sample").select(values.copy(), state)
    assert sampled.tolist() == np.argmax(values, axis=1).tolist()


@given(logits(), st.integers(0, 2**32 - 1), st.sampled_from(["sample", "top_p=0.9,sample"]))
def test_same_seed_same_tokens(values, seed, chain):
    sampler = SamplerChain(chain)
    runs = []
    for _ in range(2):
        state = DecodingState([[0]] * len(values), values.shape[1], seed=seed)
        tokens = []
        for step in range(5):
            tokens.append(sampler.select(np.roll(values, step, axis=1), state).tolist())
            state.append(np.array(tokens[-1]))
        runs.append(tokens)
    assert runs[0] == runs[1]


# ----------------------------------------------------------------------------------------
# Filters: the support is exactly the reference's, and sampling stays inside it


@given(logits_and_state(), st.integers(0, 45))
def test_top_k_keeps_exactly_the_k_best_ties_to_the_lowest_ids(case, k):
    values, state = case
    out = processed(TopK(k=k), values, state)
    for row, result in zip(values, out, strict=True):
        assert support(result) == reference_top_k(row, k)


@given(st.integers(0, 2**32 - 1), st.integers(256, 4000), st.integers(1, 80), st.integers(1, 3000))
def test_top_k_over_a_larger_vocabulary_bounds_by_column_maxima_exactly(seed, vocab, k, spread):
    # Integers on a small range make ties at the k-th place common; a wide range makes none.
    rng = np.random.default_rng(seed)
    values = (rng.integers(-spread, spread + 1, size=(1, vocab)) / 100).astype(np.float32)
    out = processed(TopK(k=k), values, DecodingState([[0]], vocab))
    assert support(out[0]) == reference_top_k(values[0], k)


@given(logits_and_state(), st.floats(0.01, 1.0))
def test_top_p_keeps_the_minimal_nucleus(case, p):
    values, state = case
    out = processed(TopP(p=p), values, state)
    for row, result in zip(values, out, strict=True):
        nucleus, edge = reference_nucleus(row, p)
        assume(edge > 1e-6)  # masses are float32-accurate over the vocabulary
        assert support(result) == nucleus


@given(logits_and_state(), st.floats(0.01, 1.0))
def test_min_p_keeps_the_tokens_above_its_threshold(case, p):
    values, state = case
    out = processed(MinP(p=p), values, state)
    for row, result in zip(values, out, strict=True):
        kept, edge = reference_min_p(row, p)
        assume(edge > 1e-6)
        assert support(result) == kept


@given(logits_and_state(), st.floats(0.01, 1.0))
def test_typical_keeps_the_tokens_closest_to_the_entropy(case, p):
    values, state = case
    out = processed(Typical(p=p), values, state)
    for row, result in zip(values, out, strict=True):
        kept, edge = reference_typical(row, p)
        assume(edge > 1e-9)
        assert support(result) == kept


@pytest.mark.parametrize("scale", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("p", [0.3, 0.9, 0.99])
def test_nucleus_and_typical_at_a_real_vocabulary_match_a_full_sort(scale, p):
    # Flat distributions make the filters narrow a threshold over tens of thousands of tokens.
    rng = np.random.default_rng(int(scale * 100 + p * 10))
    values = (rng.standard_normal((1, 50257)) * scale).astype(np.float32)
    state = DecodingState([[1, 2, 3]], 50257)
    nucleus, _ = reference_nucleus(values[0], p)
    assert support(processed(TopP(p=p), values, state)[0]) == nucleus
    typical, _ = reference_typical(values[0], p)
    assert support(processed(Typical(p=p), values, state)[0]) == typical


@given(
    logits_and_state(),
    st.sampled_from([TopK(k=3), TopP(p=0.5), MinP(p=0.3), Typical(p=0.5), TopP(p=0.95)]),
)
def test_a_sampled_token_is_always_inside_the_filtered_support(case, step):
    values, state = case
    kept = [support(row) for row in processed(step, values, state)]
    tokens = SamplerChain([step, Sample()]).select(values.copy(), state)
    assert all(token in row for token, row in zip(tokens.tolist(), kept, strict=True))


# ----------------------------------------------------------------------------------------
# Processors in general

PROCESSORS = st.one_of(
    st.builds(Temperature, value=st.floats(0.0, 5.0)),
    st.builds(TopK, k=st.integers(0, 50)),
    st.builds(TopP, p=st.floats(0.01, 1.0)),
    st.builds(MinP, p=st.floats(0.0, 1.0)),
    st.builds(Typical, p=st.floats(0.01, 1.0)),
    st.builds(RepetitionPenalty, penalty=st.floats(0.5, 3.0)),
    st.builds(PresencePenalty, penalty=st.floats(-5.0, 5.0)),
    st.builds(FrequencyPenalty, penalty=st.floats(-5.0, 5.0)),
)


@given(
    logits_and_state(elements=st.floats(-1e4, 1e4, width=32)),
    st.lists(PROCESSORS, max_size=4),
)
def test_processed_distributions_are_non_negative_and_sum_to_one(case, steps):
    values, state = case
    probs = softmax(SamplerChain([*steps, Greedy()]).process(values.copy(), state))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "step",
    [
        Temperature(value=1.0),
        TopK(k=0),
        TopP(p=1.0),
        MinP(p=0.0),
        Typical(p=1.0),
        RepetitionPenalty(penalty=1.0),
        PresencePenalty(penalty=0.0),
        FrequencyPenalty(penalty=0.0),
        NoRepeatNgram(n=0),
    ],
    ids=lambda step: step.type,
)
@given(case=logits_and_state(elements=st.floats(-1e4, 1e4, width=32) | st.just(-np.inf)))
def test_no_op_values_change_nothing(step, case):
    values, state = case
    assert np.array_equal(processed(step, values, state), values)


@given(logits_and_state(), st.floats(0.05, 10.0))
def test_temperature_only_rescales(case, value):
    values, state = case
    out = processed(Temperature(value=value), values, state)
    assert np.argmax(out, axis=1).tolist() == np.argmax(values, axis=1).tolist()
    np.testing.assert_allclose(softmax(out), softmax(values / value), rtol=1e-4, atol=1e-12)


@given(logits_and_state(), st.lists(PROCESSORS, max_size=3))
def test_batched_selection_equals_per_row_selection_for_deterministic_chains(case, steps):
    values, state = case
    sampler = SamplerChain([NoRepeatNgram(n=2), *steps, Greedy()])
    batch, vocab = values.shape
    rows = []
    for i in range(batch):
        generated = state.generated(i)
        rows.append(DecodingState([state.sequence(i)[: -len(generated) or None]], vocab))
        for token in generated:
            rows[-1].append(np.array([token]))
    for step in range(3):
        step_logits = np.roll(values, step, axis=1)
        alone, emptied = [], []
        for i in range(batch):
            try:
                alone.append(int(sampler.select(step_logits[i : i + 1].copy(), rows[i])[0]))
            except DecodingError:  # no_repeat_ngram banned the whole (tiny) vocabulary
                emptied.append(f"row {i} has no token left")
        if emptied:
            with pytest.raises(DecodingError) as raised:
                sampler.select(step_logits.copy(), state)
            assert all(message in str(raised.value) for message in emptied)
            return
        together = sampler.select(step_logits.copy(), state)
        assert together.tolist() == alone
        state.append(together)
        for i, row_state in enumerate(rows):
            row_state.append(together[i : i + 1])


@given(logits_and_state(), st.floats(1.01, 5.0))
def test_repetition_penalty_lowers_seen_tokens(case, penalty):
    values, state = case
    out = processed(RepetitionPenalty(penalty=penalty), values, state)
    for i, (before, after) in enumerate(zip(values, out, strict=True)):
        seen = np.zeros(len(before), dtype=bool)
        seen[state.sequence(i)] = True
        assert np.array_equal(after[~seen], before[~seen])
        assert np.all(after[seen] <= before[seen])
        assert np.all(after[seen & (before != 0)] < before[seen & (before != 0)])
        assert softmax(after)[seen].sum() <= softmax(before)[seen].sum() + 1e-12


@given(logits_and_state(), st.floats(0.1, 5.0))
def test_presence_and_frequency_penalties_count_generated_tokens_only(case, penalty):
    values, state = case
    presence = processed(PresencePenalty(penalty=penalty), values, state)
    frequency = processed(FrequencyPenalty(penalty=penalty), values, state)
    for i, row in enumerate(values):
        counts = np.bincount(state.generated(i), minlength=len(row)).astype(np.float32)
        np.testing.assert_allclose(presence[i], row - np.float32(penalty) * (counts > 0))
        np.testing.assert_allclose(frequency[i], row - np.float32(penalty) * counts, rtol=1e-6)


def brute_force_banned(sequence, n):
    sequence = list(sequence)
    if len(sequence) < n - 1:
        return set()
    prefix = sequence[len(sequence) - n + 1 :] if n > 1 else []
    return {
        sequence[i + n - 1]
        for i in range(len(sequence) - n + 1)
        if sequence[i : i + n - 1] == prefix
    }


@given(
    st.integers(2, 5),
    st.integers(1, 4),
    st.lists(st.lists(st.integers(0, 4), max_size=12), min_size=1, max_size=3),
    st.data(),
)
def test_no_repeat_ngram_forbids_exactly_the_completing_tokens(vocab, n, prompts, data):
    prompts = [[t % vocab for t in p] for p in prompts]
    state = DecodingState(prompts, vocab)
    step = NoRepeatNgram(n=n)
    processor = implementation(step)
    values = np.zeros((len(prompts), vocab), dtype=np.float32)
    for _ in range(data.draw(st.integers(0, 6))):
        processed(step, values, state, processor)  # the index is built, then kept up to date
        tokens = st.lists(st.integers(0, vocab - 1), min_size=len(prompts), max_size=len(prompts))
        state.append(np.array(data.draw(tokens)))
    out = processed(step, values, state, processor)
    for i in range(len(prompts)):
        assert set(np.flatnonzero(out[i] == -np.inf).tolist()) == brute_force_banned(
            state.sequence(i), n
        )


@given(
    st.lists(st.lists(st.integers(0, 9), max_size=5), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, 9), min_size=3, max_size=3), max_size=6),
    st.data(),
)
def test_incremental_bookkeeping_equals_recounting(prompts, steps, data):
    prompts = prompts[:1] * 3 if len(prompts) < 3 else prompts
    state = DecodingState(prompts, 10, pad_id=9)
    # The penalties' states are started now, then updated by append (their accept).
    counted = state.state_of(implementation(FrequencyPenalty(penalty=1.0)))
    seen = state.state_of(implementation(RepetitionPenalty(penalty=2.0)))
    generated: list[list[int]] = [[] for _ in prompts]
    for tokens in steps:
        state.append(np.array(tokens))
        for i, token in enumerate(tokens):
            if not state.finished[i]:
                generated[i].append(token)
        state.finish(np.array(data.draw(st.lists(st.booleans(), min_size=3, max_size=3))))
    for i, prompt in enumerate(prompts):
        assert state.generated(i).tolist() == generated[i]
        assert state.sequence(i).tolist() == prompt + generated[i]
        counts = np.bincount(generated[i], minlength=10)
        assert counted.counts[i].tolist() == counts.tolist()
    rows, tokens = seen.pairs.view()
    assert sorted(zip(rows.tolist(), tokens.tolist(), strict=True)) == sorted(
        (i, t) for i in range(3) for t in set(state.sequence(i).tolist())
    )
    rows, tokens = counted.pairs.view()
    assert sorted(zip(rows.tolist(), tokens.tolist(), strict=True)) == sorted(
        (i, t) for i in range(3) for t in set(generated[i])
    )


def test_the_order_of_processors_matters():
    # p = (0.5, 0.3, 0.2). top_p=0.7 keeps {0, 1}; temperature 0.25 sharpens to (0.87, ...)
    # first, and then the nucleus is {0} alone.
    values = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    state = DecodingState([[0]], 3)
    first = SamplerChain(DecodingChain.parse("temperature=0.25,top_p=0.7,greedy"))
    second = SamplerChain(DecodingChain.parse("top_p=0.7,temperature=0.25,greedy"))
    assert support(first.process(values.copy(), state)[0]) == {0}
    assert support(second.process(values.copy(), state)[0]) == {0, 1}
