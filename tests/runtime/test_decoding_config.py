"""Decoding chain configuration: one validated type for YAML, Python, JSON and the CLI."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.decoding import (
    BeamSearch,
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


def test_compact_form_parses_in_the_order_given():
    chain = DecodingChain.parse("temperature=0.7,top_k=50,top_p=0.9,sample")
    assert chain.steps == (Temperature(value=0.7), TopK(k=50), TopP(p=0.9), Sample())


def test_order_is_preserved_not_normalized():
    a = DecodingChain.parse("top_p=0.9,temperature=0.7,sample")
    b = DecodingChain.parse("temperature=0.7,top_p=0.9,sample")
    assert a.steps != b.steps


@pytest.mark.parametrize(
    "text",
    ["greedy", "temperature=0.5,sample", "top_k=3,min_p=0.1,typical=0.9,sample", "beam_search=4"],
)
def test_compact_form_round_trips_through_str_and_json(text):
    chain = DecodingChain.parse(text)
    assert DecodingChain.parse(str(chain)) == chain
    assert DecodingChain.from_json(chain.to_json()) == chain


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("temperature=-1,sample", "temperature must be >= 0"),
        ("temperature=nan,sample", "temperature must be a number"),
        ("top_p=0,sample", "top_p must be in (0, 1]"),
        ("top_p=1.5,sample", "top_p must be in (0, 1]"),
        ("top_k=-1,sample", "top_k must be an integer >= 0"),
        ("top_k=2.5,sample", "top_k must be a whole number, got 2.5"),
        ("top_k=many,sample", "'many' is not a number"),
        ("min_p=2,sample", "min_p must be in [0, 1]"),
        ("repetition_penalty=0,sample", "repetition_penalty must be > 0"),
        ("beam_search=0", "beams >= 1"),
        ("top_k=5", "no selector"),
        ("sample,top_k=5", "must be the last step"),
        ("temperature=0.5,beam_search=4", "give it alone"),
        ("", "the chain is empty"),
        ("topk=5,sample", "unknown decoding step 'topk'; known steps:"),
        ("greedy=1", "takes no value"),
    ],
)
def test_bad_chains_are_rejected_with_an_actionable_message(text, message):
    with pytest.raises(DecodingError, match=__import__("re").escape(message)):
        DecodingChain.parse(text)


def test_hyphenated_names_are_accepted_on_the_command_line():
    assert DecodingChain.parse("top-k=5,greedy").steps == (TopK(k=5), Greedy())


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e6))
def test_any_finite_non_negative_temperature_is_accepted(value):
    assert Temperature(value=value).value == value


@given(st.floats().filter(lambda v: not (0 < v <= 1)))
def test_top_p_outside_unit_interval_is_rejected(value):
    with pytest.raises(DecodingError):
        TopP(p=value)


def test_beam_search_defaults_are_sane():
    beam = BeamSearch()
    assert beam.beams >= 1 and math.isfinite(beam.length_penalty)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TopK(k=True), "top_k must be an integer >= 0 (0 disables it), got True"),
        (lambda: Typical(p=0), "typical must be in (0, 1] (1.0 disables it), got 0"),
        (lambda: MinP(p=-0.1), "min_p must be in [0, 1] (0 disables it), got -0.1"),
        (lambda: Temperature(value=math.inf), "temperature must be >= 0 and finite"),
        (lambda: RepetitionPenalty(penalty=-1), "1.0 disables it; 1.1-1.3 is typical"),
        (lambda: PresencePenalty(penalty=math.inf), "presence_penalty must be finite, got inf"),
        (lambda: FrequencyPenalty(penalty=math.nan), "frequency_penalty must be a number"),
        (lambda: NoRepeatNgram(n=-2), "no_repeat_ngram must be an integer >= 0 (0 disables it)"),
        (lambda: BeamSearch(length_penalty=math.inf), "length_penalty must be finite"),
    ],
)
def test_every_step_rejects_bad_parameters_saying_what_is_allowed(build, message):
    with pytest.raises(DecodingError, match=__import__("re").escape(message)):
        build()


def test_a_json_step_with_an_unknown_field_is_a_decoding_error():
    with pytest.raises(DecodingError, match="top_p: .*unexpected keyword argument 'q'"):
        DecodingChain.from_json([{"type": "top_p", "q": 0.5}, {"type": "greedy"}])
