"""Bad requests get clear errors before any graph runs."""

import numpy as np
import pytest

import runtime
from runtime import artifact as fmt
from runtime.session import Graph


@pytest.fixture(scope="module")
def gpt(varied_artifact):
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


@pytest.fixture(scope="module")
def t5(varied_artifact):
    return runtime.load(varied_artifact("tiny-t5"), device="cpu")


@pytest.fixture
def no_runs(monkeypatch):
    def refuse(self, inputs, cache, host):
        raise AssertionError("a graph ran for a request that should have been refused")

    monkeypatch.setattr(Graph, "run", refuse)


BAD = [
    ({"prompts": [5, 258]}, "token id 258 at position 1 is outside the vocabulary \\[0, 258\\)"),
    ({"prompts": [[1, 2], [-1]]}, "prompt 1: token id -1 at position 0 is outside"),
    ({"prompts": ["Hi", ""]}, "prompt 1 is empty"),
    ({"prompts": []}, "no prompts given"),
    ({"prompts": [[1, 2], []]}, "prompt 1 is empty"),
    ({"prompts": [[1.5, 2.0]]}, "prompt 0 must be a string or a list of integer token ids"),
    ({"prompts": b"bytes"}, "prompts must be a string or token ids, not bytes"),
    (
        {"prompts": "x" * 120, "max_new_tokens": 9},
        "prompt 0 has 120 tokens and max_new_tokens is 9",
    ),
    ({"prompts": "Hi", "max_new_tokens": -1}, "max_new_tokens must be >= 0, got -1"),
    ({"prompts": "Hi", "max_new_tokens": 2.0}, "max_new_tokens must be a whole number"),
    ({"prompts": "Hi", "seed": -3}, "seed must be a whole number >= 0"),
    ({"prompts": "Hi", "stop": ["ok", ""]}, "stop strings must be non-empty strings"),
    ({"prompts": "Hi", "chain": "beam_search=2", "stream": True}, "beam_search cannot stream"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD)
def test_bad_requests_are_refused_before_running(gpt, no_runs, arguments, message):
    with pytest.raises(runtime.RuntimeInputError, match=message):
        gpt.generate(**arguments)


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("temperature=-1,sample", "temperature must be >= 0"),
        ("temperature=nan,sample", "temperature must be"),
        ("top_p=0,sample", "top_p must be in \\(0, 1\\]"),
        ("top_p=1.5,sample", "top_p must be in \\(0, 1\\]"),
        ("top_k=-2,sample", "top_k must be an integer >= 0"),
        ("top_k=5", "no selector"),
        ("bogus=1,sample", "unknown decoding step 'bogus'; known steps: beam_search"),
    ],
)
def test_bad_decoding_chains_are_refused_before_running(gpt, no_runs, chain, message):
    with pytest.raises(runtime.DecodingError, match=message):
        gpt.generate("Hi", chain=chain)


def test_encoder_decoder_limits(t5, no_runs):
    with pytest.raises(runtime.RuntimeInputError, match="beyond the encoder's context window"):
        t5.generate("x" * 200)
    with pytest.raises(runtime.RuntimeInputError, match="beyond the decoder's context window"):
        t5.generate("Hi", max_new_tokens=129)


def test_prompt_plus_new_tokens_may_fill_the_context_window_exactly(gpt):
    result = gpt.generate("x" * 120, max_new_tokens=8)
    assert len(result.tokens[0]) <= 8


def test_nan_logits_are_an_error_naming_the_row(gpt, monkeypatch):
    original = Graph.run

    def poisoned(self, inputs, cache, host, buffers=None, **kept):
        out = original(self, inputs, cache, host, buffers, **kept)
        out[fmt.LOGITS] = out[fmt.LOGITS].copy()
        out[fmt.LOGITS][1, -1, 3] = np.nan
        return out

    monkeypatch.setattr(Graph, "run", poisoned)
    with pytest.raises(runtime.DecodingError, match="row 1 contains NaN"):
        gpt.generate(["Hello", "Hi"], max_new_tokens=4)


def test_all_masked_logits_are_an_error(gpt, monkeypatch):
    original = Graph.run

    def masked(self, inputs, cache, host, buffers=None, **kept):
        out = original(self, inputs, cache, host, buffers, **kept)
        out[fmt.LOGITS] = np.full_like(out[fmt.LOGITS], -np.inf)
        return out

    monkeypatch.setattr(Graph, "run", masked)
    with pytest.raises(runtime.DecodingError, match="row 0 has no token left"):
        gpt.generate("Hello", max_new_tokens=4)
