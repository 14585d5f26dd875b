"""import-hf: Hugging Face directories in, a valid spec and weights in llmspec's naming out.

These tests need nothing from the code generator; test_hf_parity.py runs the imported models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hf_tiny
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmspec.cli import main
from llmspec.importers.hf.importer import HFImportError, expected_shapes, import_hf
from llmspec.spec.loading import load_spec
from llmspec.spec.sections import ModelSpec
from llmspec.tokenizer import load_for_spec

pytest.importorskip("transformers")


def _import(hf_dir: Path, tmp_path: Path) -> tuple[ModelSpec, dict[str, torch.Tensor], Path]:
    out = import_hf(hf_dir, tmp_path / "out")
    spec = load_spec(out / "spec.yaml")
    weights = load_file(out / "weights.safetensors")
    shapes = {name: tuple(t.shape) for name, t in weights.items()}
    assert shapes == expected_shapes(spec)
    load_for_spec(spec, out)  # the tokenizer fits the spec
    return spec, weights, out


def _edit_config(hf_dir: Path, **changes: object) -> None:
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------
# Each family


def test_gpt2_splits_fused_attention_and_transposes_conv1d(tmp_path: Path) -> None:
    hf = hf_tiny.gpt2(tmp_path / "hf")
    spec, weights, out = _import(tmp_path / "hf", tmp_path)
    assert (spec.architecture, spec.objective.type) == ("decoder-only", "causal-lm")
    assert spec.feed_forward.activation == "gelu-tanh"
    assert spec.norm.position == "pre" and spec.head.tied and "lm_head.weight" not in weights
    block = hf.transformer.h[1]
    k = block.attn.c_attn.weight.t().chunk(3)[1]
    assert torch.equal(weights["decoder.layers.1.self_attn.k_proj.weight"], k)
    assert torch.equal(
        weights["decoder.layers.1.self_attn.v_proj.bias"], block.attn.c_attn.bias[64:]
    )
    assert torch.equal(weights["decoder.layers.1.mlp.up_proj.weight"], block.mlp.c_fc.weight.t())
    assert torch.equal(weights["decoder.final_norm.weight"], hf.transformer.ln_f.weight)
    # bos and eos share the model's id 319; a placeholder tokenizer keeps it there
    assert spec.vocabulary.special_tokens.eos == spec.vocabulary.special_tokens.bos
    tokenizer = load_for_spec(spec, out)
    assert tokenizer.token_to_id(spec.vocabulary.special_tokens.eos) == 319
    text = (out / "spec.yaml").read_text()
    # the source folder by name: an import records no path of the importing machine
    assert text.startswith("# Imported by `llmspec import-hf` from hf\n")
    assert str(tmp_path) not in text
    from safetensors import safe_open

    with safe_open(str(out / "weights.safetensors"), "pt") as stored:
        assert stored.metadata()["source"] == "hf"


def test_gpt2_relu_activation_and_unscaled_attention(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf", activation_function="relu", scale_attn_weights=False)
    spec, _, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.feed_forward.activation == "relu"
    assert spec.attention.scaled is False


def test_llama_gqa_rope_base_and_untied_head(tmp_path: Path) -> None:
    hf = hf_tiny.llama(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.kv_heads == 2 and spec.attention.heads == 4
    assert spec.positions.type == "rope" and spec.positions.base == 5000.0
    assert spec.feed_forward.activation == "swiglu" and spec.norm.type == "rmsnorm"
    assert spec.bias is False and spec.head.tied is False
    assert torch.equal(weights["lm_head.weight"], hf.lm_head.weight)
    assert torch.equal(
        weights["decoder.layers.0.mlp.gate_proj.weight"], hf.model.layers[0].mlp.gate_proj.weight
    )
    assert (spec.vocabulary.special_tokens.bos, spec.vocabulary.special_tokens.eos) == (
        "<s>",
        "</s>",
    )


def test_llama_tied_head_is_stored_once(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf", untied_head=False)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.head.tied and "lm_head.weight" not in weights


def test_llama_gelu_is_geglu_and_bias_follows_attention_bias(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf", hidden_act="gelu", attention_bias=True, mlp_bias=True)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.feed_forward.activation == "geglu" and spec.bias
    assert "decoder.layers.1.self_attn.o_proj.bias" in weights


def test_t5_v1_0_is_relu_tied_and_rescaled(tmp_path: Path) -> None:
    hf_tiny.t5(tmp_path / "hf", num_decoder_layers=3)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert (spec.architecture, spec.objective.type) == ("encoder-decoder", "span-corruption")
    assert spec.feed_forward.activation == "relu" and not spec.gated
    assert spec.head.tied and spec.head.rescale
    assert spec.attention.scaled is False and spec.head_dim == 8
    assert (spec.layers, spec.num_decoder_layers) == (2, 3)
    assert spec.positions.type == "relative"
    assert (spec.positions.buckets, spec.positions.max_distance) == (8, 20)
    assert "decoder.layers.2.cross_attn_norm.weight" in weights
    # pad 0, eos 1, sentinels from the top: exactly the built-in byte-level layout
    assert spec.vocabulary.tokenizer.type == "byte-level"
    assert spec.vocabulary.sentinels == 100


def test_t5_v1_1_is_gated_gelu_untied_and_not_rescaled(tmp_path: Path) -> None:
    hf = hf_tiny.t5(tmp_path / "hf", untied_head=True, feed_forward_proj="gated-gelu")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.feed_forward.activation == "geglu-tanh"
    assert not spec.head.tied and not spec.head.rescale
    assert torch.equal(weights["lm_head.weight"], hf.lm_head.weight)
    mlp = hf.encoder.block[1].layer[1].DenseReluDense
    assert torch.equal(weights["encoder.layers.1.mlp.gate_proj.weight"], mlp.wi_0.weight)
    assert torch.equal(weights["encoder.layers.1.mlp.up_proj.weight"], mlp.wi_1.weight)


def test_bart_offset_positions_logits_bias_and_embedding_scale(tmp_path: Path) -> None:
    hf = hf_tiny.bart(tmp_path / "hf", scale_embedding=True, decoder_layers=3)
    spec, weights, out = _import(tmp_path / "hf", tmp_path)
    assert (spec.objective.type, spec.norm.position) == ("denoising", "post")
    assert spec.positions.type == "learned" and spec.positions.offset == 2
    assert weights["decoder.embed_positions.weight"].shape == (66, 32)
    assert spec.head.logits_bias == "buffer" and spec.embeddings.scale and spec.embeddings.norm
    assert torch.equal(weights["logits_bias"], hf.final_logits_bias[0])
    assert spec.num_decoder_layers == 3
    # BART's config names no mask id: the placeholder puts <mask> on the top id, as BART does
    tokenizer = load_for_spec(spec, out)
    assert tokenizer.token_to_id(spec.vocabulary.special_tokens.mask) == hf_tiny.VOCAB - 1
    ids = {
        role: tokenizer.token_to_id(text)
        for role, text in spec.vocabulary.special_tokens.present().items()
    }
    assert ids == {"bos": 0, "pad": 1, "eos": 2, "mask": hf_tiny.VOCAB - 1}
    assert spec.vocabulary.decoder_start == "eos"  # BART's decoder starts from </s> (id 2)


def test_bert_masked_lm_head(tmp_path: Path) -> None:
    hf = hf_tiny.bert(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert (spec.objective.type, spec.norm.position, spec.norm.eps) == ("masked-lm", "post", 1e-12)
    assert spec.embeddings.token_types == 2 and spec.embeddings.norm
    assert spec.head.transform and spec.head.logits_bias == "learned" and not spec.head.pooler
    assert torch.equal(weights["logits_bias"], hf.cls.predictions.bias)
    assert torch.equal(
        weights["encoder.layers.0.self_attn_norm.bias"],
        hf.bert.encoder.layer[0].attention.output.LayerNorm.bias,
    )


def test_bert_model_keeps_its_pooler(tmp_path: Path) -> None:
    hf_tiny.bert(tmp_path / "hf", masked_lm=False)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.head.pooler and not spec.head.transform and spec.head.logits_bias == "none"
    assert "pooler.dense.weight" in weights


@pytest.mark.parametrize("xlm", [False, True], ids=["roberta", "xlm-roberta"])
def test_roberta_positions_start_after_the_pad_id_and_one_token_type(
    tmp_path: Path, xlm: bool
) -> None:
    hf = hf_tiny.roberta(tmp_path / "hf", xlm=xlm)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.positions.type == "learned"
    # pad_token_id 1: position 0 reads row 2; the 66-row table holds 64 positions
    assert (spec.positions.offset, spec.positions.max_positions, spec.context_length) == (2, 64, 64)
    assert spec.embeddings.token_types == 1 and spec.embeddings.norm
    assert spec.head.transform and spec.head.logits_bias == "learned" and spec.head.tied
    assert torch.equal(weights["logits_bias"], hf.lm_head.bias)
    assert torch.equal(weights["head_transform.norm.weight"], hf.lm_head.layer_norm.weight)
    assert torch.equal(
        weights["encoder.embed_positions.weight"], hf.roberta.embeddings.position_embeddings.weight
    )


def test_roberta_model_keeps_its_pooler(tmp_path: Path) -> None:
    hf_tiny.roberta(tmp_path / "hf", masked_lm=False)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.head.pooler and not spec.head.transform and spec.head.logits_bias == "none"
    assert "pooler.dense.weight" in weights


def test_distilbert_has_no_token_types_and_its_vocab_head_is_the_mlm_transform(
    tmp_path: Path,
) -> None:
    hf = hf_tiny.distilbert(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert (spec.norm.position, spec.norm.eps, spec.embeddings.token_types) == ("post", 1e-12, 0)
    assert spec.head.transform and spec.head.logits_bias == "learned" and not spec.head.pooler
    assert torch.equal(weights["head_transform.dense.weight"], hf.vocab_transform.weight)
    assert torch.equal(weights["logits_bias"], hf.vocab_projector.bias)
    mlp = hf.distilbert.transformer.layer[1].ffn
    assert torch.equal(weights["encoder.layers.1.mlp.down_proj.weight"], mlp.lin2.weight)


def test_opt_is_pre_norm_relu_with_positions_offset_by_2(tmp_path: Path) -> None:
    hf = hf_tiny.opt(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert (spec.architecture, spec.norm.position, spec.feed_forward.activation) == (
        "decoder-only",
        "pre",
        "relu",
    )
    assert spec.positions.type == "learned" and spec.positions.offset == 2
    assert weights["decoder.embed_positions.weight"].shape == (66, 32)
    assert torch.equal(weights["decoder.final_norm.bias"], hf.model.decoder.final_layer_norm.bias)


def test_post_norm_opt_has_no_final_norm(tmp_path: Path) -> None:
    hf_tiny.opt(tmp_path / "hf", do_layer_norm_before=False)
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.norm.position == "post" and "decoder.final_norm.weight" not in weights


def test_mistral_imports_as_llama_without_a_window(tmp_path: Path) -> None:
    hf_tiny.mistral(tmp_path / "hf")
    spec, _, _ = _import(tmp_path / "hf", tmp_path)
    assert (spec.attention.kv_heads, spec.attention.head_dim) == (2, 16)
    assert spec.feed_forward.activation == "swiglu" and not spec.bias and not spec.head.tied
    assert spec.positions.type == "rope" and spec.positions.base == 20000.0


def test_a_mistral_window_shorter_than_the_context_is_every_layers_window(
    tmp_path: Path,
) -> None:
    hf_tiny.mistral(tmp_path / "hf", sliding_window=16)
    spec, _, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.attention.sliding_window == 16 and spec.attention.layer_pattern is None
    assert all(spec.attention.layer_is_local(i) for i in range(spec.layers))


def test_a_mistral_window_longer_than_the_context_is_noted_not_refused(tmp_path: Path) -> None:
    hf_tiny.mistral(tmp_path / "hf", sliding_window=4096)
    _, _, out = _import(tmp_path / "hf", tmp_path)
    header = " ".join((out / "spec.yaml").read_text().split("\n# "))
    assert "sliding_window 4096 is at least the context length 128" in header


def test_qwen2_has_biases_on_q_k_v_only(tmp_path: Path) -> None:
    hf = hf_tiny.qwen2(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.attention.qkv_bias is True and spec.bias is False and spec.head.tied
    attention = hf.model.layers[1].self_attn
    assert torch.equal(weights["decoder.layers.1.self_attn.k_proj.bias"], attention.k_proj.bias)
    assert "decoder.layers.1.self_attn.o_proj.bias" not in weights
    assert "decoder.layers.1.mlp.up_proj.bias" not in weights
    assert spec.positions.type == "rope" and spec.positions.base == 1e6


def test_qwen3_normalizes_each_heads_queries_and_keys(tmp_path: Path) -> None:
    hf = hf_tiny.qwen3(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.attention.qk_norm == "rmsnorm" and spec.attention.head_dim == 16
    assert not spec.bias and spec.attention.qkv_bias is None
    norm = hf.model.layers[1].self_attn.k_norm.weight
    assert torch.equal(weights["decoder.layers.1.self_attn.k_norm.weight"], norm)


def test_mt5_is_t5_v1_1_and_never_rescaled(tmp_path: Path) -> None:
    hf = hf_tiny.mt5(tmp_path / "hf")
    spec, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert spec.feed_forward.activation == "geglu-tanh"
    assert not spec.head.tied and not spec.head.rescale
    assert torch.equal(weights["lm_head.weight"], hf.lm_head.weight)
    # a tied mT5 (one matrix) is still not rescaled: transformers' MT5 never rescales
    save_file(
        {
            k: v
            for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()
            if k != "lm_head.weight"
        },
        tmp_path / "hf" / "model.safetensors",
        metadata={"format": "pt"},
    )
    tied = load_spec(import_hf(tmp_path / "hf", tmp_path / "tied") / "spec.yaml")
    assert tied.head.tied and not tied.head.rescale


# ----------------------------------------------------------------------------------------
# Weight files and tokenizers


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    _, weights, _ = _import(tmp_path / "hf", tmp_path)
    assert torch.equal(weights["embed_tokens.weight"], state["transformer.wte.weight"])


def test_sharded_safetensors(tmp_path: Path) -> None:
    hf = hf_tiny.llama(tmp_path / "hf")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, weights, _ = _import(tmp_path / "sharded", tmp_path)
    assert torch.equal(weights["decoder.final_norm.weight"], hf.model.norm.weight)


def _word_level_tokenizer(path: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))


def test_a_tokenizer_json_is_copied_and_names_the_special_tokens(tmp_path: Path) -> None:
    hf_tiny.bert(tmp_path / "hf")
    tokens = ["[PAD]", *(f"w{i}" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"v{i}" for i in range(hf_tiny.VOCAB - len(tokens))]
    _word_level_tokenizer(tmp_path / "hf" / "tokenizer.json", tokens)
    (tmp_path / "hf" / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "mask_token": "[MASK]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "unk_token": "[UNK]",
            }
        )
    )
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.vocabulary.tokenizer.type == "file"
    # copied, with the tokens special_tokens_map.json names made special added tokens, as
    # transformers loads them (see test_tokenizer_fidelity.py)
    copied = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    source = json.loads((tmp_path / "hf" / "tokenizer.json").read_text(encoding="utf-8"))
    added = copied.pop("added_tokens")
    source.pop("added_tokens")
    assert copied == source
    assert {t["content"]: t["id"] for t in added if t["special"]} == {
        "[UNK]": 100,
        "[CLS]": 101,
        "[SEP]": 102,
        "[MASK]": 103,
    }
    assert spec.vocabulary.special_tokens.present() == {
        "pad": "[PAD]",
        "bos": "[CLS]",
        "eos": "[SEP]",
        "unk": "[UNK]",
        "mask": "[MASK]",
    }


def test_a_tokenizer_without_the_objectives_mask_is_refused(tmp_path: Path) -> None:
    hf_tiny.bert(tmp_path / "hf")
    _word_level_tokenizer(tmp_path / "hf" / "tokenizer.json", ["[PAD]", "[UNK]", "hello"])
    with pytest.raises(HFImportError, match="masked-lm needs a mask token"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_pad_sharing_eos_is_dropped_with_a_note(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf", pad_token_id=2)
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.vocabulary.special_tokens.pad is None
    assert "pad shares id 2 with eos" in (out / "spec.yaml").read_text()


# ----------------------------------------------------------------------------------------
# Generation defaults: generation_config.json to the spec's decoding chain


def _edit_generation(hf_dir: Path, **changes: object) -> None:
    path = hf_dir / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _header(out: Path) -> str:
    """The spec's header comment as one line."""
    lines = (out / "spec.yaml").read_text().splitlines()
    return " ".join(line[2:] for line in lines if line.startswith("# "))


