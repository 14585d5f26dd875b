"""The decoding strategies by example: exact values, sampled frequencies, the bookkeeping of
finished rows, and the errors a generation loop gets for bad input."""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtime.decoding import BeamSearch, DecodingChain, DecodingError, Greedy, TopK
from runtime.logits import softmax
from runtime.sampling import DecodingState, SamplerChain


def state_for(values, prompts=None, **kwargs):
    prompts = prompts if prompts is not None else [[0]] * len(values)
    return DecodingState(prompts, values.shape[1], **kwargs)


def chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# Critical values of the chi-square distribution at significance 0.001, from its CDF
# (mpmath: findroot(gammainc(df/2, 0, x/2, regularized=True) - 0.999)): df 5 -> 20.515,
# df 299 -> 380.299. The seed is fixed, so each test is deterministic; the threshold says
# the implementation would pass for all but 1 in 1000 seeds if it were right.
@pytest.mark.parametrize(
    ("vocab", "chain", "kept", "critical"),
    [
        (10, "top_k=6,sample", 6, 20.515),  # the dense path: 6 of 10 tokens left
        (100, "top_k=6,sample", 6, 20.515),  # the sparse path: few finite logits
        (300, "sample", 300, 380.299),  # the dense path over more than 256 columns
    ],
)
def test_sampled_frequencies_match_the_filtered_distribution(vocab, chain, kept, critical):
    rng = np.random.default_rng(vocab)
    row = rng.uniform(-1.0, 1.0, size=vocab).astype(np.float32)
    expected = softmax(np.where(row >= np.sort(row)[-kept], row, -np.inf))
    rows, steps = 500, 24  # 12,000 draws
    values = np.tile(row, (rows, 1))
    sampler, state = SamplerChain(chain), state_for(values, seed=1234)
    counts = np.zeros(vocab)
    for _ in range(steps):
        tokens = sampler.select(values.copy(), state)
        counts += np.bincount(tokens, minlength=vocab)
    assert counts[expected == 0].sum() == 0
    support = expected > 0
    assert chi_square(counts[support], expected[support]) < critical


def test_temperature_zero_keeps_only_the_first_best_token():
    values = np.array([[1.0, 3.0, 3.0, -2.0]], dtype=np.float32)
    out = SamplerChain("temperature=0,sample").process(values.copy(), state_for(values))
    assert out.tolist() == [[-np.inf, 3.0, -np.inf, -np.inf]]


def test_a_tiny_temperature_is_greedy_without_overflow():
    values = np.array([[1.0, 3.0, 2.999, -2.0]], dtype=np.float32)
    out = SamplerChain("temperature=1e-44,sample").process(values.copy(), state_for(values))
    assert out.tolist() == [[-np.inf, 0.0, -np.inf, -np.inf]]


def test_top_k_breaks_ties_at_the_kth_place_by_lowest_id():
    values = np.array([[0.0, 2.0, 1.0, 2.0, 1.0, 1.0]], dtype=np.float32)
    out = SamplerChain("top_k=3,greedy").process(values.copy(), state_for(values))
    assert np.isfinite(out[0]).tolist() == [False, True, True, True, False, False]


def test_repetition_penalty_is_ctrls_divide_positive_multiply_negative():
    values = np.array([[2.0, -2.0, 2.0, -2.0, 0.0]], dtype=np.float32)
    state = state_for(values, prompts=[[0, 1, 4]])
    out = SamplerChain("repetition_penalty=2,greedy").process(values.copy(), state)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 0.0]]


def test_presence_and_frequency_penalties_use_generated_counts_not_the_prompt():
    values = np.zeros((1, 4), dtype=np.float32)
    state = state_for(values, prompts=[[3, 3, 3]])
    for token in (1, 1, 2):
        state.append(np.array([token]))
    chain = "presence_penalty=0.5,frequency_penalty=0.25,greedy"
    out = SamplerChain(chain).process(values.copy(), state)
    assert out.tolist() == [[0.0, -1.0, -0.75, 0.0]]


