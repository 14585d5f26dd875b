"""The rules of the block, norm, head and stop-token knobs: each misuse is one SpecError that
names the field and the fix; the knobs off leave a spec's normalized form and sha256 as they
were before the knobs existed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmspec import SpecError, load_spec
from llmspec.spec.loading import dump_spec, spec_sha256

SPECS = Path(__file__).parents[3] / "specs"
OBJECTIVES = {
    "decoder-only": "causal-lm",
    "encoder-only": "masked-lm",
    "encoder-decoder": "denoising",
}
BASE: dict[str, Any] = {
    "name": "knobs",
    "vocabulary": {
        "size": 262,
        "special_tokens": {"pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"},
    },
    "context_length": 32,
    "d_model": 32,
    "layers": 2,
    "attention": {"heads": 4},
    "feed_forward": {"d_ff": 48},
    "positions": {"type": "learned", "max_positions": 32},
}


def spec_dict(family: str, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(architecture=family, objective={"type": OBJECTIVES[family]}, **changes)
    return data


def _problems(family: str, **changes: Any) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(yaml.safe_dump(spec_dict(family, **changes)))
    return str(info.value)


def _loads(family: str, **changes: Any) -> Any:
    return load_spec(yaml.safe_dump(spec_dict(family, **changes)))


@pytest.mark.parametrize(
    ("family", "changes", "expected"),
    [
        (
            "decoder-only",
            {"norm": {"position": "post", "sandwich": True}},
            "norm.sandwich: sandwich norms wrap the sublayers of a pre-norm block",
        ),
        (
            "decoder-only",
            {"norm": {"type": "rmsnorm", "bias": True}},
            "norm.bias: RMSNorm has no shift",
        ),
        (
            "decoder-only",
            {"norm": {"type": "layernorm", "unit_offset": True}},
            "norm.unit_offset: unit_offset (scale by 1 + weight, Gemma's RMSNorm) is for type: "
            "rmsnorm",
        ),
        (
            "decoder-only",
            {"norm": {"position": "post"}, "block": {"parallel": "separate-norms"}},
            "block.parallel: a parallel block (separate-norms) adds attention and feed-forward "
            "of the same normalized input to the residual: it needs norm.position: pre",
        ),
        (
            "encoder-decoder",
            {"block": {"parallel": "shared-norm"}},
            "block.parallel: parallel blocks are not supported in encoder-decoder models",
        ),
        (
            "decoder-only",
            {"norm": {"sandwich": True}, "block": {"parallel": "shared-norm"}},
            "block.parallel: sandwich norms with a parallel block are not supported",
        ),
        ("decoder-only", {"block": {"parallel": "both"}}, "block.parallel"),
        ("decoder-only", {"head": {"softcap": 0.0}}, "head.softcap"),
        ("decoder-only", {"head": {"softcap": "30"}}, "head.softcap"),
    ],
)
def test_a_misused_knob_is_refused_naming_its_field(
    family: str, changes: dict[str, Any], expected: str
) -> None:
    assert expected in _problems(family, **changes)


def test_every_knob_that_fits_loads() -> None:
    spec = _loads(
        "decoder-only",
        norm={"type": "rmsnorm", "sandwich": True, "unit_offset": True},
        head={"softcap": 30.0},
    )
    assert spec.norm.sandwich and spec.norm.unit_offset and spec.head.softcap == 30.0
    spec = _loads(
        "encoder-only", block={"parallel": "shared-norm"}, bias=False, norm={"bias": True}
    )
    assert spec.block.parallel == "shared-norm" and spec.norm.bias is True


# The specs written before these knobs existed (their golden sources are pinned).
EARLIER_SPECS = (
    *("bart-base", "bert-base", "gpt2-small", "llama-1b", "t5-small"),
    *("tiny-bart", "tiny-decoder", "tiny-encoder", "tiny-gpt", "tiny-t5"),
)


@pytest.mark.parametrize("name", EARLIER_SPECS)
def test_knobs_left_off_are_not_in_the_normalized_spec(name: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    dumped = yaml.safe_load(dump_spec(spec))
    assert "block" not in dumped
    assert not {"sandwich", "bias", "unit_offset"} & set(dumped["norm"])
    assert "softcap" not in dumped["head"]
    assert "stop_tokens" not in (dumped.get("generation") or {})


def test_a_knob_set_to_its_default_keeps_the_sha256_and_one_set_changes_it() -> None:
    plain = _loads("decoder-only")
    assert spec_sha256(_loads("decoder-only", block={"parallel": None})) == spec_sha256(plain)
    assert spec_sha256(_loads("decoder-only", norm={"sandwich": False})) == spec_sha256(plain)
    on = _loads("decoder-only", norm={"sandwich": True})
    assert spec_sha256(on) != spec_sha256(plain)
    assert yaml.safe_load(dump_spec(on))["norm"]["sandwich"] is True
    assert load_spec(dump_spec(on)) == on  # the dump loads back to the same spec


# ----------------------------------------------------------------------------------------
# generation.stop_tokens


def _with_stops(stops: Any, **changes: Any) -> dict[str, Any]:
    generation = {"max_new_tokens": 16, "stop_tokens": stops}
    return spec_dict("decoder-only", generation=generation, **changes)


def test_stop_tokens_of_the_built_in_tokenizer_are_its_special_tokens() -> None:
    spec = load_spec(yaml.safe_dump(_with_stops(["<unk>", "<mask>"])))
    assert spec.generation is not None and spec.generation.stop_tokens == ["<unk>", "<mask>"]
    with pytest.raises(SpecError, match=r"generation\.stop_tokens\[0\]: '<\|eot_id\|>' is not a "):
        load_spec(yaml.safe_dump(_with_stops(["<|eot_id|>"])))


def test_a_tokenizer_file_may_name_any_stop_token() -> None:
    data = _with_stops(["<|eot_id|>", "<|eom_id|>"])
    data["vocabulary"]["tokenizer"] = {"type": "file", "path": "tokenizer.json"}
    spec = load_spec(yaml.safe_dump(data))
    assert spec.generation is not None and len(spec.generation.stop_tokens) == 2


@pytest.mark.parametrize(
    ("stops", "expected"),
    [
        (["</s>"], "generation.stop_tokens[0]: '</s>' is the eos token, which always stops"),
        (["<unk>", "<unk>"], "generation.stop_tokens[1]: '<unk>' is listed twice"),
        ([7], "generation.stop_tokens[0]: expected text, got 7"),
        ([""], "generation.stop_tokens[0]: String should have at least 1 character"),
        ("<unk>", "generation.stop_tokens"),
    ],
)
def test_bad_stop_tokens_are_refused(stops: Any, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(yaml.safe_dump(_with_stops(stops)))
    assert expected in str(info.value)
