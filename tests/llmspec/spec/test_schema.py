"""The checked-in JSON Schema is current and every example spec satisfies it."""

import json
from pathlib import Path

import jsonschema
import pytest

from llmspec.spec.loading import load_spec
from llmspec.spec.schema import json_schema_text
from llmspec.spec.yaml_safe import load_yaml

SPECS = Path(__file__).resolve().parents[3] / "specs"
EXAMPLES = sorted(SPECS.glob("*.yaml"))


def test_checked_in_schema_is_current():
    assert (SPECS / "llmspec.schema.json").read_text() == json_schema_text(), (
        "specs/llmspec.schema.json is stale: run `llmspec schema -o specs/llmspec.schema.json`"
    )


def test_there_are_examples_of_every_family_and_objective():
    specs = [load_spec(path) for path in EXAMPLES]
    assert {s.architecture for s in specs} == {"encoder-only", "decoder-only", "encoder-decoder"}
    assert {s.objective.type for s in specs} == {
        "causal-lm",
        "masked-lm",
        "span-corruption",
        "denoising",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_spec_points_editors_at_the_schema(path):
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=llmspec.schema.json"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_spec_satisfies_json_schema_and_pydantic(path):
    schema = json.loads((SPECS / "llmspec.schema.json").read_text())
    jsonschema.validate(load_yaml(path.read_text()).data, schema)
    load_spec(path)


def test_json_schema_rejects_what_pydantic_rejects_for_unknown_keys():
    schema = json.loads(json_schema_text())
    data = load_yaml((SPECS / "tiny-gpt.yaml").read_text()).data
    data["attention"]["headz"] = 4
    with pytest.raises(jsonschema.ValidationError, match="headz"):
        jsonschema.validate(data, schema)
