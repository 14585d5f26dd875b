"""export-hf of the newer decoder families: Qwen2, Qwen3, Mistral with its window, Gemma,
Gemma 2, Gemma 3 (text) and GPT-NeoX go back as themselves; Phi-3 as Llama or Mistral.

Round trips as in test_hf_export.py: a tiny random transformers model with a tokenizer is
saved, imported with import-hf and exported with export-hf; transformers loads the export with
``AutoModelForCausalLM.from_pretrained`` (local files only) and gives the source model's logits
at fp32 on a left-padded batch and its greedy tokens by the exported generation_config, and the
export imports again as the same spec and weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch
from safetensors.torch import load_file
from test_hf_export import _byte_tokenizer, _close, _padded, _save_tokenizer
from test_hf_gemma import gemma, gemma2, gemma3
from test_hf_neox_phi import LONGROPE, gpt_neox, phi3

from llmspec.cli import main
from llmspec.importers.hf.export import export_hf
from llmspec.importers.hf.export_config import GATED_NAMES, PLAIN_NAMES, hf_config
from llmspec.importers.hf.export_modern import _GATED, _PLAIN
from llmspec.importers.hf.importer import import_hf
from llmspec.importers.hf.mapping import HFExportError
from llmspec.spec.loading import dump_spec, load_spec
from llmspec.spec.sections import ModelSpec

transformers = pytest.importorskip("transformers")
build_module = pytest.importorskip("llmspec.builder")

ROOT = Path(__file__).resolve().parents[3]


def _with_tokenizer(make: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """``make``'s model saved with a byte-level tokenizer holding its bos, eos (and pad)."""

    def made(directory: Path) -> Any:
        model = make(directory)
        config = model.config
        specials = {"<s>": config.bos_token_id, "</s>": config.eos_token_id}
        roles = dict(bos_token="<s>", eos_token="</s>")
        if config.pad_token_id is not None:
            assert config.pad_token_id == config.eos_token_id
            roles["pad_token"] = "</s>"
        _save_tokenizer(directory, _byte_tokenizer(hf_tiny.VOCAB, specials, "<s> $A"), **roles)
        return model

    return made


