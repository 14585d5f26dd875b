"""Structured output: every output under a JSON schema validates (jsonschema), every output
under a regex matches it, a Lark grammar holds, bad grammars are refused by name.

The model is tiny-gpt with noisy weights: its tokens are bytes, so the schemas are bounded (a
byte budget computed with each schema) and every row must end with eos (the grammar complete)
well before ``max_new_tokens``.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from llmspec.cli import main
from runtime.decoding import DecodingError
from runtime.errors import RuntimeInputError
from runtime.sampling import SamplerChain
from runtime.structured import Constraint

PROMPTS = ["Data: ", "{"]
MAX_NEW = 120  # tiny-gpt's context is 128 tokens; the prompts take at most 6
BUDGET = 110  # the most bytes a generated schema's compact JSON may take


@pytest.fixture(scope="module")
def gpt(varied_artifact: Any) -> Any:
    return runtime.load(varied_artifact("tiny-gpt"), device="cpu")


# ----------------------------------------------------------------------------------------
# Bounded JSON schemas, each with the most bytes its compact JSON can take

# A string character takes at most 6 bytes: an escape such as \u0001.
CHAR = 6
names = st.text(string.ascii_lowercase, min_size=1, max_size=3)
scalars = st.one_of(
    st.just(({"type": "boolean"}, 5)),
    st.tuples(st.integers(-99, 99), st.integers(0, 60)).map(
        lambda t: (
            {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]},
            max(len(str(t[0])), len(str(t[0] + t[1]))),
        )
    ),
    st.integers(0, 4).map(lambda n: ({"type": "string", "maxLength": n}, 2 + CHAR * n)),
    st.lists(
        st.one_of(st.text(string.ascii_letters, max_size=4), st.integers(-9, 99), st.booleans()),
        min_size=1,
        max_size=3,
        unique_by=lambda v: (type(v), v),
    ).map(lambda values: ({"enum": values}, max(len(json.dumps(v)) for v in values))),
)


def _array(item: tuple[dict[str, Any], int], most: int) -> tuple[dict[str, Any], int]:
    schema, size = item
    return {"type": "array", "items": schema, "maxItems": most}, 2 + most * (size + 1)


def _object(fields: dict[str, tuple[dict[str, Any], int]]) -> tuple[dict[str, Any], int]:
    schema = {
        "type": "object",
        "properties": {name: value[0] for name, value in fields.items()},
        "required": sorted(fields),
        "additionalProperties": False,
    }
    return schema, 2 + sum(len(name) + 4 + value[1] for name, value in fields.items())


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(inner, st.integers(0, 3)).map(lambda t: _array(*t)),
        st.dictionaries(names, inner, min_size=1, max_size=3).map(_object),
    ),
    max_leaves=4,
)
schemas = st.dictionaries(names, values, min_size=1, max_size=3).map(_object)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(schemas.filter(lambda pair: pair[1] <= BUDGET), st.integers(0, 2**16))
def test_every_output_under_a_generated_schema_validates(gpt, pair, seed):
    schema, _ = pair
    constraint = gpt.constraint(json_schema=schema)
    result = gpt.generate(
        PROMPTS,
        max_new_tokens=MAX_NEW,
        chain="temperature=1.0,sample",
        seed=seed,
        constraint=constraint,
    )
    assert result.finish_reasons == ["eos", "eos"], (schema, result.texts)
    for text in result.texts:
        jsonschema.validate(json.loads(text), schema)


def test_greedy_and_streaming_outputs_validate_too(gpt):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    constraint = gpt.constraint(json_schema=json.dumps(schema))  # the JSON text works too
    greedy = gpt.generate(PROMPTS, max_new_tokens=MAX_NEW, chain="greedy", constraint=constraint)
    stream = gpt.generate(
        PROMPTS, max_new_tokens=MAX_NEW, chain="greedy", constraint=constraint, stream=True
    )
    streamed = ["", ""]
    for event in stream:
        streamed[event.row] += event.text
    assert streamed == greedy.texts == stream.result.texts
    assert greedy.finish_reasons == ["eos", "eos"]
    for text in greedy.texts:
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    "pattern",
    [
        r"[a-z]{1,8}@[a-z]{1,5}\.(com|org)",
        r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,2})?",
        r"(yes|no|maybe)",
        r"[0-9]{3}-[0-9]{4}",
    ],
)
def test_regex_outputs_fullmatch_the_regex(gpt, pattern):
    constraint = gpt.constraint(regex=pattern)
    result = gpt.generate(
        PROMPTS, max_new_tokens=40, chain="temperature=1.0,sample", seed=5, constraint=constraint
    )
    assert result.finish_reasons == ["eos", "eos"]
    for text in result.texts:
        assert re.fullmatch(pattern, text), (pattern, text)


def test_the_constraint_runs_before_the_chain(gpt):
    # top_k=1 before the mask would keep one token the regex mostly refuses: no token left
    constraint = gpt.constraint(regex=r"(ab|cd)+!")
    result = gpt.generate(
        PROMPTS, max_new_tokens=40, chain="top_k=1,sample", seed=0, constraint=constraint
    )
    for text, reason in zip(result.texts, result.finish_reasons, strict=True):
        assert reason == "length" or re.fullmatch(r"(ab|cd)+!", text)
    chain = SamplerChain("top_k=1,sample", constraint=constraint)
    assert chain.processors[0] is constraint


def test_an_encoder_decoder_model_takes_a_constraint(varied_artifact):
    t5 = runtime.load(varied_artifact("tiny-t5"), device="cpu")
    result = t5.generate(
        "translate", max_new_tokens=20, chain="greedy", constraint=t5.constraint(regex=r"[0-9]{4}")
    )
    assert result.finish_reasons == ["eos"] and re.fullmatch(r"[0-9]{4}", result.text)


LARK = """
start: greeting " " name "!" | "(" number ("," number)? ")"
greeting: "hello" | "hi"
name: /[A-Z][a-z]{1,6}/
number: /[0-9]{1,3}/
"""


def test_lark_grammar_outputs_are_in_its_language(gpt):
    constraint = gpt.constraint(grammar=LARK)
    for seed in range(3):
        result = gpt.generate(
            PROMPTS,
            max_new_tokens=30,
            chain="temperature=1.5,sample",
            seed=seed,
            constraint=constraint,
        )
        assert result.finish_reasons == ["eos", "eos"]
        for text in result.texts:
            assert re.fullmatch(r"(hello|hi) [A-Z][a-z]{1,6}!|\([0-9]{1,3}(,[0-9]{1,3})?\)", text)


def test_beam_reorders_move_each_rows_grammar_state(gpt):
    constraint = gpt.constraint(regex=r"(ab|cd)e")
    chain = SamplerChain("greedy", constraint=constraint)
    state = chain.start([[1], [1]], gpt.vocab_size, pad_id=gpt.pad_id)
    (a,), (c,), (d,) = gpt.encode("a"), gpt.encode("c"), gpt.encode("d")
    state.append(np.asarray([a, c]))
    state.reorder(np.asarray([1, 1]))  # both rows are now the row that began with "c"
    logits = np.zeros((2, gpt.vocab_size), dtype=np.float32)
    assert chain.select(logits, state).tolist() == [d, d]


def test_the_same_constraint_is_compiled_once_per_model(gpt):
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    first = gpt.constraint(json_schema=schema)
    assert gpt.constraint(json_schema=json.dumps(schema)) is first
    assert gpt.constraint(regex="a+") is not first


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"json_schema": {"type": "foo"}}, r"json_schema is invalid: .*foo"),
        ({"json_schema": "{not json"}, r"json_schema is not valid JSON"),
        ({"json_schema": ["a"]}, r"json_schema must be a JSON Schema object"),
        ({"json_schema": False}, r"json_schema is false, which no value satisfies"),
        ({"json_schema": {"not": {}}}, r"json_schema is invalid: .*not"),
        ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 1}}, r"Unsatisfiable"),
        ({"json_schema": {"type": "string", "pattern": "(("}}, r"json_schema is invalid"),
        ({"regex": "(("}, r"(?s)regex is invalid: .*unclosed group"),
        ({"regex": ""}, r"regex must be a regular expression"),
        ({"grammar": "start: missing_rule"}, r"(?s)grammar is invalid: .*missing_rule"),
        ({}, r"exactly one of json_schema, regex or grammar.*got none"),
        ({"regex": "a", "grammar": "start: x"}, r"exactly one .*got regex, grammar"),
    ],
)
def test_invalid_constraints_are_refused_naming_the_argument(gpt, arguments, message):
    with pytest.raises(RuntimeInputError, match=message):
        gpt.constraint(**arguments)


def test_constraints_are_refused_where_they_cannot_work(gpt, varied_artifact):
    constraint = gpt.constraint(regex="a+")
    with pytest.raises(RuntimeInputError, match="cannot be used with beam_search"):
        gpt.generate("x", max_new_tokens=3, chain="beam_search=2", constraint=constraint)
    with pytest.raises(RuntimeInputError, match="must be a runtime.structured.Constraint"):
        gpt.generate("x", max_new_tokens=3, constraint="a+")
    t5 = runtime.load(varied_artifact("tiny-t5"), device="cpu")
    with pytest.raises(RuntimeInputError, match="compiled for another model"):
        t5.generate("x", max_new_tokens=3, constraint=constraint)
    other = runtime.load(gpt.path, device="cpu")
    other.stop_ids = frozenset()  # a model without eos (nor another stop token)
    with pytest.raises(RuntimeInputError, match="no eos .* could never end"):
        other.constraint(regex="a+")
    with pytest.raises(DecodingError, match="is not a logits processor"):
        SamplerChain("greedy", constraint=object())
    assert isinstance(constraint, Constraint)


def test_a_regex_too_large_for_the_lexer_ends_in_our_error(gpt):
    # compiles (the lexer is built lazily), then fails on the first token: one line, our type
    constraint = gpt.constraint(regex="a{1000000}")
    with pytest.raises(DecodingError, match=r"row 0: .*too many expressions") as caught:
        gpt.generate("x", max_new_tokens=5, chain="greedy", constraint=constraint)
    assert "\n" not in str(caught.value)


def test_json_schema_true_allows_any_json(gpt):
    result = gpt.generate(
        "x", max_new_tokens=30, chain="greedy", constraint=gpt.constraint(json_schema=True)
    )
    assert result.finish_reasons == ["length"] or json.loads(result.text) is not None


def _generate(capsys: Any, *argv: str) -> tuple[int, str, str]:
    status = main(["generate", *argv, "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_json_schema_regex_and_grammar(gpt, tmp_path, capsys):
    path = str(gpt.path)
    schema = {"enum": ["red", "green", "blue"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "g.lark").write_text(LARK)
    common = ("--prompt", "Colour: ", "--max-new-tokens", "40", "--json")
    status, out, _ = _generate(
        capsys, path, *common, "--json-schema", str(tmp_path / "schema.json")
    )
    assert status == 0
    (row,) = json.loads(out)["results"]
    assert row["finish_reason"] == "eos" and json.loads(row["text"]) in schema["enum"]
    status, out, _ = _generate(capsys, path, *common, "--regex", "[0-9]{2}")
    assert status == 0 and re.fullmatch("[0-9]{2}", json.loads(out)["results"][0]["text"])
    status, out, _ = _generate(capsys, path, *common, "--grammar", str(tmp_path / "g.lark"))
    assert status == 0 and json.loads(out)["results"][0]["finish_reason"] == "eos"


def test_cli_bad_grammar_inputs_exit_one_naming_them(gpt, tmp_path, capsys):
    path = str(gpt.path)
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "foo.json").write_text('{"type": "foo"}')
    status, _, err = _generate(
        capsys, path, "--prompt", "x", "--json-schema", str(tmp_path / "bad.json")
    )
    assert status == 1 and "bad.json" in err
    status, _, err = _generate(
        capsys, path, "--prompt", "x", "--json-schema", str(tmp_path / "foo.json")
    )
    assert status == 1 and "json_schema is invalid" in err
    status, _, err = _generate(
        capsys, path, "--prompt", "x", "--json-schema", str(tmp_path / "none.json")
    )
    assert status == 1 and "none.json" in err
    status, _, err = _generate(capsys, path, "--prompt", "x", "--regex", "((")
    assert status == 1 and "regex is invalid" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", path, "--prompt", "x", "--regex", "a", "--grammar", "g.lark"])
    assert exit_info.value.code == 2
