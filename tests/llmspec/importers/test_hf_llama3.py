"""Llama 3.x imports: rope scaling (rope_type llama3) and several eos ids.

A tiny random Llama 3.1 is built by transformers (rope_scaling llama3 with a context beyond
its original length, ``eos_token_id`` the list <|end_of_text|>, <|eom_id|>, <|eot_id|>) with a
byte-level tokenizer whose Llama 3 special tokens are added tokens. The import keeps the first
eos id as eos and the others as ``generation.stop_tokens``; the imported model computes
transformers' logits on a left-padded batch longer than the original length, generates
transformers' greedy tokens through our ONNX runtime and stops at <|eot_id|>; export-hf gives
back the scaling and the eos list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch

from llmspec.importers.hf.importer import import_hf
from llmspec.importers.hf.mapping import HFImportError
from llmspec.spec.loading import load_spec

transformers = pytest.importorskip("transformers")
build_module = pytest.importorskip("llmspec.builder")

ORIGINAL = 16  # original_max_position_embeddings
MAX_POSITIONS = 128
SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": ORIGINAL,
}
THETA = 500000.0
BOS, END, EOM, EOT = 316, 317, 318, 319  # Llama 3's 128000, 128001, 128008, 128009
SPECIALS = {"<|begin_of_text|>": BOS, "<|end_of_text|>": END, "<|eom_id|>": EOM, "<|eot_id|>": EOT}
EOS_LIST = [END, EOM, EOT]
NEW_TOKENS = 32
TOLERANCE = 1e-4


def _tokenizer() -> Any:
    """Byte-level BPE: the 256 bytes on ids 0-255, Llama 3's special tokens as added tokens
    (ids 256-315 are no token), bos prepended as Llama 3's post-processor does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    from llmspec.tokenizer import byte_alphabet

    vocab = {symbol: i for i, symbol in enumerate(byte_alphabet())} | SPECIALS
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", BOS)]
    )
    return tokenizer


def _llama3(directory: Path, **overrides: Any) -> Any:
    """A tiny Llama 3.1-Instruct-like source: config, weights, generation_config.json with the
    eos list, tokenizer files naming <|eot_id|> as the tokenizer's eos (as Instruct does)."""
    options: dict[str, Any] = dict(
        max_position_embeddings=MAX_POSITIONS,
        rope_scaling=dict(SCALING),
        rope_theta=THETA,
        bos_token_id=BOS,
        eos_token_id=list(EOS_LIST),
    )
    model = hf_tiny.llama(directory, **(options | overrides))
    generation = {"bos_token_id": BOS, "eos_token_id": list(EOS_LIST), "do_sample": False}
    (directory / "generation_config.json").write_text(json.dumps(generation))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    fast.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    directory = tmp_path_factory.mktemp("llama3")
    model = _llama3(directory / "hf")
    return model, import_hf(directory / "hf", directory / "imported")


def _left_padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, ...]:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (len(lengths), width), generator=generator)
    ids = ids.masked_fill(mask == 0, END)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


LONG_BATCH = [45, 30, 21]  # every row beyond the original length, 16


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_llama3_rope_scaling_and_the_eos_list_become_positions_scaling_and_stop_tokens(
    source: tuple[Any, Path],
) -> None:
    _, out = source
    spec = load_spec(out / "spec.yaml")
    assert spec.positions.type == "rope" and spec.positions.base == THETA
    scaling = spec.positions.scaling
    assert scaling is not None and scaling.type == "llama3"
    assert (scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor) == (8.0, 1.0, 4.0)
    assert scaling.original_max_positions == ORIGINAL
    assert spec.context_length == MAX_POSITIONS
    # eos is config.json's first id; the others end generation as stop tokens
    assert spec.vocabulary.special_tokens.eos == "<|end_of_text|>"
    assert spec.vocabulary.special_tokens.bos == "<|begin_of_text|>"
    assert spec.generation is not None
    assert spec.generation.stop_tokens == ["<|eom_id|>", "<|eot_id|>"]


