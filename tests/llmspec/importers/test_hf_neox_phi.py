"""Imported GPT-NeoX (Pythia) and Phi-3 models compute what transformers computes.

Tiny random transformers models (eager attention, fp32), imported with import-hf: logits on a
left-padded batch, 32 greedy tokens with our KV cache (torch) and through our ONNX runtime,
the per-config weight tables both ways, and the config values the spec cannot express refused
by name.
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
from llmspec.importers.hf.tables import gpt_neox_table, per_head_fused_qkv, phi3_table
from llmspec.spec.loading import load_spec

transformers = pytest.importorskip("transformers")

VOCAB = hf_tiny.VOCAB


def _saved(model: Any, directory: Path) -> Any:
    hf_tiny._randomize(model)
    model.eval()
    model.save_pretrained(directory)
    return model


def gpt_neox(directory: Path, **options: Any) -> Any:
    torch.manual_seed(0)
    base: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        rope_parameters={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    base.update(options)
    config = transformers.GPTNeoXConfig(**base)
    return _saved(transformers.GPTNeoXForCausalLM(config), directory)


def phi3(directory: Path, **options: Any) -> Any:
    torch.manual_seed(0)
    base: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        original_max_position_embeddings=128,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    base.update(options)
    rope = base.get("rope_parameters") or {}
    if "original_max_position_embeddings" in rope:  # the top-level copy agrees
        base["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    config = transformers.Phi3Config(**base)
    return _saved(transformers.Phi3ForCausalLM(config), directory)


LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "short_factor": [1.0, 1.2, 1.5, 2.0],
    "long_factor": [2.0, 3.0, 5.0, 8.0],
    "original_max_position_embeddings": 32,
}

VARIANTS: dict[str, Callable[[Path], Any]] = {
    "gpt_neox-parallel-partial-rotary-half": lambda d: gpt_neox(d),
    "gpt_neox-sequential-rotary-quarter-tied": lambda d: gpt_neox(
        d,
        use_parallel_residual=False,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_theta": 500.0,
            "partial_rotary_factor": 0.25,
            "rope_type": "default",
        },
    ),
    "phi3-gqa-fused": lambda d: phi3(d),
    "phi3-mha-sliding-window-5": lambda d: phi3(d, num_key_value_heads=4, sliding_window=5),
    # 7 + 32 tokens stay within the original length: transformers switches to long_factor by
    # recomputing the whole cache when a generation crosses it, which a KV cache does not do
    "phi3-longrope-short-factor": lambda d: phi3(
        d, rope_parameters={**LONGROPE, "original_max_position_embeddings": 64}
    ),
}
# beyond the original length (11 > 8 positions): the long factors and the attention factor
LOGITS_ONLY: dict[str, Callable[[Path], Any]] = {
    "phi3-longrope-long-factor": lambda d: phi3(
        d, rope_parameters={**LONGROPE, "original_max_position_embeddings": 8}
    ),
}


@pytest.mark.parametrize("variant", sorted({**VARIANTS, **LOGITS_ONLY}))
def test_neox_phi_logits_match_on_a_left_padded_batch(variant: str, tmp_path: Path) -> None:
    hf = {**VARIANTS, **LOGITS_ONLY}[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    eos = hf.config.eos_token_id
    ids, mask, positions = _left_padded([11, 6, 3], hf.config.vocab_size, pad=eos)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    real = mask.bool()
    _close(mine[real], theirs[real], f"{variant} logits")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_neox_phi_greedy_generation_matches(variant: str, tmp_path: Path) -> None:
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


def test_gpt_neox_spec_is_parallel_with_partial_rotary(tmp_path: Path) -> None:
    gpt_neox(tmp_path / "hf")
    spec = load_spec(import_hf(tmp_path / "hf", tmp_path / "imported") / "spec.yaml")
    assert spec.block.parallel == "separate-norms"
    assert spec.positions.rotated(spec.head_dim) == 4  # half of head_dim 8


def test_phi3_longrope_reaches_the_spec(tmp_path: Path) -> None:
    phi3(tmp_path / "hf", rope_parameters=dict(LONGROPE))
    spec = load_spec(import_hf(tmp_path / "hf", tmp_path / "imported") / "spec.yaml")
    scaling = spec.positions.scaling
    assert scaling is not None and scaling.type == "longrope"
    assert list(scaling.long_factor) == LONGROPE["long_factor"]


def test_the_neox_per_head_split_takes_q_k_v_of_each_head() -> None:
    heads, head_dim = 2, 3
    # rows: head 0 q (0..2), k (3..5), v (6..8), head 1 q (9..11), ...
    fused = torch.arange(heads * 3 * head_dim, dtype=torch.float32)
    q, k, v = per_head_fused_qkv(heads).to_ours(fused)
    assert q.tolist() == [0, 1, 2, 9, 10, 11]
    assert k.tolist() == [3, 4, 5, 12, 13, 14]
    assert v.tolist() == [6, 7, 8, 15, 16, 17]
    assert torch.equal(per_head_fused_qkv(heads).to_hf((q, k, v)), fused)


@pytest.mark.parametrize("family", ["gpt_neox", "phi3"])
def test_the_tables_give_back_the_transformers_state_dict(family: str, tmp_path: Path) -> None:
    hf = gpt_neox(tmp_path / "hf") if family == "gpt_neox" else phi3(tmp_path / "hf")
    c = hf.config
    if family == "gpt_neox":
        table = gpt_neox_table(c.num_attention_heads)
    else:
        head_dim = c.hidden_size // c.num_attention_heads
        table = phi3_table(
            c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim, c.intermediate_size
        )
    state = dict(hf.state_dict())
    if family == "gpt_neox":  # saved (and in checkpoints) as embed_out
        state[table.head] = state.pop("lm_head.weight")
    ours = from_hf(Weights(dict(state), "test"), table, {"decoder": c.num_hidden_layers})
    ours["lm_head.weight"] = state[table.head]
    back = to_hf(ours, table)
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
        (gpt_neox, {"attention_bias": False}, r"attention_bias = false is not supported"),
        (gpt_neox, {"hidden_act": "quick_gelu"}, r"hidden_act = \"quick_gelu\" is not supported"),
        (
            phi3,
            {"rope_parameters": {"rope_type": "su", "rope_theta": 10000.0}},
            r"rope_type.*su.*not supported",
        ),
        (phi3, {"sliding_window": 0}, r"sliding_window must be null or an integer >= 1"),
    ],
)
def test_neox_phi_configs_the_spec_cannot_express_are_refused_by_name(
    make: Callable[..., Any], changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    make(tmp_path / "hf")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(HFImportError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "imported")


ONNX: dict[str, Callable[[Path], Any]] = {
    "gpt_neox": lambda d: gpt_neox(d),
    "phi3-longrope-window": lambda d: phi3(
        d, rope_parameters={**LONGROPE, "original_max_position_embeddings": 64}, sliding_window=6
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ONNX))
def test_neox_phi_onnx_runtime_greedy_tokens_are_transformers(family: str, tmp_path: Path) -> None:
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


def test_a_pythia_state_dict_naming_the_output_projection_lm_head_imports_it(
    tmp_path: Path,
) -> None:
    """Checkpoints (and save_pretrained) call it embed_out; transformers 5's state_dict lm_head."""
    from safetensors.torch import load_file, save_file

    hf = gpt_neox(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors.pop("embed_out.weight")
    save_file(tensors, path)
    out = import_hf(tmp_path / "hf", tmp_path / "imported")
    imported = load_file(out / "weights.safetensors")
    assert torch.equal(imported["lm_head.weight"], hf.lm_head.weight.detach())


def test_a_transformers_4_pythia_config_imports_with_parity(tmp_path: Path) -> None:
    """Pythia's published config.json: rotary_pct and rotary_emb_base, no rope_parameters."""
    gpt_neox(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rotary_pct=0.25, rotary_emb_base=500)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    hf = transformers.GPTNeoXForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    assert hf.config.rope_parameters["partial_rotary_factor"] == 0.25  # read as we read it
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    assert spec.positions.base == 500 and spec.positions.rotated(spec.head_dim) == 2
    ids, mask, positions = _left_padded([9, 4], VOCAB, pad=VOCAB - 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    _close(mine[mask.bool()], theirs[mask.bool()], "pythia transformers-4 config logits")