def test_sampling_defaults_become_the_chain_in_transformers_order(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    _edit_generation(
        tmp_path / "hf",
        do_sample=True,
        temperature=0.7,
        top_k=None,  # transformers samples with top_k 50 when it is unset
        top_p=0.9,
        min_p=0.05,
        typical_p=0.95,
        repetition_penalty=1.1,
        no_repeat_ngram_size=3,
        max_new_tokens=40,
    )
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.generation is not None and spec.generation.max_new_tokens == 40
    chain = [step.type for step in spec.generation.chain]
    # transformers' processors, then its warpers: temperature, top-k, top-p, min-p, typical
    assert chain == [
        "repetition_penalty",
        "no_repeat_ngram",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical",
        "sample",
    ]
    assert spec.generation.chain[3].k == 50
    assert "Generation default not imported" not in _header(out)


def test_beam_search_defaults_and_what_the_chain_cannot_express_is_listed(
    tmp_path: Path,
) -> None:
    hf_tiny.bart(tmp_path / "hf")
    _edit_generation(  # bart-large-cnn's defaults
        tmp_path / "hf",
        num_beams=4,
        length_penalty=2.0,
        early_stopping=True,
        no_repeat_ngram_size=3,
        forced_bos_token_id=0,
        min_length=56,
        max_length=42,
        min_new_tokens=2,
        suppress_tokens=[5],
    )
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.generation is not None
    (beam,) = spec.generation.chain
    assert (beam.type, beam.beams, beam.length_penalty, beam.early_stopping) == (
        "beam_search",
        4,
        2.0,
        True,
    )
    # an encoder-decoder's max_length counts the decoder's start token
    assert spec.generation.max_new_tokens == 41
    header = _header(out)
    for item in (
        "no_repeat_ngram with beam search",
        "forced_bos_token_id = 0",
        "forced_eos_token_id = 2",
        "min_length = 56",
        "min_new_tokens = 2",
        "suppress_tokens = [5]",
    ):
        assert f"Generation default not imported: {item}." in header


def test_a_decoder_only_max_length_is_listed_not_imported(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _edit_generation(tmp_path / "hf", max_length=50, penalty_alpha=0.6, top_k=4)
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.generation is not None and spec.generation.max_new_tokens == 64  # the spec's
    assert [step.type for step in spec.generation.chain] == ["greedy"]
    header = _header(out)
    assert "max_length = 50 (it counts the prompt; max_new_tokens does not)" in header
    assert "penalty_alpha = 0.6" in header  # contrastive search


def test_a_limit_beyond_the_context_window_is_listed_not_imported(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")  # 64 positions
    _edit_generation(tmp_path / "hf", max_new_tokens=100)
    spec, _, out = _import(tmp_path / "hf", tmp_path)
    assert spec.generation is not None and spec.generation.max_new_tokens == 64  # the spec's
    assert "a limit of 100 new tokens (beyond the context window of 64)" in _header(out)


# ----------------------------------------------------------------------------------------
# Chat templates: copied as chat_template.jinja (llmspec export puts it into the artifact)

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))


def test_the_chat_template_of_tokenizer_config_is_copied(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _write_json(tmp_path / "hf" / "tokenizer_config.json", {"chat_template": TEMPLATE})
    _, _, out = _import(tmp_path / "hf", tmp_path)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert "chat template from tokenizer_config.json (chat_template.jinja)" in _header(out)


def test_a_chat_template_file_comes_before_tokenizer_config(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _write_json(tmp_path / "hf" / "tokenizer_config.json", {"chat_template": "old"})
    (tmp_path / "hf" / "chat_template.jinja").write_text(TEMPLATE + "é", encoding="utf-8")
    _, _, out = _import(tmp_path / "hf", tmp_path)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE + "é"


def test_named_chat_templates_give_the_default_and_list_the_others(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    named = [{"name": "default", "template": TEMPLATE}, {"name": "tool_use", "template": "t"}]
    _write_json(tmp_path / "hf" / "chat_template.json", {"chat_template": named})
    _, _, out = _import(tmp_path / "hf", tmp_path)
    assert (out / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert "chat template 'tool_use' of chat_template.json not imported" in _header(out)


def test_without_a_chat_template_no_file_is_written(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _write_json(tmp_path / "hf" / "tokenizer_config.json", {"model_max_length": 128})
    _, _, out = _import(tmp_path / "hf", tmp_path)
    assert not (out / "chat_template.jinja").exists()


def test_a_malformed_chat_template_is_refused_naming_the_file(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _write_json(tmp_path / "hf" / "tokenizer_config.json", {"chat_template": [{"name": 1}]})
    with pytest.raises(HFImportError, match=r"tokenizer_config.json: chat_template must be"):
        import_hf(tmp_path / "hf", tmp_path / "out")


# ----------------------------------------------------------------------------------------
# Refusals: each names the option and its value


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        (
            "llama",
            {"rope_scaling": {"rope_type": "su", "factor": 2.0}},
            'rope_scaling.rope_type = "su" is not supported; supported: default, linear',
        ),
        (
            "llama",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "low_freq_factor": 1}},
            "rope_parameters.low_freq_factor = 1 is not supported by the spec's yarn rope",
        ),
        ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor = 0.5 is not supported"),
        ("qwen2", {"rope_scaling": {"type": "su"}}, 'rope_scaling.rope_type = "su"'),
        ("llama", {"hidden_act": "relu"}, 'hidden_act = "relu"'),
        ("llama", {"attention_bias": True}, "attention_bias = true with mlp_bias = false"),
        ("gpt2", {"activation_function": "quick_gelu"}, 'activation_function = "quick_gelu"'),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ("gpt2", {"add_cross_attention": True}, "add_cross_attention = true"),
        ("gpt2", {"eos_token_id": 50256}, "eos_token_id = 50256 is beyond vocab_size 320"),
        (
            "bert",
            {"position_embedding_type": "relative_key"},
            'position_embedding_type = "relative_key"',
        ),
        ("bert", {"is_decoder": True}, "is_decoder = true"),
        (
            "bert",
            {"architectures": ["BertForSequenceClassification"]},
            "BertForSequenceClassification",
        ),
        (
            "bart",
            {"decoder_attention_heads": 2},
            "encoder_attention_heads = 4 and decoder_attention_heads = 2",
        ),
        ("bart", {"decoder_ffn_dim": 128}, "decoder_ffn_dim = 128"),
        ("bart", {"normalize_before": True}, "normalize_before = true"),
        ("bart", {"add_final_layer_norm": True}, "add_final_layer_norm = true"),
        ("t5", {"feed_forward_proj": "gated-relu"}, 'feed_forward_proj = "gated-relu"'),
        ("t5", {"model_type": "mamba"}, "model_type 'mamba' is not supported"),
        ("opt", {"word_embed_proj_dim": 16}, "word_embed_proj_dim = 16 with hidden_size = 32"),
        ("opt", {"enable_bias": False}, "enable_bias = false"),
        ("opt", {"layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine = false"),
        ("opt", {"_remove_final_layer_norm": True}, "_remove_final_layer_norm = true"),
        ("opt", {"activation_function": "quick_gelu"}, 'activation_function = "quick_gelu"'),
        (
            "opt",
            {"architectures": ["OPTForSequenceClassification"]},
            "OPTForSequenceClassification",
        ),
        ("roberta", {"hidden_act": "relu"}, 'hidden_act = "relu" is not supported with the MLM'),
        ("roberta", {"is_decoder": True}, "is_decoder = true"),
        ("roberta", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ("roberta", {"pad_token_id": 70}, "max_position_embeddings = 66 leaves no position"),
        ("distilbert", {"sinusoidal_pos_embds": True}, "sinusoidal_pos_embds = true"),
        ("distilbert", {"activation": "quick_gelu"}, 'activation = "quick_gelu"'),
        ("mistral", {"layer_types": ["sliding_attention"] * 2}, "layer_types = ["),
        ("mistral", {"sliding_window": 0}, "sliding_window must be null or an integer >= 1"),
        ("mt5", {"feed_forward_proj": "gated-relu"}, 'feed_forward_proj = "gated-relu"'),
        ("qwen2", {"use_sliding_window": True}, "use_sliding_window = true"),
        ("qwen2", {"layer_types": ["sliding_attention"] * 2}, 'layer_types = ["sliding_attention"'),
        ("qwen2", {"hidden_act": "relu"}, 'hidden_act = "relu"'),
        ("qwen3", {"attention_bias": True}, "attention_bias = true is not supported"),
        ("qwen3", {"use_sliding_window": True}, "use_sliding_window = true"),
    ],
)
def test_options_that_change_the_model_are_refused(
    tmp_path: Path, family: str, changes: dict[str, object], message: str
) -> None:
    getattr(hf_tiny, family)(tmp_path / "hf")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(HFImportError, match=_escape(message)):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _escape(text: str) -> str:
    return re.escape(text)


def test_a_head_it_cannot_place_is_refused(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(path)
    state["score.weight"] = torch.zeros(2, 32)
    save_file(state, path)
    with pytest.raises(HFImportError, match="weights with no place in the spec: score.weight"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_a_separate_head_contradicting_tie_word_embeddings_is_refused(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")  # untied: lm_head.weight differs from the embeddings
    _edit_config(tmp_path / "hf", tie_word_embeddings=True)
    with pytest.raises(HFImportError, match="tie_word_embeddings = true"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_an_untied_config_without_a_head_is_refused(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf", untied_head=False)
    _edit_config(tmp_path / "hf", tie_word_embeddings=False)
    with pytest.raises(HFImportError, match="no 'lm_head.weight'"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _edit_config(tmp_path / "hf", num_hidden_layers=3)
    with pytest.raises(HFImportError, match="missing weight 'layers.2.input_layernorm.weight'"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_a_width_that_does_not_match_the_config_is_refused(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf")
    _edit_config(tmp_path / "hf", intermediate_size=48)
    with pytest.raises(HFImportError, match=r"gate_proj.weight has shape \[64, 32\]"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_missing_config_json(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    with pytest.raises(HFImportError, match="no config.json"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_missing_weights(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(HFImportError, match="no weights; expected model.safetensors"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_corrupt_weights(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HFImportError, match="cannot read weights"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(HFImportError, match="not a directory"):
        import_hf(tmp_path / "nowhere", tmp_path / "out")


# ----------------------------------------------------------------------------------------
# Writing OUT_DIR


def test_an_existing_out_dir_is_kept_unless_forced(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HFImportError, match="already exists; pass --force"):
        import_hf(tmp_path / "hf", out)
    assert (out / "keep.txt").read_text() == "mine"
    import_hf(tmp_path / "hf", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "spec.yaml",
        "tokenizer.json",
        "weights.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temporary left


def test_a_failed_forced_import_leaves_the_old_out_dir(tmp_path: Path) -> None:
    hf_tiny.gpt2(tmp_path / "hf")
    out = import_hf(tmp_path / "hf", tmp_path / "out")
    before = (out / "spec.yaml").read_text()
    _edit_config(tmp_path / "hf", activation_function="quick_gelu")
    with pytest.raises(HFImportError):
        import_hf(tmp_path / "hf", out, force=True)
    assert (out / "spec.yaml").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


def test_the_command_prints_one_line_and_returns_1_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import-hf", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("llmspec import-hf: ") and err.count("\n") == 1


def test_the_cli_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf_tiny.t5(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "out" / "spec.yaml")]) == 0


def test_precision_is_the_stored_dtype(tmp_path: Path) -> None:
    hf = hf_tiny.llama(tmp_path / "hf")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    spec, weights, _ = _import(tmp_path / "bf16", tmp_path)
    assert spec.precision.dtype == "bf16"
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
