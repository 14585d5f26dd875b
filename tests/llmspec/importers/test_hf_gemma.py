"""Imported Gemma, Gemma 2 and Gemma 3 (text) models compute what transformers computes.

Tiny random transformers models (eager attention, fp32), imported with import-hf: logits on a
left-padded batch, 32 greedy tokens with our KV cache (torch) and through our ONNX runtime,
the weight table both ways, and the config values the spec cannot express refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch
from test_hf_parity import (
    CHAT_TEMPLATE,
    NEW_TOKENS,
    _close,
    _export,
    _greedy_decoder_only,
    _hf_generate,
    _import_and_build,
    _left_padded,
    _tokens,
)

from llmspec.importers.hf.importer import import_hf
from llmspec.importers.hf.mapping import HFImportError, Weights, from_hf, to_hf
from llmspec.importers.hf.tables import TABLES
from llmspec.spec.loading import load_spec

transformers = pytest.importorskip("transformers")


def _gemma_model(
    config_class: Any, model_class: Any, directory: Path, options: dict[str, Any]
) -> Any:
    torch.manual_seed(0)
    base: dict[str, Any] = dict(
        vocab_size=hf_tiny.VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=hf_tiny.VOCAB - 2,
        eos_token_id=hf_tiny.VOCAB - 1,
        pad_token_id=hf_tiny.VOCAB - 1,
        attn_implementation="eager",
    )
    base.update(options)
    model = model_class(config_class(**base))
    hf_tiny._randomize(model)
    with torch.no_grad():  # Gemma's norms scale by 1 + weight: weights around 0
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(directory)
    return model


def gemma(directory: Path, **options: Any) -> Any:
    return _gemma_model(transformers.GemmaConfig, transformers.GemmaForCausalLM, directory, options)


def gemma2(directory: Path, **options: Any) -> Any:
    defaults: dict[str, Any] = dict(
        sliding_window=4,
        query_pre_attn_scalar=12,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    )
    return _gemma_model(
        transformers.Gemma2Config,
        transformers.Gemma2ForCausalLM,
        directory,
        {**defaults, **options},
    )


def gemma3(directory: Path, **options: Any) -> Any:
    defaults: dict[str, Any] = dict(
        num_hidden_layers=4,
        sliding_window=4,
        query_pre_attn_scalar=12,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    )
    return _gemma_model(
        transformers.Gemma3TextConfig,
        transformers.Gemma3ForCausalLM,
        directory,
        {**defaults, **options},
    )


VARIANTS: dict[str, Callable[[Path], Any]] = {
    "gemma-gqa-tied": lambda d: gemma(d),
    "gemma-mha-untied": lambda d: gemma(d, num_key_value_heads=4, tie_word_embeddings=False),
    "gemma2-window4-softcaps-scale": lambda d: gemma2(d),
    "gemma2-no-softcaps-usual-scale": lambda d: gemma2(
        d, attn_logit_softcapping=None, final_logit_softcapping=None, query_pre_attn_scalar=8
    ),
    "gemma3-qk-norm-local-base-pattern": lambda d: gemma3(d),
    "gemma3-every-layer-local-base-only": lambda d: gemma3(
        d, layer_types=["sliding_attention"] * 4
    ),
    "gemma3-linear-scaled-global-attn-softcap-ignored": lambda d: gemma3(
        d,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        attn_logit_softcapping=7.0,
    ),
}


def _spec(hf_dir: Path, tmp_path: Path) -> Any:
    return load_spec(import_hf(hf_dir, tmp_path / "imported") / "spec.yaml")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemma_logits_match_on_a_left_padded_batch(variant: str, tmp_path: Path) -> None:
    hf = VARIANTS[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    eos = hf.config.eos_token_id
    ids, mask, positions = _left_padded([11, 6, 3], hf.config.vocab_size, pad=eos)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    real = mask.bool()
    _close(mine[real], theirs[real], f"{variant} logits")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gemma_greedy_generation_matches(variant: str, tmp_path: Path) -> None:
    hf = VARIANTS[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    eos = hf.config.eos_token_id
    ids, mask, _ = _left_padded([7, 4], hf.config.vocab_size, pad=eos)
    with torch.no_grad():
        theirs = _hf_generate(hf, ids, mask, eos_token_id=eos, pad_token_id=eos)[:, ids.shape[1] :]
        mine = _greedy_decoder_only(ours, ids, mask, eos=eos, pad=eos)
    print(f"{variant}: {mine.shape[1]} greedy tokens")
    assert mine.shape[1] == NEW_TOKENS
    assert mine.tolist() == theirs.tolist()


def test_gemma2_spec_has_each_knob_from_its_config(tmp_path: Path) -> None:
    gemma2(tmp_path / "hf")
    spec = _spec(tmp_path / "hf", tmp_path)
    assert spec.norm.unit_offset and spec.norm.sandwich and spec.embeddings.scale
    assert spec.attention.sliding_window == 4
    assert spec.attention.layer_pattern == ["local", "global"]
    assert spec.attention.softcap == 5.0 and spec.head.softcap == 3.0
    assert spec.attention.scale == pytest.approx(12**-0.5)
    assert spec.feed_forward.activation == "geglu-tanh"


def test_gemma3_spec_has_qk_norm_the_local_base_and_five_local_one_global(
    tmp_path: Path,
) -> None:
    gemma3(
        tmp_path / "hf",
        num_hidden_layers=8,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 1
        + ["sliding_attention"] * 2,
    )
    spec = _spec(tmp_path / "hf", tmp_path)
    assert spec.attention.qk_norm == "rmsnorm"
    assert spec.attention.layer_pattern == ["local"] * 5 + ["global"]
    assert spec.positions.base == 1000000.0 and spec.positions.local_base == 10000.0


def test_gemma3_with_every_layer_global_has_no_window_and_one_base(tmp_path: Path) -> None:
    gemma3(tmp_path / "hf", layer_types=["full_attention"] * 4)
    spec = _spec(tmp_path / "hf", tmp_path)
    assert spec.attention.sliding_window is None and spec.attention.layer_pattern is None
    assert spec.positions.base == 1000000.0 and spec.positions.local_base is None


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3_text"])
def test_the_gemma_tables_give_back_the_transformers_state_dict(
    family: str, tmp_path: Path
) -> None:
    make = {"gemma": gemma, "gemma2": gemma2, "gemma3_text": gemma3}[family]
    hf = make(tmp_path / "hf")
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    table = TABLES[family]
    ours = from_hf(Weights(dict(state), "test"), table, {"decoder": hf.config.num_hidden_layers})
    back = to_hf(ours, table)
    back.pop(table.head)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def _edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("make", "changes", "message"),
    [
        (gemma, {"attention_bias": True}, r"attention_bias = true is not supported"),
        (gemma2, {"use_bidirectional_attention": True}, r"use_bidirectional_attention"),
        (gemma2, {"layer_types": ["chunked_attention"] * 3}, r"chunked_attention.*not supported"),
        (gemma2, {"layer_types": ["full_attention"]}, r"one type for each of the 3 layers"),
        (gemma2, {"hidden_activation": "relu"}, r"hidden_activation = \"relu\" is not supported"),
        (
            gemma3,
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                }
            },
            r"sliding_attention.rope_type = \"linear\" is not supported",
        ),
    ],
)
def test_gemma_configs_the_spec_cannot_express_are_refused_by_name(
    make: Callable[..., Any], changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    make(tmp_path / "hf")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(HFImportError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "imported")


ONNX: dict[str, Callable[[Path], Any]] = {
    "gemma": lambda d: gemma(d),
    "gemma2": lambda d: gemma2(d),
    "gemma3_text": lambda d: gemma3(d),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ONNX))
def test_gemma_onnx_runtime_greedy_tokens_are_transformers(family: str, tmp_path: Path) -> None:
    """32 greedy tokens per prompt of a batch through our runtime equal transformers' for each
    prompt alone; every layer takes the fused attention path."""
    hf = ONNX[family](tmp_path / "hf")
    model, manifest = _export(tmp_path / "hf", tmp_path, CHAT_TEMPLATE)
    prompts = [_tokens(1, length, hf.config.vocab_size, seed=length)[0] for length in (7, 4)]
    result = model.generate(
        [p.tolist() for p in prompts], max_new_tokens=NEW_TOKENS, chain="greedy"
    )
    tokens = dict(eos_token_id=hf.config.eos_token_id, pad_token_id=hf.config.pad_token_id)
    for row, prompt in enumerate(prompts):
        ids = prompt[None]
        with torch.no_grad():
            theirs = _hf_generate(hf, ids, torch.ones_like(ids), **tokens)
        print(f"{family} row {row}: {len(result.tokens[row])} tokens through the runtime")
        assert result.tokens[row] == theirs[0, ids.shape[1] :].tolist()
    print(f"{family} fusions: {manifest['fusions']}")
    assert manifest["fusions"]["decoder.onnx"]["GroupQueryAttention"] == hf.config.num_hidden_layers


def test_a_transformers_4_gemma2_config_imports_with_parity(tmp_path: Path) -> None:
    """A config.json without layer_types (alternating from a local layer) and with rope_theta."""
    gemma2(tmp_path / "hf", num_hidden_layers=4)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["layer_types"], config["rope_parameters"]
    config["rope_theta"] = 500.0
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    hf = transformers.Gemma2ForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    assert spec.attention.layer_pattern == ["local", "global"] and spec.positions.base == 500
    ids, mask, positions = _left_padded([11, 5], hf_tiny.VOCAB, pad=hf_tiny.VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    _close(mine[mask.bool()], theirs[mask.bool()], "gemma2 transformers-4 config logits")


def test_a_transformers_4_gemma3_config_imports_with_parity(tmp_path: Path) -> None:
    """rope_theta, rope_local_base_freq and sliding_window_pattern instead of rope_parameters
    and layer_types (Gemma 3's published config.json)."""
    gemma3(tmp_path / "hf", num_hidden_layers=5, layer_types=["full_attention"] * 5)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["layer_types"], config["rope_parameters"]
    config.pop("_sliding_window_pattern", None)
    config.update(rope_theta=100000.0, rope_local_base_freq=500.0, sliding_window_pattern=3)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    hf = transformers.Gemma3ForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    assert spec.attention.layer_pattern == ["local", "local", "global"]
    assert spec.positions.base == 100000.0 and spec.positions.local_base == 500.0
    assert hf.config.layer_types[:3] == ["sliding_attention", "sliding_attention", "full_attention"]
    ids, mask, positions = _left_padded([11, 5], hf_tiny.VOCAB, pad=hf_tiny.VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    _close(mine[mask.bool()], theirs[mask.bool()], "gemma3 transformers-4 config logits")


def test_gemma_legacy_hidden_act_gelu_is_tanh_gelu_as_transformers_reads_it(
    tmp_path: Path,
) -> None:
    gemma(tmp_path / "hf")
    _edit_config(tmp_path / "hf", hidden_act="gelu")
    hf = transformers.GemmaForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    assert hf.config.hidden_act == "gelu_pytorch_tanh"
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    assert load_spec(tmp_path / "imported" / "spec.yaml").feed_forward.activation == "geglu-tanh"
    ids, mask, positions = _left_padded([7, 3], hf_tiny.VOCAB, pad=hf_tiny.VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    _close(mine[mask.bool()], theirs[mask.bool()], "gemma hidden_act gelu logits")
