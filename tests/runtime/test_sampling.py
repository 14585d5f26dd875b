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
from runtime.sampling import Decoder, DecodingState, softmax


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
    decoder, state = Decoder(chain), state_for(values, seed=1234)
    counts = np.zeros(vocab)
    for _ in range(steps):
        tokens = decoder.select(values.copy(), state)
        counts += np.bincount(tokens, minlength=vocab)
    assert counts[expected == 0].sum() == 0
    support = expected > 0
    assert chi_square(counts[support], expected[support]) < critical


def test_temperature_zero_keeps_only_the_first_best_token():
    values = np.array([[1.0, 3.0, 3.0, -2.0]], dtype=np.float32)
    out = Decoder("temperature=0,sample").process(values.copy(), state_for(values))
    assert out.tolist() == [[-np.inf, 3.0, -np.inf, -np.inf]]


def test_a_tiny_temperature_is_greedy_without_overflow():
    values = np.array([[1.0, 3.0, 2.999, -2.0]], dtype=np.float32)
    out = Decoder("temperature=1e-44,sample").process(values.copy(), state_for(values))
    assert out.tolist() == [[-np.inf, 0.0, -np.inf, -np.inf]]


def test_top_k_breaks_ties_at_the_kth_place_by_lowest_id():
    values = np.array([[0.0, 2.0, 1.0, 2.0, 1.0, 1.0]], dtype=np.float32)
    out = Decoder("top_k=3,greedy").process(values.copy(), state_for(values))
    assert np.isfinite(out[0]).tolist() == [False, True, True, True, False, False]


def test_repetition_penalty_is_ctrls_divide_positive_multiply_negative():
    values = np.array([[2.0, -2.0, 2.0, -2.0, 0.0]], dtype=np.float32)
    state = state_for(values, prompts=[[0, 1, 4]])
    out = Decoder("repetition_penalty=2,greedy").process(values.copy(), state)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 0.0]]


def test_presence_and_frequency_penalties_use_generated_counts_not_the_prompt():
    values = np.zeros((1, 4), dtype=np.float32)
    state = state_for(values, prompts=[[3, 3, 3]])
    for token in (1, 1, 2):
        state.append(np.array([token]))
    chain = "presence_penalty=0.5,frequency_penalty=0.25,greedy"
    out = Decoder(chain).process(values.copy(), state)
    assert out.tolist() == [[0.0, -1.0, -0.75, 0.0]]


def test_no_repeat_ngram_looks_at_the_prompt_too():
    values = np.zeros((1, 5), dtype=np.float32)
    state = state_for(values, prompts=[[1, 2, 3, 1]])
    state.append(np.array([2]))  # ... 1 2 3 1 2: "2 3" and "1 2 3" would repeat
    bigram = Decoder("no_repeat_ngram=2,greedy").process(values.copy(), state)
    trigram = Decoder("no_repeat_ngram=3,greedy").process(values.copy(), state)
    assert np.flatnonzero(bigram[0] == -np.inf).tolist() == [3]
    assert np.flatnonzero(trigram[0] == -np.inf).tolist() == [3]
    state.append(np.array([4]))  # ... 1 2 4: nothing follows "4" yet, "2 4" is new
    assert np.isfinite(Decoder("no_repeat_ngram=2,greedy").process(values.copy(), state)).all()


def test_min_p_keeps_tokens_at_least_p_times_the_best():
    probs = np.array([[0.5, 0.3, 0.1, 0.06, 0.04]])
    values = np.log(probs).astype(np.float32)
    out = Decoder("min_p=0.15,greedy").process(values.copy(), state_for(values))
    assert np.isfinite(out[0]).tolist() == [True, True, True, False, False]


def test_finished_rows_get_pad_and_are_not_recorded():
    values = np.array([[0.0, 5.0, 0.0], [np.nan, 0.0, 0.0]], dtype=np.float32)
    state = state_for(values, prompts=[[0], [0]], pad_id=2)
    state.finish(np.array([False, True]))  # a finished row's logits are not even checked
    decoder = Decoder("repetition_penalty=1.2,top_p=0.5,sample")
    tokens = decoder.select(values.copy(), state)
    assert tokens.tolist() == [1, 2]
    state.append(tokens)
    assert state.generated(0).tolist() == [1] and state.generated(1).tolist() == []


def test_a_float32_contiguous_input_is_processed_in_place_others_are_copied():
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    state = state_for(values)
    decoder = Decoder("top_k=1,greedy")
    assert decoder.process(values, state) is values
    assert values.tolist() == [[-np.inf, -np.inf, 3.0]]
    wide = np.array([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]])  # float64, [batch, seq, vocab]
    last = wide[:, -1, :]
    assert decoder.select(last, state).tolist() == [0]
    assert wide[0, -1].tolist() == [3.0, 2.0, 1.0]


def test_the_decoder_builds_from_a_chain_a_string_or_steps_and_shows_its_chain():
    text = "top_k=5,greedy"
    decoders = [Decoder(text), Decoder(DecodingChain.parse(text)), Decoder([TopK(k=5), Greedy()])]
    assert {str(d.chain) for d in decoders} == {text}
    assert repr(decoders[0]) == "Decoder('top_k=5,greedy')"


def test_beam_search_is_not_a_decoder():
    with pytest.raises(DecodingError, match="use runtime.beam_search.BeamSearcher"):
        Decoder([BeamSearch(beams=2)])


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
        Decoder("greedy").select(values, state)


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
        Decoder("sample").select(values, state_for(values))


def test_a_processor_that_removes_every_token_is_named():
    values = np.zeros((2, 2), np.float32)
    state = state_for(values, prompts=[[0, 1], [0, 0]])
    with pytest.raises(DecodingError, match=re.escape("after 'no_repeat_ngram=1': row 0 has no")):
        Decoder("no_repeat_ngram=1,top_p=0.5,sample").select(values, state)


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


def test_one_decoder_serves_concurrent_requests_like_serial_ones():
    decoder = Decoder("repetition_penalty=1.2,temperature=0.8,top_k=20,top_p=0.9,sample")
    rng = np.random.default_rng(5)
    steps = [rng.standard_normal((2, 500)).astype(np.float32) * 3 for _ in range(20)]

    def request(seed):
        state = DecodingState([[1, 2, 3], [4]], 500, seed=seed)
        tokens = []
        for values in steps:
            tokens.append(decoder.select(values.copy(), state).tolist())
            state.append(np.array(tokens[-1]))
        return tokens

    serial = [request(seed) for seed in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(request, range(8))) == serial


def test_the_decoding_modules_import_nothing_heavy():
    code = (
        "import sys, runtime.sampling, runtime.beam_search, runtime.decoding\n"
        "print(' '.join(m for m in ('torch', 'onnx', 'jinja2', 'transformers')"
        " if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == ""
