"""export-hf: what llmspec holds goes back to Hugging Face, and transformers computes the same.

Round trips: a tiny random transformers model of each family, with a tokenizer, is saved,
imported with import-hf and exported with export-hf; transformers loads the export with
``AutoModelFor...``/``AutoTokenizer.from_pretrained`` (local files only) and gives the source
model's logits at fp32 on a padded batch and the source tokenizer's ids. Models that start in
llmspec (the tiny specs of specs/, with random weights, or bare with their seeded initial
weights) export to what our torch model computes. Specs no family holds are refused by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_tiny
import pytest
import torch
from safetensors.torch import load_file, save_file

from llmspec.cli import main
from llmspec.importers.hf.export import export_hf, generation_config
from llmspec.importers.hf.importer import import_hf
from llmspec.importers.hf.mapping import HFExportError
from llmspec.spec.loading import dump_spec, load_spec
from llmspec.spec.sections import ModelSpec

transformers = pytest.importorskip("transformers")
build_module = pytest.importorskip("llmspec.builder")

ATOL, RTOL = 1e-5, 1e-4
ROOT = Path(__file__).resolve().parents[3]
TEXTS = ["Hello world", "A man is playing a guitar.", "  ünï  cödé 🎸\ttabs <s>x</s>"]

AUTO = {
    "bert": "AutoModelForMaskedLM",
    "roberta": "AutoModelForMaskedLM",
    "distilbert": "AutoModelForMaskedLM",
    "gpt2": "AutoModelForCausalLM",
    "opt": "AutoModelForCausalLM",
    "llama": "AutoModelForCausalLM",
    "t5": "AutoModelForSeq2SeqLM",
    "bart": "AutoModelForSeq2SeqLM",
}


# ----------------------------------------------------------------------------------------
# Sources: tiny transformers models with a tokenizer of their own


def _byte_tokenizer(size: int, specials: dict[str, int], post: str | None = None) -> Any:
    """A byte-level BPE tokenizer: special tokens at the given ids, the 256 bytes on the lowest
    free ids, and a few merges; ``post`` wraps each text (BERT's "[CLS] $A [SEP]")."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    from llmspec.tokenizer import byte_alphabet

    free = [i for i in range(size) if i not in specials.values()]
    vocab = dict(zip(byte_alphabet(), free, strict=False))
    merges = [("Ġ", "a"), ("i", "n"), ("Ġ", "g"), ("o", "r")]
    next_id = free[len(vocab)]
    for left, right in merges:
        vocab[left + right] = next_id
        next_id = free[free.index(next_id) + 1]
    vocab.update(specials)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in specials])
    if post is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(t, i) for t, i in specials.items() if t in post]
        )
    return tokenizer


def _save_tokenizer(directory: Path, tokenizer: Any, **roles: str) -> None:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)
    fast.save_pretrained(directory)


def _bert(d: Path) -> Any:
    model = hf_tiny.bert(d)
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    roles = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]") | dict(
        mask_token="[MASK]"
    )
    _save_tokenizer(d, _byte_tokenizer(hf_tiny.VOCAB, specials, "[CLS] $A [SEP]"), **roles)
    return model


def _gpt2(d: Path) -> Any:
    model = hf_tiny.gpt2(d)
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, {"<|endoftext|>": hf_tiny.VOCAB - 1})
    _save_tokenizer(d, tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return model


def _llama(d: Path) -> Any:
    model = hf_tiny.llama(d)
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, {"<unk>": 0, "<s>": 1, "</s>": 2}, "<s> $A")
    _save_tokenizer(d, tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return model


def _t5(d: Path, **overrides: Any) -> Any:
    model = hf_tiny.t5(d, **overrides)
    specials = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    specials |= {f"<extra_id_{i}>": hf_tiny.T5_VOCAB - 1 - i for i in range(32)}
    tokenizer = _byte_tokenizer(hf_tiny.T5_VOCAB, specials, "$A </s>")
    _save_tokenizer(d, tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return model


def _bart(d: Path) -> Any:
    model = hf_tiny.bart(d)
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": hf_tiny.VOCAB - 1}
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, specials, "<s> $A </s>")
    roles = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    _save_tokenizer(d, tokenizer, mask_token="<mask>", **roles)
    return model


def _roberta(d: Path, **options: Any) -> Any:
    model = hf_tiny.roberta(d, **options)
    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": hf_tiny.VOCAB - 1}
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, specials, "<s> $A </s>")
    roles = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    _save_tokenizer(d, tokenizer, mask_token="<mask>", cls_token="<s>", sep_token="</s>", **roles)
    return model


