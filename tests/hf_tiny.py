"""Tiny random Hugging Face models of the imported families, saved with save_pretrained.

Built from configs (no download), seeded, in eval mode with eager attention. Each factory takes
config overrides, so tests can vary one option at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

VOCAB = 320  # 256 bytes + specials fit a placeholder byte-level tokenizer
T5_VOCAB = 400  # also room for T5's 100 sentinels


def _save(model: Any, directory: Path) -> Any:
    model.eval()
    model.save_pretrained(directory)
    return model


def _randomize(model: Any) -> None:
    """Weights at a scale where mistakes show. transformers' init (std 0.02, zero biases, unit
    norms) makes tiny logits and hides a dropped bias, a swapped norm or gelu-vs-tanh."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
            elif ("norm" in name.lower() or ".ln_" in name) and name.endswith("weight"):
                parameter.normal_(1.0, 0.1)
            else:  # biases
                parameter.normal_(0.0, 0.1)


def bert(directory: Path, *, masked_lm: bool = True, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    options.update(overrides)
    config = transformers.BertConfig(**options)
    model_class = transformers.BertForMaskedLM if masked_lm else transformers.BertModel
    model = model_class(config)
    _randomize(model)
    return _save(model, directory)


def gpt2(directory: Path, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**options))
    _randomize(model)
    return _save(model, directory)


def llama(directory: Path, *, untied_head: bool = True, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=5000.0,
        tie_word_embeddings=not untied_head,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**options))
    _randomize(model)
    return _save(model, directory)


def t5(directory: Path, *, untied_head: bool = False, **overrides: Any) -> Any:
    """T5 v1.0 (relu, tied, rescaled) by default; ``feed_forward_proj="gated-gelu"`` and
    ``untied_head=True`` make it v1.1 (a separate lm_head, no rescale)."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=T5_VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        decoder_start_token_id=0,
        attn_implementation="eager",
    )
    if untied_head:
        options["tie_word_embeddings"] = False
    options.update(overrides)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**options))
    if untied_head:
        # transformers 5 ties T5's lm_head to shared in every case; untie it as a v1.1
        # checkpoint is (its lm_head.weight differs from shared.weight).
        model.lm_head.weight = torch.nn.Parameter(torch.empty(T5_VOCAB, 32))
    _randomize(model)
    return _save(model, directory)


def bart(directory: Path, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**options))
    _randomize(model)
    with torch.no_grad():
        model.final_logits_bias.normal_()
    return _save(model, directory)


def roberta(directory: Path, *, masked_lm: bool = True, xlm: bool = False, **overrides: Any) -> Any:
    """RoBERTa (or XLM-RoBERTa): positions from pad_token_id + 1 = 2, one token type."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        attn_implementation="eager",
    )
    options.update(overrides)
    prefix = "XLMRoberta" if xlm else "Roberta"
    config = getattr(transformers, f"{prefix}Config")(**options)
    head = "ForMaskedLM" if masked_lm else "Model"
    model = getattr(transformers, f"{prefix}{head}")(config)
    _randomize(model)
    return _save(model, directory)


def distilbert(directory: Path, *, masked_lm: bool = True, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    options.update(overrides)
    config = transformers.DistilBertConfig(**options)
    model_class = transformers.DistilBertForMaskedLM if masked_lm else transformers.DistilBertModel
    model = model_class(config)
    _randomize(model)
    return _save(model, directory)


def opt(directory: Path, **overrides: Any) -> Any:
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**options))
    _randomize(model)
    return _save(model, directory)


def mistral(directory: Path, **overrides: Any) -> Any:
    """Mistral without a binding window (sliding_window None by default here)."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=None,
        rope_theta=20000.0,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**options))
    _randomize(model)
    return _save(model, directory)


def mt5(directory: Path, **overrides: Any) -> Any:
    """mT5 (T5 v1.1: gated-gelu, a separate lm_head, no rescale)."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=T5_VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        decoder_start_token_id=0,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**options))
    # transformers 5 ties mT5's lm_head to shared; untie it as real checkpoints are
    model.lm_head.weight = torch.nn.Parameter(torch.empty(T5_VOCAB, options["d_model"]))
    _randomize(model)
    return _save(model, directory)


def qwen2(directory: Path, **overrides: Any) -> Any:
    """Qwen2: Llama with biases on q, k and v only; tied like Qwen2.5-0.5B."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**options))
    _randomize(model)
    return _save(model, directory)


def qwen3(directory: Path, **overrides: Any) -> Any:
    """Qwen3: Llama with an RMSNorm on each head's queries and keys; head_dim explicit."""
    torch.manual_seed(0)
    options: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=VOCAB - 2,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    options.update(overrides)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**options))
    _randomize(model)
    return _save(model, directory)