def test_no_repeat_ngram_looks_at_the_prompt_too():
    values = np.zeros((1, 5), dtype=np.float32)
    state = state_for(values, prompts=[[1, 2, 3, 1]])
    state.append(np.array([2]))  # ... 1 2 3 1 2: "2 3" and "1 2 3" would repeat
    bigram = SamplerChain("no_repeat_ngram=2,greedy").process(values.copy(), state)
    trigram = SamplerChain("no_repeat_ngram=3,greedy").process(values.copy(), state)
    assert np.flatnonzero(bigram[0] == -np.inf).tolist() == [3]
    assert np.flatnonzero(trigram[0] == -np.inf).tolist() == [3]
    state.append(np.array([4]))  # ... 1 2 4: nothing follows "4" yet, "2 4" is new
    assert np.isfinite(SamplerChain("no_repeat_ngram=2,greedy").process(values.copy(), state)).all()


def test_min_p_keeps_tokens_at_least_p_times_the_best():
    probs = np.array([[0.5, 0.3, 0.1, 0.06, 0.04]])
    values = np.log(probs).astype(np.float32)
    out = SamplerChain("min_p=0.15,greedy").process(values.copy(), state_for(values))
    assert np.isfinite(out[0]).tolist() == [True, True, True, False, False]


def test_finished_rows_get_pad_and_are_not_recorded():
    values = np.array([[0.0, 5.0, 0.0], [np.nan, 0.0, 0.0]], dtype=np.float32)
    state = state_for(values, prompts=[[0], [0]], pad_id=2)
    state.finish(np.array([False, True]))  # a finished row's logits are not even checked
    sampler = SamplerChain("repetition_penalty=1.2,top_p=0.5,sample")
    tokens = sampler.select(values.copy(), state)
    assert tokens.tolist() == [1, 2]
    state.append(tokens)
    assert state.generated(0).tolist() == [1] and state.generated(1).tolist() == []


def test_a_float32_contiguous_input_is_processed_in_place_others_are_copied():
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    state = state_for(values)
    sampler = SamplerChain("top_k=1,greedy")
    assert sampler.process(values, state) is values
    assert values.tolist() == [[-np.inf, -np.inf, 3.0]]
    wide = np.array([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]])  # float64, [batch, seq, vocab]
    last = wide[:, -1, :]
    assert sampler.select(last, state).tolist() == [0]
    assert wide[0, -1].tolist() == [3.0, 2.0, 1.0]


def test_the_sampler_chain_builds_from_a_chain_a_string_or_steps_and_shows_its_chain():
    text = "top_k=5,greedy"
    samplers = [
        SamplerChain(text),
        SamplerChain(DecodingChain.parse(text)),
        SamplerChain([TopK(k=5), Greedy()]),
    ]
    assert {str(d.chain) for d in samplers} == {text}
    assert repr(samplers[0]) == "SamplerChain('top_k=5,greedy')"


def test_beam_search_is_not_a_sampler_chain():
    with pytest.raises(DecodingError, match="use runtime.beam_search.BeamSearcher"):
        SamplerChain([BeamSearch(beams=2)])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((2, 7), np.float32), "logits have shape (2, 7), but the decoding state has"),
        (np.zeros((3, 6), np.float32), "expected (3, 7)"),
        (np.zeros((3, 4, 7), np.float32), "pass the last position's logits, logits[:, -1, :]"),
        (np.zeros((3, 7), np.int64), "logits must be floating point, got int64"),
        ([[0.0] * 7] * 3, "logits must be a numpy array, got list"),
    ],
)
def test_logits_that_do_not_fit_the_state_are_rejected(values, message):
    state = DecodingState([[1], [2], [3]], 7)
    with pytest.raises(DecodingError, match=re.escape(message)):
        SamplerChain("greedy").select(values, state)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, "the model's logits: row 1 contains NaN"),
        (np.inf, "the model's logits: row 1 contains +inf"),
        (-np.inf, "the model's logits: row 1 has no token left (every logit is -inf)"),
    ],
)
def test_broken_rows_are_named_before_sampling(bad, message):
    values = np.zeros((3, 4), np.float32)
    values[1, 2 if np.isnan(bad) or bad > 0 else slice(None)] = bad
    with pytest.raises(DecodingError, match=re.escape(message)):
        SamplerChain("sample").select(values, state_for(values))