def test_a_transformers_4_config_with_rope_scaling_imports_the_same_positions(
    source: tuple[Any, Path], tmp_path: Path
) -> None:
    """Llama 3.1's published config.json (transformers 4): ``rope_scaling`` and a top-level
    ``rope_theta``, no rope_parameters; transformers 5 reads it as the same rope."""
    import shutil

    _, out = source
    hf_dir = tmp_path / "hf"
    shutil.copytree(out.parent / "hf", hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_scaling"] = {k: v for k, v in SCALING.items() if k != "rope_type"}
    config["rope_scaling"]["rope_type"] = "llama3"
    config["rope_theta"] = THETA
    (hf_dir / "config.json").write_text(json.dumps(config))
    loaded = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    assert loaded.rope_parameters == {**SCALING, "rope_theta": THETA}
    legacy = load_spec(import_hf(hf_dir, tmp_path / "imported") / "spec.yaml")
    assert legacy.positions == load_spec(out / "spec.yaml").positions


def test_llama3_logits_match_transformers_beyond_the_original_length(
    source: tuple[Any, Path],
) -> None:
    hf, out = source
    spec = load_spec(out / "spec.yaml")
    ours = build_module.build(spec, weights=out / "weights.safetensors").eval()
    ids, mask, positions = _left_padded(LONG_BATCH)
    plain_config = transformers.LlamaConfig(**hf.config.to_dict())
    plain_config.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    plain = transformers.LlamaForCausalLM(plain_config).eval()
    plain.load_state_dict(hf.state_dict())
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
        unscaled = plain(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    diff = _max_diff(mine[real], theirs[real])
    print(f"llama3 rope scaling: logits max |diff| {diff:.2e}")
    assert diff < TOLERANCE
    assert _max_diff(unscaled[real], theirs[real]) > 1e-2  # the scaling matters here


def _export(imported: Path, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    import runtime
    from llmspec.exporter.pipeline import export

    artifact = export(imported, tmp_path / "artifact", progress=lambda _: None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    return runtime.load(artifact, device="cpu"), manifest


def _hf_greedy(hf: Any, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    config = transformers.GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=NEW_TOKENS,
        eos_token_id=list(EOS_LIST),
        pad_token_id=END,
    )
    hf.generation_config = config
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
        )
    return [int(t) for t in out[0, len(prompt) :]]


def _prompts() -> list[list[int]]:
    ids, _, _ = _left_padded([20, 9], seed=7)
    return [ids[0].tolist(), ids[1, -9:].tolist()]


@pytest.mark.slow
def test_onnx_runtime_greedy_tokens_are_transformers_with_the_stop_ids(
    source: tuple[Any, Path], tmp_path: Path
) -> None:
    """32 greedy tokens per prompt through our runtime (a batch) equal transformers' (each
    prompt alone, stopping on the eos list); the runtime stops on every id of the list;
    generation.json carries them; the decoder takes the fused attention path."""
    hf, out = source
    model, manifest = _export(out, tmp_path)
    assert set(model.stop_ids) == set(EOS_LIST)
    generation = json.loads((tmp_path / "artifact" / "generation.json").read_text())
    assert generation["stop_token_ids"] == EOS_LIST
    prompts = _prompts()
    result = model.generate(prompts, max_new_tokens=NEW_TOKENS, chain="greedy")
    for row, prompt in enumerate(prompts):
        theirs = _hf_greedy(hf, prompt)
        print(f"llama3 row {row}: {len(result.tokens[row])} tokens, transformers {len(theirs)}")
        assert result.tokens[row] == theirs
    assert any(len(tokens) == NEW_TOKENS for tokens in result.tokens)
    print(f"llama3 fusions: {manifest['fusions']}")
    assert manifest["fusions"]["decoder.onnx"]["GroupQueryAttention"] == hf.config.num_hidden_layers


@pytest.mark.slow
def test_generation_stops_at_eot_id(source: tuple[Any, Path], tmp_path: Path) -> None:
    """The output rows of the third greedy token and of <|eot_id|> swapped: transformers then
    picks <|eot_id|> third and stops, and so does our runtime (eos is <|end_of_text|>)."""
    from safetensors.torch import load_file, save_file

    hf, _ = source
    prompt = _prompts()[0]
    third = _hf_greedy(hf, prompt)[2]
    assert third not in EOS_LIST
    hf_dir = tmp_path / "hf"
    model = _llama3(hf_dir)
    state = load_file(hf_dir / "model.safetensors")
    head = state["lm_head.weight"].clone()
    head[[third, EOT]] = head[[EOT, third]]
    state["lm_head.weight"] = head
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with torch.no_grad():
        model.lm_head.weight.copy_(head)
    theirs = _hf_greedy(model, prompt)
    assert theirs[-1] == EOT and len(theirs) == 3
    runtime_model, _ = _export(import_hf(hf_dir, tmp_path / "imported"), tmp_path)
    result = runtime_model.generate([prompt], max_new_tokens=NEW_TOKENS, chain="greedy")
    assert result.tokens[0] == theirs
    assert result.finish_reasons[0] == "eos"


def test_export_hf_round_trip_keeps_the_rope_scaling_and_the_eos_list(
    source: tuple[Any, Path], tmp_path: Path
) -> None:
    from llmspec.importers.hf.export import export_hf

    hf, out = source
    export_hf(out, tmp_path / "back")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["rope_parameters"] == {**SCALING, "rope_theta": THETA}
    generation = transformers.GenerationConfig.from_pretrained(
        tmp_path / "back", local_files_only=True
    )
    assert generation.eos_token_id == EOS_LIST
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "back", local_files_only=True, attn_implementation="eager"
    ).eval()
    ids, mask, positions = _left_padded(LONG_BATCH)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        again = back(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    diff = _max_diff(again[real], theirs[real])
    print(f"llama3 export-hf round trip: logits max |diff| {diff:.2e}")
    assert diff < TOLERANCE
    # and the export imports back to the same spec
    reimported = load_spec(import_hf(tmp_path / "back", tmp_path / "reimported") / "spec.yaml")
    original = load_spec(out / "spec.yaml")
    assert reimported.positions == original.positions
    assert reimported.generation == original.generation


def test_an_eos_id_that_is_no_token_of_the_tokenizer_is_refused(tmp_path: Path) -> None:
    _llama3(tmp_path / "hf")
    generation = {"bos_token_id": BOS, "eos_token_id": [END, 300]}  # 256-315: no token
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(generation))
    with pytest.raises(HFImportError, match="eos_token_id 300 is not a token of"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_a_tokenizer_the_placeholder_names_each_stop_id(tmp_path: Path) -> None:
    hf_tiny.llama(tmp_path / "hf", bos_token_id=1, eos_token_id=[2, 5, 7])
    spec = load_spec(import_hf(tmp_path / "hf", tmp_path / "out") / "spec.yaml")
    assert spec.vocabulary.special_tokens.eos == "</s>"
    assert spec.generation is not None and spec.generation.stop_tokens == ["<stop_5>", "<stop_7>"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert [tokenizer.token_to_id(t) for t in spec.generation.stop_tokens] == [5, 7]


# The families that share Llama's rope handling import every scaling rope.py knows, through
# config.json as transformers 5 writes it (rope_parameters)
SCALED: dict[str, tuple[str, dict[str, Any], int]] = {
    "llama-linear": ("llama", {"rope_type": "linear", "factor": 4.0}, MAX_POSITIONS),
    "mistral-yarn": (
        "mistral",
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": ORIGINAL},
        MAX_POSITIONS,
    ),
    # dynamic takes its original length from max_position_embeddings: the batch goes beyond
    "qwen2-dynamic": ("qwen2", {"rope_type": "dynamic", "factor": 4.0}, 20),
    "qwen3-llama3": ("qwen3", dict(SCALING), MAX_POSITIONS),
}


@pytest.mark.parametrize("variant", sorted(SCALED))
def test_scaled_rope_of_llama_like_families_imports_with_logits_parity(
    variant: str, tmp_path: Path
) -> None:
    family, scaling, max_positions = SCALED[variant]
    hf = getattr(hf_tiny, family)(
        tmp_path / "hf", rope_scaling=dict(scaling), max_position_embeddings=max_positions
    )
    assert hf.config.rope_parameters["rope_type"] == scaling["rope_type"]
    out = import_hf(tmp_path / "hf", tmp_path / "imported")
    spec = load_spec(out / "spec.yaml")
    assert spec.positions.type == "rope" and spec.positions.scaling is not None
    assert spec.positions.scaling.type == scaling["rope_type"]
    ours = build_module.build(spec, weights=out / "weights.safetensors").eval()
    plain_config = type(hf.config)(**hf.config.to_dict())
    theta = hf.config.rope_parameters["rope_theta"]
    plain_config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    plain = type(hf)(plain_config).eval()
    plain.load_state_dict(hf.state_dict())
    ids, mask, positions = _left_padded([30, 23])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, mask, positions).logits
        unscaled = plain(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    diff = _max_diff(mine[real], theirs[real])
    print(f"{variant}: logits max |diff| {diff:.2e}")
    assert diff < TOLERANCE
    assert _max_diff(unscaled[real], theirs[real]) > 1e-2  # the scaling matters here


def test_a_context_shorter_than_the_default_limit_bounds_max_new_tokens() -> None:
    """A source with no generation limit and a context under the spec's default 64 new tokens
    (a dynamic-rope model's max_position_embeddings) imports with the context as its limit."""
    from llmspec.importers.hf.generation import generation_section

    section, left_out = generation_section({}, True, context_length=20)
    assert section is not None and section["max_new_tokens"] == 20 and not left_out
    section, _ = generation_section({}, True, context_length=128)
    assert section is not None and "max_new_tokens" not in section
