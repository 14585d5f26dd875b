"""Logprobs through generate, streaming and beam search, checked against ONNX Runtime.

The reference runs the artifact's decoder graph in onnxruntime directly, on the whole sequence
at once (no cache, none of the runtime's code): each generated token's log-probability must be
``log_softmax`` of those logits, whatever the chain did to them, and a beam search's tokens
must get the log-probabilities of their own hypothesis after the reorders.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime
import pytest

import runtime
from llmspec.cli import main
from runtime.beam_search import BeamSearcher
from runtime.errors import RuntimeInputError

PROMPTS = [[5, 17, 33, 101, 7], [250, 3, 90]]


@pytest.fixture(scope="module")
def gpt(varied_artifact: Any) -> Any:
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


def _reference(model: Any, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """onnxruntime's log-probabilities at each new token's position: ``[len(tokens), vocab]``,
    from one run of decoder.onnx over the whole sequence with an empty cache."""
    session = onnxruntime.InferenceSession(
        str(model.path / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )
    ids = np.asarray([prompt + tokens], dtype=np.int64)
    feeds: dict[str, np.ndarray] = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
        "logits_to_keep": np.array(0, dtype=np.int64),  # every position
    }
    for graph_input in session.get_inputs():
        if graph_input.name.startswith("past_key_values."):
            # format 2: a buffer with room for the run, nothing cached yet
            _, heads, _, size = graph_input.shape
            feeds[graph_input.name] = np.zeros((1, heads, ids.shape[1], size), dtype=np.float32)
    logits = session.run(["logits"], feeds)[0][0].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return logprobs[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


def _check_against(reference: np.ndarray, entries: list[Any], tokens: list[int]) -> None:
    assert [entry.token for entry in entries] == tokens
    for step, entry in enumerate(entries):
        expected = reference[step]
        assert entry.logprob == pytest.approx(expected[entry.token], abs=1e-4)
        top_ids = [token for token, _ in entry.top]
        assert top_ids == np.argsort(-expected, kind="stable")[: len(entry.top)].tolist()
        assert [value for _, value in entry.top] == pytest.approx(expected[top_ids], abs=1e-4)


def test_logprobs_are_the_graphs_raw_log_softmax_not_the_chains(gpt):
    model = gpt
    # a chain that changes the logits a lot: the log-probabilities must not see it
    result = model.generate(
        PROMPTS, max_new_tokens=8, chain="temperature=3.0,top_k=4,sample", seed=3, logprobs=4
    )
    assert result.logprobs is not None
    for row, prompt in enumerate(PROMPTS):
        tokens = result.tokens[row]
        assert len(result.logprobs[row]) == len(tokens) > 0
        assert all(len(entry.top) == 4 for entry in result.logprobs[row])
        _check_against(_reference(model, prompt, tokens), result.logprobs[row], tokens)


def test_beam_search_logprobs_are_the_best_hypothesis_own_and_sum_to_its_score(gpt, monkeypatch):
    model = gpt
    found: list[Any] = []
    original = BeamSearcher.best_hypotheses

    def spy(self: BeamSearcher) -> Any:
        found.extend(original(self))
        return found[-self.batch :]

    monkeypatch.setattr(BeamSearcher, "best_hypotheses", spy)
    result = model.generate(
        PROMPTS,
        max_new_tokens=10,
        chain=[{"type": "beam_search", "beams": 3, "length_penalty": 0.7}],
        logprobs=2,
    )
    assert result.logprobs is not None and len(found) == len(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        tokens, entries, best = result.tokens[row], result.logprobs[row], found[row]
        assert best.tokens == tokens
        summed = sum(entry.logprob for entry in entries)
        assert summed == pytest.approx(best.logprob, abs=1e-9)
        assert best.score == pytest.approx(best.logprob / len(tokens) ** 0.7, abs=1e-9)
        _check_against(_reference(model, prompt, tokens), entries, tokens)
    # the beams did reorder (a search that only ever kept beam 0 would not test the tracking)
    assert any(origin % 3 for hypothesis in found for origin in hypothesis.rows[1:])


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-t5"])
def test_greedy_picks_the_first_of_the_top_alternatives(varied_artifact, name):
    model = runtime.load(varied_artifact(name), device="cpu")
    result = model.generate(["Hello", "The cat"], max_new_tokens=6, chain="greedy", logprobs=3)
    assert result.logprobs is not None
    for row, entries in enumerate(result.logprobs):
        assert [entry.token for entry in entries] == result.tokens[row]
        for entry in entries:
            assert entry.top[0] == (entry.token, entry.logprob)
            values = [value for _, value in entry.top]
            assert values == sorted(values, reverse=True) and len(values) == 3
            assert all(value <= 0 for value in values)


def test_stream_events_carry_the_same_logprobs_as_the_result(gpt):
    options: dict[str, Any] = dict(
        max_new_tokens=7, chain="temperature=1.3,top_p=0.95,sample", seed=11, logprobs=2
    )
    whole = gpt.generate(["Once", "A long time ago"], **options)
    stream = gpt.generate(["Once", "A long time ago"], stream=True, **options)
    per_row: dict[int, list[Any]] = {0: [], 1: []}
    for event in stream:
        assert event.logprob is not None and event.logprob.token == event.token
        per_row[event.row].append(event.logprob)
    assert whole.logprobs is not None
    assert [per_row[0], per_row[1]] == whole.logprobs == stream.result.logprobs


def test_no_logprobs_unless_asked_and_json_has_them_when_asked(gpt):
    plain = gpt.generate("Hi", max_new_tokens=3)
    assert plain.logprobs is None and "logprobs" not in plain.to_json()["results"][0]
    assert all(event.logprob is None for event in gpt.generate("Hi", 3, stream=True))
    asked = gpt.generate("Hi", max_new_tokens=3, logprobs=0).to_json()["results"][0]
    assert [entry["token"] for entry in asked["logprobs"]] == asked["tokens"]
    assert all(entry["top"] == [] and entry["logprob"] <= 0 for entry in asked["logprobs"])
    json.dumps(asked)


@pytest.mark.parametrize("bad", [21, -1, 2.0, True, "3"])
def test_logprobs_out_of_range_or_of_another_type_is_refused_by_name(gpt, bad):
    with pytest.raises(RuntimeInputError, match=r"logprobs must be None or a whole number .* 20"):
        gpt.generate("Hi", max_new_tokens=2, logprobs=bad)


def _generate(capsys: Any, *argv: str) -> tuple[int, str, str]:
    status = main(["generate", *argv, "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_logprobs_in_json_and_readable_output(gpt, capsys):
    path = str(gpt.path)
    status, out, _ = _generate(
        capsys, path, "--prompt", "Hi", "--max-new-tokens", "3", "--logprobs", "2", "--json"
    )
    assert status == 0
    result = json.loads(out)["results"][0]
    assert len(result["logprobs"]) == len(result["tokens"]) == 3
    assert all(len(entry["top"]) == 2 for entry in result["logprobs"])
    status, out, _ = _generate(
        capsys, path, "--prompt", "Hi", "--max-new-tokens", "3", "--logprobs", "1"
    )
    assert status == 0 and out.count("top: ") == 3
    status, _, err = _generate(capsys, path, "--prompt", "Hi", "--logprobs", "21")
    assert status == 1 and "logprobs must be None or a whole number" in err