def _distilbert(d: Path) -> Any:
    model = hf_tiny.distilbert(d)
    specials = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    roles = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, specials, "[CLS] $A [SEP]")
    _save_tokenizer(d, tokenizer, mask_token="[MASK]", **roles)
    return model


def _opt(d: Path, **options: Any) -> Any:
    model = hf_tiny.opt(d, **options)
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, {"<pad>": 1, "</s>": hf_tiny.VOCAB - 1}, "</s> $A")
    _save_tokenizer(d, tokenizer, pad_token="<pad>", bos_token="</s>", eos_token="</s>")
    return model


def _mistral(d: Path) -> Any:
    model = hf_tiny.mistral(d)
    tokenizer = _byte_tokenizer(hf_tiny.VOCAB, {"<unk>": 0, "<s>": 1, "</s>": 2}, "<s> $A")
    _save_tokenizer(d, tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return model


def _mt5(d: Path) -> Any:
    model = hf_tiny.mt5(d)
    specials = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    specials |= {f"<extra_id_{i}>": hf_tiny.T5_VOCAB - 1 - i for i in range(32)}
    tokenizer = _byte_tokenizer(hf_tiny.T5_VOCAB, specials, "$A </s>")
    _save_tokenizer(d, tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return model


# source -> (the family it exports as, its maker); a family the export has no config for of
# its own goes out as the one with the same layers (Mistral's unwindowed layers are Llama's,
# mT5's T5 v1.1's, XLM-RoBERTa's RoBERTa's)
SOURCES: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "bert": ("bert", _bert),
    "gpt2": ("gpt2", _gpt2),
    "llama": ("llama", _llama),
    "t5-v1.0-tied-rescaled": ("t5", _t5),
    "t5-v1.1-gated-untied": (
        "t5",
        lambda d: _t5(d, feed_forward_proj="gated-gelu", untied_head=True, num_decoder_layers=3),
    ),
    "t5-gated-tied-unscaled": (
        "t5",
        lambda d: _t5(d, feed_forward_proj="gated-silu", tie_word_embeddings=False),
    ),
    "bart": ("bart", _bart),
    "roberta": ("roberta", _roberta),
    "xlm-roberta": ("roberta", lambda d: _roberta(d, xlm=True)),
    "distilbert": ("distilbert", _distilbert),
    "opt": ("opt", _opt),
    "opt-post-norm": ("opt", lambda d: _opt(d, do_layer_norm_before=False)),
    "mistral": ("llama", _mistral),
    "mt5": ("t5", _mt5),
}


@pytest.fixture(scope="module", params=sorted(SOURCES))
def round_trip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(family, the source model, its directory, the import, the export)."""
    family, make = SOURCES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    source = make(root / "hf")
    imported = import_hf(root / "hf", root / "imported")
    exported = export_hf(imported, root / "exported")
    assert exported.family == family
    return family, source, root / "hf", imported, root / "exported"


def _load(family: str, directory: Path) -> Any:
    auto = getattr(transformers, AUTO[family])
    return auto.from_pretrained(
        directory, local_files_only=True, attn_implementation="eager"
    ).eval()


def _ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(
        5, vocab - 10, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def _padded(lengths: list[int], vocab: int, pad: int, left: bool) -> tuple[torch.Tensor, ...]:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, width - length :] = 1
        else:
            mask[row, :length] = 1
    return _ids(len(lengths), width, vocab, seed=1).masked_fill(mask == 0, pad), mask


def _logits(family: str, model: Any, vocab: int, pad: int, start: int | None) -> torch.Tensor:
    """transformers' logits of ``model`` on a padded batch, at the real positions."""
    with torch.no_grad():
        if family in ("gpt2", "opt", "llama"):  # left padding, positions counting real tokens
            ids, mask = _padded([9, 6, 3], vocab, pad, left=True)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            return out[mask.bool()]
        ids, mask = _padded([10, 7, 4], vocab, pad, left=False)
        if family in ("bert", "roberta", "distilbert"):
            return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        decoder_ids = _ids(3, 6, vocab, seed=3)
        assert start is not None
        decoder_ids[:, 0] = start
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits


def _ours(spec: ModelSpec, weights: Any, vocab: int, pad: int, start: int | None) -> torch.Tensor:
    """Our torch model's logits on the batch of :func:`_logits`."""
    model = build_module.build(spec, weights=weights).eval()
    with torch.no_grad():
        if spec.architecture == "decoder-only":
            ids, mask = _padded([9, 6, 3], vocab, pad, left=True)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            return model(ids, mask, positions).logits[mask.bool()]
        ids, mask = _padded([10, 7, 4], vocab, pad, left=False)
        if spec.architecture == "encoder-only":
            return model(ids, mask).logits[mask.bool()]
        decoder_ids = _ids(3, 6, vocab, seed=3)
        assert start is not None
        decoder_ids[:, 0] = start
        return model.decode(decoder_ids, mask, model.encode(ids, mask).cross_key_values).logits


def _close(mine: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    print(f"{what}: max |diff| {float((mine - theirs).abs().max()):.2e}")  # shown with -s
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------------
# Round trips: import -> export-hf -> transformers


def test_a_round_trip_gives_the_source_models_logits(round_trip: Any) -> None:
    family, source, _, imported, exported = round_trip
    model = _load(family, exported)
    config = source.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    start = getattr(config, "decoder_start_token_id", None)
    theirs = _logits(family, source, config.vocab_size, pad, start)
    _close(_logits(family, model, config.vocab_size, pad, start), theirs, f"{family} exported")
    spec = load_spec(imported / "spec.yaml")
    ours = _ours(spec, imported / "weights.safetensors", config.vocab_size, pad, start)
    _close(ours, theirs, f"{family} ours")


def test_a_round_trip_tokenizer_gives_the_source_tokenizers_ids(round_trip: Any) -> None:
    _, _, source_dir, _, exported = round_trip
    theirs = transformers.AutoTokenizer.from_pretrained(source_dir, local_files_only=True)
    mine = transformers.AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert mine(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert sorted(mine.all_special_tokens) == sorted(theirs.all_special_tokens)


def test_a_round_trip_imports_again_as_the_same_spec(round_trip: Any, tmp_path: Path) -> None:
    _, _, _, imported, exported = round_trip
    again = import_hf(exported, tmp_path / "again")
    assert dump_spec(load_spec(again / "spec.yaml")).replace(
        "name: exported", "name: hf"
    ) == dump_spec(load_spec(imported / "spec.yaml")).replace("name: imported", "name: hf")
    first, second = (
        load_file(imported / "weights.safetensors"),
        load_file(again / "weights.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_exported_files_are_those_transformers_reads(round_trip: Any) -> None:
    family, _, _, _, exported = round_trip
    files = {p.name for p in exported.iterdir()}
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    expected = {"config.json", "model.safetensors"} | tokenizer_files
    encoder = family in ("bert", "roberta", "distilbert")
    assert files == expected | (set() if encoder else {"generation_config.json"})
    config = transformers.AutoConfig.from_pretrained(exported, local_files_only=True)
    assert config.model_type == family
    if not encoder:
        generation = transformers.GenerationConfig.from_pretrained(exported, local_files_only=True)
        assert (generation.eos_token_id, generation.do_sample) == (config.eos_token_id, False)


def test_a_round_trip_generates_greedily_by_its_generation_config(round_trip: Any) -> None:
    """generation_config.json holds greedy search with the stop token and nothing forced: the
    export's generate() by its defaults picks what the source picks told exactly that."""
    family, source, _, _, exported = round_trip
    if family in ("bert", "roberta", "distilbert"):
        return  # encoders do not generate; test_the_exported_files... checks no file is written
    config = source.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    ids, mask = _padded([7, 4], config.vocab_size, pad, left=not config.is_encoder_decoder)
    tokens = dict(eos_token_id=config.eos_token_id, pad_token_id=pad)
    if config.is_encoder_decoder:
        tokens["decoder_start_token_id"] = config.decoder_start_token_id
    # transformers 5 sizes T5's decoder cache by num_layers (an IndexError when the decoder is
    # deeper), so such a model generates without its cache, as in test_hf_parity.py
    cache = getattr(config, "num_decoder_layers", None) in (None, config.num_hidden_layers)
    source.generation_config = transformers.GenerationConfig(**tokens)  # nothing forced
    told = transformers.GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=8, use_cache=cache, **tokens
    )
    model = _load(family, exported)
    with torch.no_grad():
        theirs = source.generate(input_ids=ids, attention_mask=mask, generation_config=told)
        mine = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, use_cache=cache)
    assert mine.tolist() == theirs.tolist()


def test_a_bert_without_mlm_head_round_trips_as_bert_model(tmp_path: Path) -> None:
    source = hf_tiny.bert(tmp_path / "hf", masked_lm=False)
    exported = export_hf(import_hf(tmp_path / "hf", tmp_path / "imported"), tmp_path / "out")
    assert exported.architecture == "BertModel"
    model = transformers.AutoModel.from_pretrained(
        tmp_path / "out", local_files_only=True, attn_implementation="eager"
    ).eval()
    ids, mask = _padded([10, 7, 4], hf_tiny.VOCAB, 0, left=False)
    with torch.no_grad():
        theirs, mine = source(input_ids=ids, attention_mask=mask), model(ids, attention_mask=mask)
    real = mask.bool()
    _close(mine.last_hidden_state[real], theirs.last_hidden_state[real], "bert-model hidden")
    _close(mine.pooler_output, theirs.pooler_output, "bert-model pooler")


# ----------------------------------------------------------------------------------------
# Models that start in llmspec


def _randomized_run(spec_name: str, directory: Path, **changes: Any) -> ModelSpec:
    """A run-like directory: the spec (with ``changes``, as :func:`_spec_with` takes them),
    random weights at a scale where mistakes show, its tokenizer (the built-in byte-level one)."""
    spec = _spec_with(load_spec(ROOT / "specs" / f"{spec_name}.yaml"), **changes)
    torch.manual_seed(1)
    model = build_module.build(spec)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
            elif "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.1)
            else:
                parameter.normal_(0.0, 0.1)
        for name, buffer in model.named_buffers():
            if name == "logits_bias":
                buffer.normal_()
    directory.mkdir()
    (directory / "spec.yaml").write_text(dump_spec(spec))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    return spec


# variant -> (the spec in specs/, the family it exports as, changes to it)
SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "tiny-decoder": ("tiny-decoder", "llama", {}),
    "tiny-decoder-untied": ("tiny-decoder", "llama", {"head__tied": False}),
    "tiny-gpt": ("tiny-gpt", "gpt2", {}),
    "tiny-gpt-post-norm-offset-2": (
        "tiny-gpt",
        "opt",
        {"norm__position": "post", "positions__offset": 2, "head__tied": False},
    ),
    "tiny-encoder": ("tiny-encoder", "bert", {}),
    "tiny-encoder-untied": ("tiny-encoder", "bert", {"head__tied": False}),
    "tiny-t5": ("tiny-t5", "t5", {}),
    "tiny-t5-untied": ("tiny-t5", "t5", {"head__tied": False, "head__rescale": False}),
    "tiny-bart": ("tiny-bart", "bart", {}),
    "tiny-bart-untied-scaled": (
        "tiny-bart",
        "bart",
        {"head__tied": False, "embeddings__scale": True},
    ),
}


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_a_trained_llmspec_model_exports_and_transformers_reproduces_our_logits(
    variant: str, tmp_path: Path
) -> None:
    spec_name, family, changes = SPECS[variant]
    spec = _randomized_run(spec_name, tmp_path / "run", **changes)
    exported = export_hf(tmp_path / "run", tmp_path / "hf")
    assert exported.family == family
    model = _load(family, tmp_path / "hf")
    vocab = spec.vocabulary.size
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = model.config.decoder_start_token_id if family in ("t5", "bart") else None
    ours = _ours(spec, tmp_path / "run" / "weights.safetensors", vocab, pad, start)
    _close(_logits(family, model, vocab, pad, start), ours, f"{variant} exported")


@pytest.mark.slow  # a real training run (the optimizer's and backward's first calls)
def test_a_run_of_llmspec_train_exports_and_transformers_reproduces_its_logits(
    tmp_path: Path,
) -> None:
    from llmspec.trainer.loop import train

    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    spec_file = ROOT / "specs" / "tiny-decoder.yaml"
    run = train(
        spec_file,
        [tmp_path / "corpus.txt"],
        tmp_path / "run",
        steps=2,
        batch_size=2,
        seq_len=32,
        progress=False,
    )
    export_hf(run, tmp_path / "hf")
    spec = load_spec(run / "spec.yaml")
    model = _load("llama", tmp_path / "hf")
    mine = _logits("llama", model, spec.vocabulary.size, 0, None)
    _close(mine, _ours(spec, run / "weights.safetensors", spec.vocabulary.size, 0, None), "run")


def test_a_bare_spec_exports_its_seeded_initial_weights(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "specs" / "tiny-gpt.yaml")
    export_hf(ROOT / "specs" / "tiny-gpt.yaml", tmp_path / "hf")
    again = load_file(import_hf(tmp_path / "hf", tmp_path / "imported") / "weights.safetensors")
    torch.manual_seed(build_module.INIT_SEED)
    initial = build_module.build(spec).state_dict()
    assert again.keys() == initial.keys()
    assert all(torch.equal(again[k], initial[k]) for k in initial)


def test_the_tokenizer_of_a_spec_gives_our_ids(tmp_path: Path) -> None:
    from llmspec.tokenizer import load_for_spec

    spec = load_spec(ROOT / "specs" / "tiny-decoder.yaml")
    export_hf(spec, tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = load_for_spec(spec)
    assert [theirs(t)["input_ids"] for t in TEXTS] == [ours.encode(t).ids for t in TEXTS]
    assert (theirs.eos_token, theirs.pad_token) == ("</s>", "<pad>")
    assert theirs.model_max_length == spec.context_length


def test_the_decoding_chain_goes_to_generation_config_in_transformers_order() -> None:
    spec = load_spec(ROOT / "specs" / "tiny-decoder.yaml")  # temperature 0.8, top_k 40, sample
    config, left_out = generation_config(spec, {"eos": 2, "bos": 1, "pad": 0})
    assert left_out == []
    assert config == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_new_tokens": 64,
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 40,
    }
    chain = [{"type": "top_p", "p": 0.9}, {"type": "temperature", "value": 0.7}, {"type": "sample"}]
    reordered = _spec_with(spec, generation={"max_new_tokens": 8, "chain": chain})
    config, left_out = generation_config(reordered, {"eos": 2})
    assert "temperature" not in config and "top_p" not in config and config["do_sample"]
    assert left_out == [
        "the decoding steps before sample (top_p, temperature): transformers applies "
        "repetition_penalty, no_repeat_ngram, temperature, top_k, top_p, min_p, typical in this "
        "order, each once"
    ]


def test_fp16_weights_export_as_fp16_and_load_so(tmp_path: Path) -> None:
    spec = _spec_with(load_spec(ROOT / "specs" / "tiny-gpt.yaml"), precision={"dtype": "fp16"})
    export_hf(spec, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float16"
    assert {t.dtype for t in load_file(tmp_path / "hf" / "model.safetensors").values()} == {
        torch.float16
    }
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", local_files_only=True, dtype="auto"
    )
    assert model.dtype == torch.float16


def test_the_exports_activation_names_are_the_imports_read_backwards() -> None:
    from llmspec.importers.hf.export_config import GATED_NAMES, PLAIN_NAMES, T5_PROJ
    from llmspec.importers.hf.translation import GATED_ACTIVATIONS, PLAIN_ACTIVATIONS

    assert all(PLAIN_ACTIVATIONS[hf] == ours for ours, hf in PLAIN_NAMES.items())
    assert all(GATED_ACTIVATIONS[hf] == ours for ours, hf in GATED_NAMES.items())
    assert set(T5_PROJ) == set(PLAIN_NAMES) | set(GATED_NAMES)


def test_stop_tokens_join_eos_in_generation_configs_eos_list(tmp_path: Path) -> None:
    decoder = load_spec(ROOT / "specs" / "tiny-decoder.yaml")
    generation = decoder.model_dump(mode="json")["generation"]
    export_hf(
        _spec_with(decoder, generation={**generation, "stop_tokens": ["<unk>"]}), tmp_path / "hf"
    )
    config = transformers.GenerationConfig.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert config.eos_token_id == [2, 3]  # </s>, then <unk>


# ----------------------------------------------------------------------------------------
# Refusals


def _spec_with(spec: ModelSpec, **changes: Any) -> ModelSpec:
    data = spec.model_dump(mode="json")
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[key] = value
    return ModelSpec.model_validate(data)


def _refusal(spec: ModelSpec, tmp_path: Path) -> str:
    with pytest.raises(HFExportError) as err:
        export_hf(spec, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    return str(err.value)


def test_alibi_positions_are_refused_naming_the_families(tmp_path: Path) -> None:
    spec = _spec_with(load_spec(ROOT / "specs" / "tiny-decoder.yaml"), positions={"type": "alibi"})
    assert _refusal(spec, tmp_path) == (
        "positions.type alibi cannot be exported to Hugging Face: no decoder-only family "
        "llmspec exports has it; the families and their positions: gpt2/opt (learned), "
        "llama/qwen2/qwen3/mistral/gemma/gemma2/gemma3_text/gpt_neox/phi3 (rope)"
    )


def test_a_mix_no_family_has_is_refused_naming_every_difference(tmp_path: Path) -> None:
    gpt = load_spec(ROOT / "specs" / "tiny-gpt.yaml")
    spec = _spec_with(
        gpt, norm={"type": "rmsnorm", "position": "pre"}, attention={"heads": 4, "kv_heads": 2}
    )
    message = _refusal(spec, tmp_path)
    assert message.startswith("spec 'tiny-gpt' cannot be exported to Hugging Face: as the gpt2 ")
    assert "norm.type is rmsnorm (gpt2 has layernorm)" in message
    assert "attention.kv_heads is 2 (gpt2 has kv_heads = heads)" in message


def test_an_encoder_no_family_holds_is_refused_as_its_closest_family(tmp_path: Path) -> None:
    """Without token types BERT and RoBERTa cannot hold it, with a pooler DistilBERT cannot."""
    encoder = load_spec(ROOT / "specs" / "tiny-encoder.yaml")
    spec = _spec_with(encoder, embeddings={"token_types": 0, "norm": True}, head__pooler=True)
    assert _refusal(spec, tmp_path) == (
        "spec 'tiny-encoder' cannot be exported to Hugging Face: as the bert family (the closest "
        "of bert, roberta, distilbert) it differs in embeddings.token_types is 0 (bert has at "
        "least 1)"
    )
    export_hf(_spec_with(spec, head__pooler=False), tmp_path / "distilbert")
    config = json.loads((tmp_path / "distilbert" / "config.json").read_text())
    assert config["architectures"] == ["DistilBertForMaskedLM"]


def test_an_mlm_head_without_its_bias_is_refused(tmp_path: Path) -> None:
    encoder = load_spec(ROOT / "specs" / "tiny-encoder.yaml")
    spec = _spec_with(encoder, head__logits_bias="none")
    assert "head.logits_bias is none (BertForMaskedLM's head has a learned bias)" in _refusal(
        spec, tmp_path
    )


def test_a_knob_no_family_table_lists_is_refused_when_it_does_not_read_back(
    tmp_path: Path,
) -> None:
    """The read-back catches what the family tables do not list: here parallel attention and
    feed-forward, whose weights have the names of Llama's, so only the read-back sees it."""
    _randomized_run("tiny-decoder", tmp_path / "run")
    data = load_spec(tmp_path / "run" / "spec.yaml").model_dump(mode="json")
    data["block"] = {"parallel": "separate-norms"}
    (tmp_path / "run" / "spec.yaml").write_text(dump_spec(ModelSpec.model_validate(data)))
    with pytest.raises(HFExportError) as err:
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert str(err.value) == (
        "spec 'tiny-decoder' cannot be exported to Hugging Face: as the llama family it differs "
        'in block.parallel is "separate-norms" (llama reads back unset)'
    )
    assert not (tmp_path / "hf").exists()


def test_an_existing_directory_is_kept_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("old")
    spec = ROOT / "specs" / "tiny-gpt.yaml"
    with pytest.raises(HFExportError, match="already exists; pass --force"):
        export_hf(spec, tmp_path / "hf")
    assert (tmp_path / "hf" / "old.txt").exists()
    export_hf(spec, tmp_path / "hf", force=True)
    assert not (tmp_path / "hf" / "old.txt").exists()
    assert (tmp_path / "hf" / "config.json").exists()


def test_weights_that_do_not_fit_the_spec_are_refused_by_name(tmp_path: Path) -> None:
    _randomized_run("tiny-gpt", tmp_path / "run")
    weights = load_file(tmp_path / "run" / "weights.safetensors")
    del weights["decoder.final_norm.bias"]
    save_file(weights, str(tmp_path / "run" / "weights.safetensors"))
    with pytest.raises(HFExportError, match="missing decoder.final_norm.bias, which the spec has"):
        export_hf(tmp_path / "run", tmp_path / "hf")


# ----------------------------------------------------------------------------------------
# The command line


def test_the_cli_verb_writes_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ROOT / "specs" / "tiny-bart.yaml"
    assert main(["export-hf", str(spec), "-o", str(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BartForConditionalGeneration"]
    assert main(["export-hf", str(spec), "-o", str(tmp_path / "hf")]) == 1
    assert main(["export-hf", str(spec), "-o", str(tmp_path / "hf"), "--force"]) == 0


def test_the_cli_verb_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["export-hf", str(tmp_path / "empty"), "-o", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmspec export-hf: ")
    shutil.rmtree(tmp_path / "empty")
    assert not (tmp_path / "hf").exists()
