"""Imported models compute what the Hugging Face models compute.

For each family (and the non-default options the importer maps), a tiny random transformers
model is saved, imported with import-hf and built with ``llmspec.builder``. Logits must agree at
fp32 on padded batches (left padding with explicit position ids for decoders, right padding
for encoders), and greedy generation with our KV cache must pick the same 32 tokens as
transformers' ``generate(do_sample=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch

from llmspec.importers.hf.importer import expected_shapes, import_hf
from llmspec.spec.loading import load_spec

pytest.importorskip("transformers")
build_module = pytest.importorskip("llmspec.builder")

ATOL, RTOL = 1e-5, 1e-4
NEW_TOKENS = 32


def _import_and_build(hf_dir: Path, tmp_path: Path) -> Any:
    out = import_hf(hf_dir, tmp_path / "imported")
    spec = load_spec(out / "spec.yaml")
    model = build_module.build(spec, weights=out / "weights.safetensors")
    return model.eval()


def _tokens(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab - 1, (batch, length), generator=generator)


def _left_padded(lengths: list[int], vocab: int, pad: int) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask and position_ids (counting real tokens) of a left-padded batch."""
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    ids = _tokens(len(lengths), width, vocab, seed=1).masked_fill(mask == 0, pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _right_padded(lengths: list[int], vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = _tokens(len(lengths), width, vocab, seed=2).masked_fill(mask == 0, pad)
    return ids, mask


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    print(f"{what}: max abs diff {float((ours - theirs).abs().max()):.2e}")  # shown with -s
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def _greedy_decoder_only(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, eos: int, pad: int
) -> torch.Tensor:
    """Greedy decoding with our KV cache; finished rows emit pad, as transformers does."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids, mask, positions)
    last_position = positions[:, -1:]
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    chosen: list[torch.Tensor] = []
    for _ in range(NEW_TOKENS):
        token = out.logits[:, -1].argmax(-1).masked_fill(finished, pad)
        chosen.append(token)
        finished |= token == eos
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last_position = last_position + 1
        out = model(token[:, None], mask, last_position, list(out.present))
    return torch.stack(chosen, dim=1)


def _greedy_encoder_decoder(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, start: int, eos: int, pad: int
) -> torch.Tensor:
    encoded = model.encode(ids, mask)
    token = torch.full((ids.shape[0],), start, dtype=torch.long)
    past = None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    chosen: list[torch.Tensor] = []
    for _ in range(NEW_TOKENS):
        out = model.decode(token[:, None], mask, encoded.cross_key_values, past_key_values=past)
        past = list(out.present)
        token = out.logits[:, -1].argmax(-1).masked_fill(finished, pad)
        chosen.append(token)
        finished |= token == eos
        if finished.all():
            break
    return torch.stack(chosen, dim=1)


def _hf_generate(hf: Any, ids: torch.Tensor, mask: torch.Tensor, **tokens: int) -> torch.Tensor:
    """transformers' greedy search with nothing but the stop token (no forced eos etc.)."""
    from transformers import GenerationConfig

    # transformers 5 sizes T5's decoder cache by num_layers, not num_decoder_layers (an
    # IndexError when the decoder is deeper), so such a model generates without its cache.
    layers = getattr(hf.config, "num_layers", None)
    use_cache = getattr(hf.config, "num_decoder_layers", layers) == layers
    hf.generation_config = GenerationConfig(**tokens)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, use_cache=use_cache, **tokens
    )
    return hf.generate(input_ids=ids, attention_mask=mask, generation_config=config)


# ----------------------------------------------------------------------------------------
# Decoder-only: GPT-2 and Llama

DECODERS: dict[str, Callable[[Path], Any]] = {
    "gpt2": lambda d: hf_tiny.gpt2(d),
    "gpt2-relu-unscaled": lambda d: hf_tiny.gpt2(
        d, activation_function="relu", scale_attn_weights=False
    ),
    "llama-gqa-rope5000-untied": lambda d: hf_tiny.llama(d),
    "llama-geglu-tied-bias": lambda d: hf_tiny.llama(
        d, hidden_act="gelu", untied_head=False, attention_bias=True, mlp_bias=True
    ),
    "opt-pre-norm-relu-offset2": lambda d: hf_tiny.opt(d),
    "opt-post-norm-gelu-untied": lambda d: hf_tiny.opt(
        d, do_layer_norm_before=False, activation_function="gelu", tie_word_embeddings=False
    ),
    "mistral-gqa-head-dim-no-window": lambda d: hf_tiny.mistral(d),
    "mistral-window-as-long-as-context": lambda d: hf_tiny.mistral(d, sliding_window=128),
    "mistral-sliding-window-4": lambda d: hf_tiny.mistral(d, sliding_window=4),
    "qwen2-qkv-bias-tied": lambda d: hf_tiny.qwen2(d),
    "qwen3-qk-norm-head-dim-tied": lambda d: hf_tiny.qwen3(d),
    "qwen2-untied-mha": lambda d: hf_tiny.qwen2(
        d, tie_word_embeddings=False, num_key_value_heads=4
    ),
}


@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_decoder_only_logits_match_on_a_left_padded_batch(variant: str, tmp_path: Path) -> None:
    hf = DECODERS[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    eos = hf.config.eos_token_id
    ids, mask, positions = _left_padded([9, 6, 3], hf.config.vocab_size, pad=eos)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
    real = mask.bool()
    _close(mine[real], theirs[real], f"{variant} logits")


@pytest.mark.parametrize("variant", sorted(DECODERS))
def test_decoder_only_greedy_generation_matches(variant: str, tmp_path: Path) -> None:
    hf = DECODERS[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    eos = hf.config.eos_token_id
    ids, mask, _ = _left_padded([7, 4], hf.config.vocab_size, pad=eos)
    with torch.no_grad():
        theirs = _hf_generate(hf, ids, mask, eos_token_id=eos, pad_token_id=eos)[:, ids.shape[1] :]
        mine = _greedy_decoder_only(ours, ids, mask, eos=eos, pad=eos)
    print(f"{variant}: {mine.shape[1]} greedy tokens")
    assert mine.tolist() == theirs.tolist()


def test_decoder_only_cached_steps_match_a_full_forward(tmp_path: Path) -> None:
    """The cache path (prefill, then one token at a time) gives the logits of one long call."""
    hf_tiny.llama(tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    ids, mask, positions = _left_padded([8, 5], hf_tiny.VOCAB, pad=2)
    with torch.no_grad():
        full = ours(ids, mask, positions).logits
        out = ours(ids[:, :5], mask[:, :5], positions[:, :5])
        steps = [out.logits]
        for t in range(5, ids.shape[1]):
            out = ours(ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], out.present)
            steps.append(out.logits)
    real = mask.bool()
    _close(torch.cat(steps, dim=1)[real], full[real], "cached vs full")


# ----------------------------------------------------------------------------------------
# Encoder-only: BERT


def test_bert_masked_lm_logits_match_on_a_right_padded_batch(tmp_path: Path) -> None:
    hf = hf_tiny.bert(tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    ids, mask = _right_padded([10, 7, 4], hf_tiny.VOCAB, pad=0)
    token_types = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=token_types)
        mine = ours(ids, mask, token_types)
    real = mask.bool()
    _close(mine.logits[real], theirs.logits[real], "bert logits")


def test_bert_model_hidden_states_and_pooler_match(tmp_path: Path) -> None:
    hf = hf_tiny.bert(tmp_path / "hf", masked_lm=False, hidden_act="gelu_new")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    ids, mask = _right_padded([10, 7, 4], hf_tiny.VOCAB, pad=0)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask)
        mine = ours(ids, mask)
    real = mask.bool()
    _close(mine.last_hidden_state[real], theirs.last_hidden_state[real], "bert hidden")
    _close(mine.pooler_output, theirs.pooler_output, "bert pooler")


# Encoder-only: RoBERTa, XLM-RoBERTa (positions from pad_token_id + 1), DistilBERT

ENCODERS: dict[str, Callable[[Path], Any]] = {
    "roberta-masked-lm": lambda d: hf_tiny.roberta(d),
    "xlm-roberta-masked-lm-pad-3": lambda d: hf_tiny.roberta(
        d, xlm=True, pad_token_id=3, max_position_embeddings=68
    ),
    "distilbert-masked-lm": lambda d: hf_tiny.distilbert(d),
    "distilbert-masked-lm-gelu-tanh-untied": lambda d: hf_tiny.distilbert(
        d, activation="gelu_new", tie_word_embeddings=False
    ),
}


@pytest.mark.parametrize("variant", sorted(ENCODERS))
def test_encoder_masked_lm_logits_match_on_a_right_padded_batch(
    variant: str, tmp_path: Path
) -> None:
    hf = ENCODERS[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    pad = hf.config.pad_token_id
    ids, mask = _right_padded([10, 7, 4], hf_tiny.VOCAB, pad=pad)
    ids = ids.masked_fill((ids == pad) & mask.bool(), pad + 1)  # pad only where padding
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask)
        mine = ours(ids, mask)
    real = mask.bool()
    _close(mine.logits[real], theirs.logits[real], f"{variant} logits")


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_encoder_model_hidden_states_match(family: str, tmp_path: Path) -> None:
    hf = getattr(hf_tiny, family)(tmp_path / "hf", masked_lm=False)
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    ids, mask = _right_padded([10, 7, 4], hf_tiny.VOCAB, pad=hf.config.pad_token_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask)
        mine = ours(ids, mask)
    real = mask.bool()
    _close(mine.last_hidden_state[real], theirs.last_hidden_state[real], f"{family} hidden")
    if family == "roberta":  # RobertaModel has BERT's pooler
        _close(mine.pooler_output, theirs.pooler_output, "roberta pooler")


# ----------------------------------------------------------------------------------------
# Encoder-decoder: T5, mT5 and BART

SEQ2SEQ: dict[str, Callable[[Path], Any]] = {
    "t5-v1.0-relu-tied": lambda d: hf_tiny.t5(d, num_decoder_layers=3),
    "t5-v1.1-gated-gelu-untied": lambda d: hf_tiny.t5(
        d, feed_forward_proj="gated-gelu", untied_head=True
    ),
    "bart": lambda d: hf_tiny.bart(d),
    "mt5-gated-gelu-untied-deeper-decoder": lambda d: hf_tiny.mt5(d, num_decoder_layers=3),
    "bart-scaled-deeper-decoder": lambda d: hf_tiny.bart(d, scale_embedding=True, decoder_layers=3),
}


@pytest.mark.parametrize("variant", sorted(SEQ2SEQ))
def test_encoder_decoder_logits_match(variant: str, tmp_path: Path) -> None:
    hf = SEQ2SEQ[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    config = hf.config
    ids, mask = _right_padded([11, 8, 5], config.vocab_size, pad=config.pad_token_id)
    decoder_ids = _tokens(3, 6, config.vocab_size, seed=3)
    decoder_ids[:, 0] = config.decoder_start_token_id
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        encoded = ours.encode(ids, mask)
        mine = ours.decode(decoder_ids, mask, encoded.cross_key_values)
    real = mask.bool()
    _close(
        encoded.last_hidden_state[real],
        theirs.encoder_last_hidden_state[real],
        f"{variant} encoder",
    )
    _close(mine.logits, theirs.logits, f"{variant} logits")


@pytest.mark.parametrize("variant", sorted(SEQ2SEQ))
def test_encoder_decoder_greedy_generation_matches(variant: str, tmp_path: Path) -> None:
    hf = SEQ2SEQ[variant](tmp_path / "hf")
    ours = _import_and_build(tmp_path / "hf", tmp_path)
    config = hf.config
    ids, mask = _right_padded([9, 5], config.vocab_size, pad=config.pad_token_id)
    tokens = dict(
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    with torch.no_grad():
        theirs = _hf_generate(hf, ids, mask, **tokens)[:, 1:]
        mine = _greedy_encoder_decoder(
            ours,
            ids,
            mask,
            start=config.decoder_start_token_id,
            eos=config.eos_token_id,
            pad=config.pad_token_id,
        )
    print(f"{variant}: {mine.shape[1]} greedy tokens")
    assert mine.tolist() == theirs.tolist()


# ----------------------------------------------------------------------------------------
# Through the ONNX runtime: the imported model exported, loaded with runtime.load (no torch)


CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def _export(
    hf_dir: Path, tmp_path: Path, chat_template: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """The imported model's artifact, loaded by the runtime, and its manifest; the source
    gets ``chat_template`` in its tokenizer_config.json."""
    import json

    import runtime
    from llmspec.exporter.pipeline import export

    if chat_template is not None:
        config = {"chat_template": chat_template}
        (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    imported = import_hf(hf_dir, tmp_path / "imported")
    artifact = export(imported, tmp_path / "artifact", progress=lambda _: None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    return runtime.load(artifact, device="cpu"), manifest


# the new generative families (the torch tests above cover every family's variants)
ONNX_GENERATIVE: dict[str, Callable[[Path], Any]] = {
    "opt": lambda d: hf_tiny.opt(d),
    "mistral-sliding-window-5": lambda d: hf_tiny.mistral(d, sliding_window=5),
    "mt5": lambda d: hf_tiny.mt5(d),
    "qwen2": lambda d: hf_tiny.qwen2(d),
    "qwen3": lambda d: hf_tiny.qwen3(d, tie_word_embeddings=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ONNX_GENERATIVE))
def test_onnx_runtime_greedy_tokens_are_transformers(family: str, tmp_path: Path) -> None:
    """32 greedy tokens per prompt from a batch through our runtime equal transformers' for
    each prompt alone; decoders take the fused attention path; the source's chat template
    reaches the loaded model."""
    hf = ONNX_GENERATIVE[family](tmp_path / "hf")
    model, manifest = _export(tmp_path / "hf", tmp_path, CHAT_TEMPLATE)
    assert model.chat_template == CHAT_TEMPLATE  # imported, exported, exposed
    assert "chat_template.jinja" in manifest["files"]
    prompts = [_tokens(1, length, hf.config.vocab_size, seed=length)[0] for length in (7, 4)]
    result = model.generate(
        [p.tolist() for p in prompts], max_new_tokens=NEW_TOKENS, chain="greedy"
    )
    config = hf.config
    tokens = dict(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    if config.is_encoder_decoder:
        tokens["decoder_start_token_id"] = config.decoder_start_token_id
    for row, prompt in enumerate(prompts):
        ids = prompt[None]
        with torch.no_grad():
            theirs = _hf_generate(hf, ids, torch.ones_like(ids), **tokens)
        new = theirs[0, 1:] if config.is_encoder_decoder else theirs[0, ids.shape[1] :]
        print(f"{family} row {row}: {len(result.tokens[row])} tokens through the runtime")
        assert result.tokens[row] == new.tolist()
    print(f"{family} fusions: {manifest['fusions']}")
    if not config.is_encoder_decoder:
        assert (
            manifest["fusions"]["decoder.onnx"]["GroupQueryAttention"] == config.num_hidden_layers
        )


ONNX_ENCODERS: dict[str, Callable[[Path], Any]] = {
    "roberta": lambda d: hf_tiny.roberta(d),  # one token type, positions offset by 2
    "distilbert": lambda d: hf_tiny.distilbert(d),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(ONNX_ENCODERS))
def test_onnx_runtime_masked_lm_logits_are_transformers(family: str, tmp_path: Path) -> None:
    hf = ONNX_ENCODERS[family](tmp_path / "hf")
    model, manifest = _export(tmp_path / "hf", tmp_path)
    assert model.chat_template is None  # an artifact without one
    ids, mask = _right_padded([10, 7, 4], hf_tiny.VOCAB, pad=hf.config.pad_token_id)
    outputs = model.feeder.run(ids.numpy(), mask.numpy())
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    mine = torch.from_numpy(outputs["logits"])
    _close(mine[real], theirs[real], f"{family} logits through the runtime")
    print(f"{family} fusions: {manifest['fusions']}")
    assert manifest["fusions"]["encoder.onnx"]["Attention"] == hf.config.num_hidden_layers


# ----------------------------------------------------------------------------------------
# The importer's naming contract is the generated model's


SPECS = Path(__file__).resolve().parents[3] / "specs"


@pytest.mark.parametrize("spec_path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_expected_shapes_are_the_generated_models_state_dict(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    with torch.device("meta"):
        model = build_module.build(spec)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert expected_shapes(spec) == shapes
