"""Beam search bookkeeping: exhaustive beams find the brute-force optimum; smaller beams follow
Hugging Face's BeamSearchScorer step by step; the cache-reordering contract holds."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.beam_search import BeamSearcher
from runtime.decoding import BeamSearch, DecodingError
from runtime.logits import log_softmax

EOS = 0


def toy_model(seed: int, vocab: int) -> np.ndarray:
    """A second-order "language model": log P(next | previous two tokens), a fixed table."""
    rng = np.random.default_rng(seed)
    return log_softmax(rng.normal(size=(vocab, vocab, vocab)) * 2.0)


def run_beam_search(table, prompts, searcher, max_new_tokens):
    """The generation loop's side of the contract: the "KV cache" of each model row is its
    last two tokens, reordered by the rows ``step`` returns, then fed the new tokens."""
    cache = np.array([p[-2:] for p in prompts for _ in range(searcher.beams)])
    for _ in range(max_new_tokens):
        rows, tokens = searcher.step(table[cache[:, 0], cache[:, 1]])
        cache = np.stack([cache[rows, 1], tokens], axis=1)
        if searcher.done:
            break
    return searcher.best()


def brute_force_best(table, prompt, length_penalty, max_new_tokens):
    """The best output over every sequence that ends in eos or at max_new_tokens."""
    vocab = table.shape[-1]
    best, best_tokens = -np.inf, None
    for length in range(1, max_new_tokens + 1):
        for tokens in itertools.product(range(vocab), repeat=length):
            if EOS in tokens[:-1] or (length < max_new_tokens and tokens[-1] != EOS):
                continue
            context, total = list(prompt), 0.0
            for token in tokens:
                total += table[context[-2], context[-1], token]
                context.append(token)
            score = total / length**length_penalty
            if score > best:
                best, best_tokens = score, list(tokens)
    return best_tokens


def reference_beam_search(table, prompt, beams, length_penalty, early_stopping, max_new_tokens):
    """HF's BeamSearchScorer, written out plainly for one prompt (lengths count the eos)."""
    vocab = table.shape[-1]
    live = [(0.0, [])]  # (summed log-prob, generated tokens)
    finished: list[tuple[float, list[int]]] = []
    for length in range(1, max_new_tokens + 1):
        candidates = []
        for beam, (score, tokens) in enumerate(live):
            context = list(prompt) + tokens
            for token in range(vocab):
                total = score + table[context[-2], context[-1], token]
                candidates.append((total, beam, token))
        candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
        next_live = []
        for rank, (total, beam, token) in enumerate(candidates[: 2 * beams]):
            if token == EOS:
                if rank < beams:
                    finished.append((total / length**length_penalty, [*live[beam][1], token]))
                    finished = sorted(finished, key=lambda f: -f[0])[:beams]
                continue
            next_live.append((total, [*live[beam][1], token]))
            if len(next_live) == beams:
                break
        live = next_live
        if len(finished) == beams and (
            early_stopping or finished[-1][0] >= live[0][0] / length**length_penalty
        ):
            return max(finished, key=lambda f: f[0])[1]
    finished += [(s / max_new_tokens**length_penalty, t) for s, t in live]
    return max(finished, key=lambda f: f[0])[1]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_beams_find_the_brute_force_optimum(seed, length_penalty):
    vocab, depth = 3, 4
    table = toy_model(seed, vocab)
    prompts = [(1, 2), (2, 1)]
    searcher = BeamSearcher(vocab**depth, length_penalty, False, EOS, 0, batch=len(prompts))
    got = run_beam_search(table, prompts, searcher, depth)
    assert got == [brute_force_best(table, p, length_penalty, depth) for p in prompts]


@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 6),
    beams=st.integers(1, 4),
    length_penalty=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    early_stopping=st.booleans(),
    max_new_tokens=st.integers(1, 6),
)
def test_beam_search_follows_the_reference_scorer(
    seed, vocab, beams, length_penalty, early_stopping, max_new_tokens
):
    table = toy_model(seed, vocab)
    prompts = [(1, 1), (vocab - 1, 0), (0, 1)]
    searcher = BeamSearcher(beams, length_penalty, early_stopping, EOS, 0, batch=len(prompts))
    got = run_beam_search(table, prompts, searcher, max_new_tokens)
    expected = [
        reference_beam_search(table, p, beams, length_penalty, early_stopping, max_new_tokens)
        for p in prompts
    ]
    assert got == expected