def test_a_processor_that_removes_every_token_is_named():
    values = np.zeros((2, 2), np.float32)
    state = state_for(values, prompts=[[0, 1], [0, 0]])
    with pytest.raises(DecodingError, match=re.escape("after 'no_repeat_ngram=1': row 0 has no")):
        SamplerChain("no_repeat_ngram=1,top_p=0.5,sample").select(values, state)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: DecodingState([[1, 9]], 9),
            "prompt 0 has token id 9 outside the vocabulary [0, 9)",
        ),
        (lambda: DecodingState([[1], [-1]], 9), "prompt 1 has token id -1"),
        (lambda: DecodingState([[0.5]], 9), "prompt 0 must be a 1-D sequence of integer token ids"),
        (lambda: DecodingState([], 9), "at least one prompt"),
        (lambda: DecodingState([[1]], 0), "vocab_size must be >= 1"),
        (lambda: DecodingState([[1]], 9, pad_id=9), "pad_id 9 is outside the vocabulary"),
        (lambda: DecodingState([[1]], 9, seed=-1), "seed must be an integer >= 0 or None"),
        (lambda: DecodingState([[1]], 9).append(np.array([1, 2])), "shape (1,)"),
        (lambda: DecodingState([[1]], 9).append(np.array([1.0])), "integer token per row"),
        (lambda: DecodingState([[1]], 9).append(np.array([9])), "row 0: token id 9 is outside"),
    ],
)
def test_bad_state_input_is_rejected_with_the_row(call, message):
    with pytest.raises(DecodingError, match=re.escape(message)):
        call()


def test_empty_prompts_are_allowed():
    state = DecodingState([[], [3]], 5)
    state.append(np.array([1, 2]))
    assert state.sequence(0).tolist() == [1] and state.generated(1).tolist() == [2]


def test_one_sampler_chain_serves_concurrent_requests_like_serial_ones():
    sampler = SamplerChain("repetition_penalty=1.2,temperature=0.8,top_k=20,top_p=0.9,sample")
    rng = np.random.default_rng(5)
    steps = [rng.standard_normal((2, 500)).astype(np.float32) * 3 for _ in range(20)]

    def request(seed):
        state = DecodingState([[1, 2, 3], [4]], 500, seed=seed)
        tokens = []
        for values in steps:
            tokens.append(sampler.select(values.copy(), state).tolist())
            state.append(np.array(tokens[-1]))
        return tokens

    serial = [request(seed) for seed in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(request, range(8))) == serial


