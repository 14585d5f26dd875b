"""Stop tokens: a row ends at the first of generation.json's stop_token_ids (eos included), with
sampling chains and beam search alike, and the stop token stays out of its text; an artifact
written before stop_token_ids existed stops on eos alone; a bad list is refused on load."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime import artifact as fmt
from runtime.artifact import ArtifactError
from runtime.beam_search import BeamSearcher
from runtime.generation import GenerationConfigError, read_generation

PROMPTS = ["Hello world", "Hi", "The quick brown fox jumps"]


@pytest.fixture(scope="module")
def gpt(varied_artifact):
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


def _with_generation(path: Path, target: Path, **fields: Any) -> Path:
    """A copy of the artifact whose generation.json has ``fields`` set, its manifest entry
    updated so that the copy still verifies."""
    shutil.copytree(path, target)
    generation = json.loads((target / fmt.GENERATION).read_text())
    generation.update(fields)
    (target / fmt.GENERATION).write_text(json.dumps(generation))
    manifest = json.loads((target / fmt.MANIFEST).read_text())
    manifest["files"][fmt.GENERATION] = dataclasses.asdict(fmt.file_info(target / fmt.GENERATION))
    (target / fmt.MANIFEST).write_text(json.dumps(manifest))
    return target


def _first_new(tokens: list[int], avoid: set[int], start: int) -> int:
    """A token of ``tokens`` from ``start`` on that is in none of ``avoid``."""
    return next(t for t in tokens[start:] if t not in avoid)


def test_an_artifact_without_stop_token_ids_stops_on_eos_alone(gpt):
    assert "stop_token_ids" not in json.loads((gpt.path / fmt.GENERATION).read_text())
    assert gpt.stop_ids == {gpt.special_tokens["eos"]}


def test_each_row_stops_at_the_first_of_several_stop_tokens(gpt, tmp_path):
    greedy = gpt.generate(PROMPTS, max_new_tokens=24)
    eos = gpt.special_tokens["eos"]
    first = _first_new(greedy.tokens[0], {eos}, 4)
    second = _first_new(greedy.tokens[1], {eos, first}, 6)
    model = runtime.load(
        _with_generation(gpt.path, tmp_path / "stops", stop_token_ids=[eos, first, second]),
        device="cpu",
    )
    assert model.stop_ids == {eos, first, second}
    result = model.generate(PROMPTS, max_new_tokens=24)
    for row, tokens in enumerate(greedy.tokens):
        stops = [i for i, t in enumerate(tokens) if t in (eos, first, second)]
        if not stops:
            assert result.tokens[row] == tokens
            assert result.finish_reasons[row] == greedy.finish_reasons[row]
            continue
        end = stops[0] + 1
        assert result.tokens[row] == tokens[:end]  # the stop token is the last one
        assert result.finish_reasons[row] == "eos"
        assert result.texts[row] == model.decode(tokens[: end - 1])  # not in the text
    # both stop tokens ended a row: rows 0 and 1 stop at (or before) the chosen tokens
    assert result.tokens[0][-1] in (first, second, eos) and len(result.tokens[0]) < 24
    assert result.tokens[1][-1] in (first, second, eos) and len(result.tokens[1]) < 24
    assert first in (result.tokens[0][-1], result.tokens[1][-1]) or second in (
        result.tokens[0][-1],
        result.tokens[1][-1],
    )


@pytest.mark.parametrize("which", [0, 1])
def test_every_listed_stop_token_stops_a_row(gpt, tmp_path, which):
    greedy = gpt.generate(PROMPTS[0], max_new_tokens=24).tokens[0]
    eos = gpt.special_tokens["eos"]
    early = _first_new(greedy, {eos}, 3)
    late = _first_new(greedy, {eos, *greedy[: greedy.index(early) + 1]}, greedy.index(early) + 1)
    listed = [early, late] if which == 0 else [late, early]
    # Only the listed token at position ``which`` is a stop token (eos too): the row stops there.
    stop = listed[which]
    model = runtime.load(
        _with_generation(gpt.path, tmp_path / f"one{which}", stop_token_ids=[eos, stop]),
        device="cpu",
    )
    result = model.generate(PROMPTS[0], max_new_tokens=24)
    assert result.tokens[0] == greedy[: greedy.index(stop) + 1]
    assert result.finish_reasons == ["eos"]


def test_a_streamed_row_ends_at_a_stop_token_without_showing_it(gpt, tmp_path):
    greedy = gpt.generate(PROMPTS[0], max_new_tokens=24).tokens[0]
    eos = gpt.special_tokens["eos"]
    stop = _first_new(greedy, {eos}, 5)
    model = runtime.load(
        _with_generation(gpt.path, tmp_path / "stream", stop_token_ids=[eos, stop]),
        device="cpu",
    )
    stream = model.generate(PROMPTS[0], max_new_tokens=24, stream=True)
    events = list(stream)
    assert [e.token for e in events] == greedy[: greedy.index(stop) + 1]
    assert events[-1].finish_reason == "eos"
    assert "".join(e.text for e in events) == stream.result.texts[0]


def test_beam_search_finishes_hypotheses_on_any_stop_token():
    import numpy as np

    vocab = 6
    searcher = BeamSearcher(2, eos_id=5, pad_id=0, batch=1, stop_ids=(3,))
    logprobs = np.log(np.full((2, vocab), 0.01))
    logprobs[:, 3] = np.log(0.9)  # the stop token is by far the likeliest
    searcher.step(logprobs)
    assert searcher.best() == [[3]]
    plain = BeamSearcher(2, eos_id=5, pad_id=0, batch=1)
    plain.step(logprobs)
    assert plain.best()[0][-1] == 3 and not plain.done  # without it, 3 is a token like others


def test_beam_search_through_the_runtime_stops_on_a_listed_token(gpt, tmp_path):
    greedy = gpt.generate(PROMPTS[0], max_new_tokens=24, chain="beam_search").tokens[0]
    eos = gpt.special_tokens["eos"]
    stop = _first_new(greedy, {eos}, 4)
    model = runtime.load(
        _with_generation(gpt.path, tmp_path / "beam", stop_token_ids=[eos, stop]),
        device="cpu",
    )
    result = model.generate(PROMPTS[0], max_new_tokens=24, chain="beam_search")
    assert result.tokens[0][-1] == stop or result.tokens[0][-1] == eos
    assert result.finish_reasons == ["eos"]
    assert len(result.tokens[0]) <= greedy.index(stop) + 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "stop_token_ids must be a list of 1 to 1024 token ids, got 0 ids"),
        ("7", "stop_token_ids must be a list of 1 to 1024 token ids, got str"),
        ([1, True], "stop_token_ids[1] must be a token id in [0, 258), got True"),
        ([1, 258], "stop_token_ids[1] must be a token id in [0, 258), got 258"),
        ([-1], "stop_token_ids[0] must be a token id in [0, 258), got -1"),
        ([4, 4], "stop_token_ids lists a token twice"),
    ],
)
def test_a_bad_stop_token_list_is_refused_on_load_naming_the_file(gpt, tmp_path, value, message):
    broken = _with_generation(gpt.path, tmp_path / "bad", stop_token_ids=value)
    with pytest.raises(GenerationConfigError) as info:
        read_generation(broken / fmt.GENERATION, 128, 258)
    assert message in str(info.value) and fmt.GENERATION in str(info.value)
    with pytest.raises(ArtifactError, match="export the artifact again"):
        runtime.load(broken, device="cpu")