@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(2, 6), max_new_tokens=st.integers(1, 8))
def test_one_beam_with_early_stopping_is_greedy_until_eos(seed, vocab, max_new_tokens):
    table = toy_model(seed, vocab)
    searcher = BeamSearcher(1, 1.0, True, EOS, 0)
    context, greedy = [1, 1], []
    while len(greedy) < max_new_tokens and EOS not in greedy:
        greedy.append(int(np.argmax(table[context[-2], context[-1]])))
        context.append(greedy[-1])
    assert run_beam_search(table, [(1, 1)], searcher, max_new_tokens) == [greedy]


def test_early_stopping_stops_a_row_once_it_has_beams_finished_hypotheses():
    vocab, beams = 5, 2
    table = np.full((vocab, vocab, vocab), np.log(0.01))
    table[:, :, EOS] = np.log(0.96)  # eos is by far the likeliest next token everywhere
    searcher = BeamSearcher(beams, 1.0, True, EOS, pad_id=3)
    rows, tokens = searcher.step(table[[1] * beams, [2] * beams])
    # The top-2 candidates of beam 0 are eos then a token: one finished hypothesis, not done.
    assert not searcher.done
    rows, tokens = searcher.step(table[[2] * beams, tokens])
    assert searcher.done
    assert searcher.best() == [[EOS]]
    # A done row keeps its rows in place and is fed pad.
    rows, tokens = searcher.step(table[[2] * beams, tokens])
    assert rows.tolist() == [0, 1] and tokens.tolist() == [3, 3]


def test_a_done_batch_row_does_not_disturb_the_others():
    table = toy_model(7, 4)
    prompts = [(1, 2), (2, 3)]
    together = run_beam_search(table, prompts, BeamSearcher(2, 1.0, True, EOS, 0, batch=2), 6)
    alone = [run_beam_search(table, [p], BeamSearcher(2, 1.0, True, EOS, 0), 6)[0] for p in prompts]
    assert together == alone


def test_without_eos_every_hypothesis_runs_to_the_end():
    table = toy_model(3, 4)
    best = run_beam_search(table, [(1, 2)], BeamSearcher(3, 1.0, False, None, 0), 5)
    assert len(best[0]) == 5


def test_best_before_any_step_is_empty_and_best_does_not_change_the_search():
    searcher = BeamSearcher(2, eos_id=EOS)
    assert searcher.best() == [[]]
    table = toy_model(0, 4)
    searcher.step(table[[1, 1], [2, 2]])
    assert searcher.best() == searcher.best()


def test_from_config_uses_the_chain_step():
    searcher = BeamSearcher.from_config(
        BeamSearch(beams=3, length_penalty=0.5, early_stopping=True), eos_id=2, pad_id=0, batch=4
    )
    assert (searcher.beams, searcher.length_penalty, searcher.early_stopping) == (3, 0.5, True)
    assert searcher.batch == 4 and searcher.eos_id == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beams": 0}, "beams >= 1"),
        ({"beams": 2, "length_penalty": float("nan")}, "length_penalty must be a number"),
        ({"beams": 2, "batch": 0}, "batch >= 1"),
        ({"beams": 2, "eos_id": -1}, "eos_id must be a token id"),
    ],
)
def test_bad_beam_parameters_are_rejected_actionably(kwargs, message):
    with pytest.raises(DecodingError, match=message):
        BeamSearcher(**kwargs)


def test_logprobs_must_have_one_row_per_beam_and_no_nan():
    searcher = BeamSearcher(2, batch=2)
    with pytest.raises(DecodingError, match=r"\[batch \* beams, vocab\] = \[4, V\]"):
        searcher.step(np.zeros((2, 5)))
    logprobs = np.zeros((4, 5))
    logprobs[3, 1] = np.nan
    with pytest.raises(DecodingError, match="row 3 contain NaN"):
        searcher.step(logprobs)