# source -> (the family it exports as, its maker)
SOURCES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "qwen2-qkv-bias-tied": ("qwen2", _with_tokenizer(hf_tiny.qwen2)),
    "qwen2-mha-untied": (
        "qwen2",
        _with_tokenizer(
            lambda d: hf_tiny.qwen2(d, num_key_value_heads=4, tie_word_embeddings=False)
        ),
    ),
    "qwen3-qk-norm-tied": ("qwen3", _with_tokenizer(hf_tiny.qwen3)),
    "mistral-window-5": (
        "mistral",
        _with_tokenizer(lambda d: hf_tiny.mistral(d, sliding_window=5, bos_token_id=1)),
    ),
    "gemma-gqa-tied": ("gemma", _with_tokenizer(gemma)),
    "gemma2-window4-softcaps-scale": ("gemma2", _with_tokenizer(gemma2)),
    "gemma2-no-window-no-softcaps-usual-scale": (
        "gemma2",
        _with_tokenizer(
            lambda d: gemma2(
                d,
                layer_types=["full_attention"] * 3,
                attn_logit_softcapping=None,
                final_logit_softcapping=None,
                query_pre_attn_scalar=8,
            )
        ),
    ),
    "gemma3-qk-norm-local-base-pattern": ("gemma3_text", _with_tokenizer(gemma3)),
    "gemma3-linear-scaled-global": (
        "gemma3_text",
        _with_tokenizer(
            lambda d: gemma3(
                d,
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            )
        ),
    ),
    "gemma3-every-layer-local": (
        "gemma3_text",
        _with_tokenizer(lambda d: gemma3(d, layer_types=["sliding_attention"] * 4)),
    ),
    "gpt_neox-parallel-partial-half": ("gpt_neox", _with_tokenizer(gpt_neox)),
    "gpt_neox-sequential-quarter-tied": (
        "gpt_neox",
        _with_tokenizer(
            lambda d: gpt_neox(
                d,
                use_parallel_residual=False,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_theta": 500.0,
                    "partial_rotary_factor": 0.25,
                    "rope_type": "default",
                },
            )
        ),
    ),
    "phi3-as-llama": ("llama", _with_tokenizer(phi3)),
    "phi3-window-5-as-mistral": ("mistral", _with_tokenizer(lambda d: phi3(d, sliding_window=5))),
    "phi3-longrope-as-llama": (
        "llama",
        _with_tokenizer(lambda d: phi3(d, rope_parameters={**LONGROPE})),
    ),
    "phi3-fused-asked-for": ("phi3", _with_tokenizer(phi3)),
    "phi3-mha-window-5-asked-for": (
        "phi3",
        _with_tokenizer(lambda d: phi3(d, num_key_value_heads=4, sliding_window=5)),
    ),
    "phi3-longrope-asked-for": (
        "phi3",
        _with_tokenizer(lambda d: phi3(d, rope_parameters={**LONGROPE})),
    ),
}
# sources exported with export_hf(..., family=...): the spec does not name Phi-3
ASKED = {name: "phi3" for name in SOURCES if name.endswith("-asked-for")}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def round_trip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(family, the source model, the import, the export)."""
    family, make = SOURCES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    source = make(root / "hf")
    imported = import_hf(root / "hf", root / "imported")
    exported = export_hf(imported, root / "exported", family=ASKED.get(request.param))
    assert exported.family == family
    return family, source, imported, root / "exported"


def _load(directory: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, attn_implementation="eager"
    ).eval()


def _pad(config: Any) -> int:
    return config.pad_token_id if config.pad_token_id is not None else config.eos_token_id


def _logits(model: Any, vocab: int, pad: int) -> torch.Tensor:
    ids, mask = _padded([11, 7, 3], vocab, pad, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return out[mask.bool()]


def test_a_modern_round_trip_gives_the_source_models_logits(round_trip: Any) -> None:
    family, source, _, exported = round_trip
    config = source.config
    mine = _logits(_load(exported), config.vocab_size, _pad(config))
    _close(mine, _logits(source, config.vocab_size, _pad(config)), f"{family} exported")


def test_a_modern_round_trip_imports_again_as_the_same_spec(
    round_trip: Any, tmp_path: Path
) -> None:
    _, _, imported, exported = round_trip
    again = import_hf(exported, tmp_path / "again")
    assert dump_spec(load_spec(again / "spec.yaml")).replace(
        "name: exported", "name: hf"
    ) == dump_spec(load_spec(imported / "spec.yaml")).replace("name: imported", "name: hf")
    first = load_file(imported / "weights.safetensors")
    second = load_file(again / "weights.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_modern_export_is_its_family_for_transformers(round_trip: Any) -> None:
    family, _, _, exported = round_trip
    config = transformers.AutoConfig.from_pretrained(exported, local_files_only=True)
    assert config.model_type == family
    written = json.loads((exported / "config.json").read_text())
    assert written["architectures"] == [type(_load(exported)).__name__]


def test_a_modern_round_trip_generates_greedily_by_its_generation_config(
    round_trip: Any,
) -> None:
    _, source, _, exported = round_trip
    config = source.config
    pad = _pad(config)
    ids, mask = _padded([7, 4], config.vocab_size, pad, left=True)
    eos = config.eos_token_id
    source.generation_config = transformers.GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    told = transformers.GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=8, eos_token_id=eos, pad_token_id=pad
    )
    with torch.no_grad():
        theirs = source.generate(input_ids=ids, attention_mask=mask, generation_config=told)
        mine = _load(exported).generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    assert mine.tolist() == theirs.tolist()


def test_the_modern_activation_names_are_export_configs() -> None:
    assert (_GATED, _PLAIN) == (GATED_NAMES, PLAIN_NAMES)


def test_a_qwen2_spec_with_a_window_is_refused_naming_the_window(tmp_path: Path) -> None:
    base = load_spec(ROOT / "specs" / "tiny-decoder.yaml").model_dump(mode="json")
    base["bias"] = False
    base["attention"] = {**base["attention"], "qkv_bias": True, "sliding_window": 4}
    spec = ModelSpec.model_validate(base)
    assert hf_config(spec, {}).family == "qwen2"
    with pytest.raises(HFExportError) as err:
        export_hf(spec, tmp_path / "hf")
    assert "as the qwen2 family it differs in attention.sliding_window is 4" in str(err.value)
    assert not (tmp_path / "hf").exists()


def _tiny_decoder(**changes: dict[str, Any]) -> ModelSpec:
    data = load_spec(ROOT / "specs" / "tiny-decoder.yaml").model_dump(mode="json")
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    return ModelSpec.model_validate(data)


def test_a_gemma_spec_with_a_score_scale_is_refused_naming_it(tmp_path: Path) -> None:
    """Gemma (1) scales scores by 1/sqrt(head_dim) only; the read-back names the scale."""
    spec = _tiny_decoder(
        norm={"unit_offset": True}, embeddings={"scale": True}, attention={"scale": 0.25}
    )
    assert hf_config(spec, {}).family == "gemma"
    with pytest.raises(HFExportError) as err:
        export_hf(spec, tmp_path / "hf")
    assert "as the gemma family it differs in attention.scale is 0.25" in str(err.value)


def test_a_family_that_cannot_hold_the_spec_is_refused_when_asked_for(tmp_path: Path) -> None:
    spec = _tiny_decoder()
    with pytest.raises(HFExportError) as err:
        export_hf(spec, tmp_path / "hf", family="bert")
    assert str(err.value).startswith(
        "spec 'tiny-decoder' cannot be exported to Hugging Face as bert: a decoder-only model "
        "with rope positions is one of llama, qwen2,"
    )
    with pytest.raises(HFExportError) as err:
        export_hf(spec, tmp_path / "hf", family="phi4")
    assert "family 'phi4' is not one llmspec exports to Hugging Face; supported: " in str(err.value)
    with pytest.raises(HFExportError) as err:  # the family's fixed choices still hold
        export_hf(spec, tmp_path / "hf", family="gemma")
    assert "norm.unit_offset is false (gemma has true)" in str(err.value)
    assert not (tmp_path / "hf").exists()


def test_the_cli_family_option_writes_phi3_with_its_fused_weights(tmp_path: Path) -> None:
    spec = ROOT / "specs" / "tiny-decoder.yaml"
    out = tmp_path / "hf"
    assert main(["export-hf", str(spec), "-o", str(out), "--family", "phi3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("phi3", ["Phi3ForCausalLM"])
    names = load_file(out / "model.safetensors").keys()
    assert any(name.endswith("self_attn.qkv_proj.weight") for name in names)
    assert any(name.endswith("mlp.gate_up_proj.weight") for name in names)
    model = _load(out)
    tokens, mask = _padded([6, 3], 260, 0, left=True)
    torch.manual_seed(build_module.INIT_SEED)  # the bare spec's initial weights, as exported
    ours = build_module.build(load_spec(spec)).eval()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        mine = ours(tokens, mask, positions).logits[mask.bool()]
        theirs = model(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
    _close(theirs[mask.bool()], mine, "tiny-decoder as phi3")


# real-size specs in specs/ -> (the family asked for, the family written, transformers' count
# of the published model's parameters)
REAL_SIZE: dict[str, tuple[str | None, str, int]] = {
    "llama-3.2-1b": (None, "llama", 1_235_814_400),
    "qwen2.5-0.5b": (None, "qwen2", 494_032_768),
    "qwen3-0.6b": (None, "qwen3", 596_049_920),
    "mistral-7b-v0.1": (None, "mistral", 7_241_732_096),
    "gemma-2-2b": (None, "gemma2", 2_614_341_888),
    "phi-3-mini-4k": ("phi3", "phi3", 3_821_079_552),
    "pythia-160m": (None, "gpt_neox", 162_322_944),
}


@pytest.mark.parametrize("name", sorted(REAL_SIZE))
def test_a_real_size_specs_config_builds_the_published_models_parameters(name: str) -> None:
    """The written config.json, built by transformers (on the meta device: shapes only), has
    the published model's parameter count."""
    asked, family, count = REAL_SIZE[name]
    written = hf_config(load_spec(ROOT / "specs" / f"{name}.yaml"), {}, asked)
    assert written.family == family
    config = transformers.AutoConfig.for_model(**written.config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == count