def test_the_decoding_modules_import_nothing_heavy():
    code = (
        "import sys, runtime.sampling, runtime.generation, runtime.beam_search, runtime.decoding\n"
        "print(' '.join(m for m in ('torch', 'onnx', 'jinja2', 'transformers')"
        " if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------------------
# Processors own their per-request state (llama.cpp's samplers: start, accept, reorder)


class _Recorded:
    """A processor state that records what it is told."""

    def __init__(self, request):
        self.prompts = [request.sequence(row).tolist() for row in range(request.batch_size)]
        self.accepted = []
        self.reorders = []

    def accept(self, rows, tokens):
        self.accepted.append((rows.tolist(), tokens.tolist()))

    def reorder(self, rows):
        self.reorders.append(rows.tolist())


class _Recorder:
    """A stateful processor in the new shape that changes nothing."""

    type = "recorder"

    def __init__(self):
        self.started = 0

    def start(self, request):
        self.started += 1
        return _Recorded(request)

    def process(self, logits, request, state):
        return logits


def test_a_processor_state_learns_exactly_the_accepted_tokens_of_unfinished_rows():
    recorder = _Recorder()
    chain = SamplerChain([recorder, Greedy()])
    state = chain.start([[1, 2], [3]], 5)
    assert recorder.started == 1
    own = state.state_of(recorder)
    assert own.prompts == [[1, 2], [3]] and own.accepted == []
    values = np.zeros((2, 5), np.float32)
    chain.select(values, state)  # processing alone accepts nothing
    assert own.accepted == []
    state.append(np.array([4, 0]))
    state.finish(np.array([False, True]))
    state.append(np.array([3, 2]))  # row 1 is finished: its token is not accepted
    assert own.accepted == [([0, 1], [4, 0]), ([0], [3])]
    chain.select(values, state)
    assert recorder.started == 1  # started once per request, not per step


def test_repetition_penalty_sees_exactly_the_accepted_tokens_per_row():
    chain = SamplerChain("repetition_penalty=2,greedy")
    state = chain.start([[0], [1]], 6)
    state.append(np.array([2, 3]))
    state.finish(np.array([False, True]))
    state.append(np.array([4, 5]))  # row 1's 5 is not accepted
    out = chain.process(np.ones((2, 6), np.float32), state)
    assert out.tolist() == [[0.5, 1, 0.5, 1, 0.5, 1], [1, 0.5, 1, 0.5, 1, 1]]


def test_two_requests_of_one_chain_have_independent_states():
    chain = SamplerChain("presence_penalty=1,no_repeat_ngram=2,greedy")
    first, second = chain.start([[1]], 4), chain.start([[1]], 4)
    for processor in chain.processors:
        assert first.state_of(processor) is not second.state_of(processor)
    first.append(np.array([2]))  # first: 1 2 (bans 2 after 1, penalizes 2)
    values = np.zeros((1, 4), np.float32)
    assert chain.process(values.copy(), first).tolist() == [[0, 0, -1, 0]]
    assert chain.process(values.copy(), second).tolist() == [[0, 0, 0, 0]]
    second.append(np.array([1]))  # second: 1 1, then "1 1" would repeat
    assert chain.process(values.copy(), second).tolist() == [[0, -np.inf, 0, 0]]
    assert chain.process(values.copy(), first).tolist() == [[0, 0, -1, 0]]


def test_start_gives_a_fresh_state_built_from_the_sequences_so_far():
    chain = SamplerChain("frequency_penalty=1,greedy")
    (processor,) = chain.processors
    state = chain.start([[0]], 3)
    state.append(np.array([1]))
    state.append(np.array([1]))
    again = processor.start(state)  # a new start: its own state, not the request's
    assert again is not state.state_of(processor)
    assert again.counts.tolist() == state.state_of(processor).counts.tolist() == [[0, 2, 0]]
    assert chain.start([[0]], 3).state_of(processor).counts.tolist() == [[0, 0, 0]]


def test_reorder_reorders_every_processor_state_like_the_rows():
    chain = SamplerChain(
        "repetition_penalty=2,presence_penalty=0.5,frequency_penalty=0.25,no_repeat_ngram=2,greedy"
    )
    state = chain.start([[0, 1], [2], [3, 3]], 6)
    for tokens in ([1, 4, 5], [0, 2, 3]):
        state.append(np.array(tokens))
    values = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32) + 3
    before = chain.process(values.copy(), state)
    rows = np.array([2, 0, 0])  # as beam search does: row 2 first, row 0 twice, row 1 gone
    state.reorder(rows)
    after = chain.process(values[rows].copy(), state)
    np.testing.assert_array_equal(after, before[rows])
    sequences = [state.sequence(i).tolist() for i in range(3)]
    assert sequences == [[3, 3, 5, 3], [0, 1, 1, 0], [0, 1, 1, 0]]
    # The two copies of row 0 now go their own ways.
    state.append(np.array([4, 4, 5]))
    out = chain.process(np.full((3, 6), 3.0, np.float32), state)
    assert out[1, 5] == 3.0 and out[2, 5] < 3.0 and out[2, 4] == 3.0 and out[1, 4] < 3.0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.array([0]), "reorder takes one integer row index per row, shape (2,)"),
        (np.array([0.0, 1.0]), "one integer row index per row"),
        (np.array([0, 2]), "reorder's row indices must be in [0, 2)"),
        (np.array([-1, 0]), "reorder's row indices must be in [0, 2)"),
    ],
)
def test_a_bad_reorder_is_refused(rows, message):
    state = SamplerChain("repetition_penalty=2,greedy").start([[1], [2]], 4)
    with pytest.raises(DecodingError, match=re.escape(message)):
        state.reorder(rows)


def test_a_start_that_returns_no_processor_state_is_named():
    class Broken(_Recorder):
        def start(self, request):
            return {"counts": 0}

    with pytest.raises(
        DecodingError, match=re.escape("start returned dict, not a processor state")
    ):
        SamplerChain([Broken(), Greedy()]).start([[1]], 3)
