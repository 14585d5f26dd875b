"""The runtime's tokenizer encodes and decodes real tokenizer files exactly as transformers does.

The files are real ones (tests/data/tokenizers/README.md says where each comes from): a
sentence-transformers BERT with fixed padding and truncation in its tokenizer.json, a ByteLevel
BPE without post-processor (GPT-2's layout) and a SentencePiece BPE with byte fallback and a
bos-adding post-processor (Llama 2 / Mistral's layout). The reference is transformers' fast
tokenizer loaded from the same folder (``PreTrainedTokenizerFast.from_pretrained``, which reads
tokenizer_config.json and special_tokens_map.json too) and ``AutoTokenizer`` (the class the
folder's tokenizer_config.json names). Every text of a corpus of awkward strings must give the
same ids, with and without special tokens, and the same text back.
"""

from __future__ import annotations

import lzma
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

from runtime.tokenizer import ArtifactTokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "tokenizers"
FOLDERS = ("all-minilm-l6-v2", "claude-v1", "mistral-7b-v0.1")

CORPUS = [
    "",
    " ",
    "A man is playing a guitar.",
    "Hello world",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand\u2028separators",
    "multiple    spaces   and\t\t\ttabs",
    "\n\n\n",
    "Café naïve résumé ÅNGSTRÖM straße",
    "e\u0301 combining acute, a\u0308 diaeresis, \u0915\u094d\u0937 conjunct",
    "\ufb01 ligature, \uff21\uff22\uff23 fullwidth, \u2460 circled, x\u00b2 superscript",
    "emoji 🤗🎸 family 👩\u200d👩\u200d👧 flag 🇫🇷 skin 👍🏽",
    "中文字符，日本語のテキスト。한국어 문장",
    "<s> [CLS] </s> [SEP] [MASK] [PAD] <unk> <|endoftext|> <pad> <EOT>",
    "<s>Hello</s>[CLS]x[SEP]",
    "don't do it , he said . really ? yes ! I'm sure they're fine",
    "Mr. O'Neil's cat isn't here ; it ' s gone",
    "\u00a0non-breaking\u2009thin\u200bzero-width\ufeffbom",
    "x" * 300,
    "12345678901234 3.14159 1,000,000 0x1F",
    "def f(x):\n    return x ** 2  # comment\n",
    "\x00\x01\x7f control characters \x1b[0m",
    "Ελληνικά Русский текст עברית العربية",
    "\U0001d54f\U0001d550 math letters, \u2167 roman numeral",
]


def _folder(name: str, tmp: Path) -> Path:
    """The folder ``name`` with its tokenizer.json decompressed, in ``tmp``."""
    source = DATA / name
    target = tmp / name
    target.mkdir()
    for path in source.iterdir():
        if path.name.endswith(".xz"):
            (target / path.name[: -len(".xz")]).write_bytes(lzma.decompress(path.read_bytes()))
        else:
            shutil.copyfile(path, target / path.name)
    return target


@pytest.fixture(scope="module", params=FOLDERS)
def real(request: Any, tmp_path_factory: Any) -> tuple[ArtifactTokenizer, dict[str, Any]]:
    """(ours, {"fast": ..., "auto": ...}) for one real tokenizer folder."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = _folder(request.param, tmp_path_factory.mktemp("tokenizers"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        references = {
            "fast": PreTrainedTokenizerFast.from_pretrained(str(folder)),
            "auto": AutoTokenizer.from_pretrained(str(folder)),
        }
    return ArtifactTokenizer.from_file(folder / "tokenizer.json"), references


def test_real_files_are_small_and_described():
    total = sum(path.stat().st_size for path in DATA.rglob("*") if path.is_file())
    assert total < 3 * 1024 * 1024
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}/`" in readme for name in FOLDERS)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_gives_transformers_ids_for_every_corpus_text(real, add_special_tokens):
    ours, references = real
    for text in CORPUS:
        got = [int(i) for i in ours.encode(text, add_special_tokens=add_special_tokens).ids]
        for name, reference in references.items():
            wanted = reference(text, add_special_tokens=add_special_tokens)["input_ids"]
            assert got == wanted, (name, text)


def test_encode_pairs_gives_transformers_ids(real):
    ours, references = real
    for first, second in zip(CORPUS, reversed(CORPUS), strict=True):
        got = [int(i) for i in ours.encode(first, pair=second).ids]
        for name, reference in references.items():
            assert got == reference(first, second)["input_ids"], (name, first, second)


def test_runtime_framing_is_the_files_post_processor(real):
    """What the runtime feeds a model (``frames_texts``: the post-processor's framing, else
    none for a decoder prompt) is transformers' ``tokenizer(text)``."""
    ours, references = real
    for text in CORPUS:
        got = ours.ids(text, add_special_tokens=True)
        assert got == references["fast"](text)["input_ids"], text
        bare = ours.ids(text)
        assert ours.frames_texts == (got != bare or len(got) > len(bare)), text


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_gives_transformers_text_for_every_corpus_text(real, skip_special_tokens):
    ours, references = real
    for text in CORPUS:
        ids = references["fast"](text)["input_ids"]
        got = ours.decode(ids, skip_special_tokens=skip_special_tokens)
        for name, reference in references.items():
            wanted = reference.decode(ids, skip_special_tokens=skip_special_tokens)
            assert got == wanted, (name, text)


def test_decode_of_single_tokens_gives_transformers_text(real):
    """Streaming decodes short id runs: every id of the corpus alone, and each prefix."""
    ours, references = real
    reference = references["fast"]
    for text in CORPUS[:12]:
        ids = reference(text, add_special_tokens=False)["input_ids"]
        for end in range(len(ids) + 1):
            assert ours.decode(ids[:end], skip_special_tokens=False) == reference.decode(
                ids[:end], skip_special_tokens=False
            ), (text, end)
        for token in ids:
            assert ours.decode([token], skip_special_tokens=False) == reference.decode(
                [token], skip_special_tokens=False
            ), (text, token)


# The post-processors of the reference families, each put on a real vocabulary (Claude v1's
# ByteLevel BPE: <SOS> = 4 stands for bos / [CLS], <EOT> = 0 for eos / [SEP]).
POST_PROCESSORS = {
    "bert": lambda p: p.BertProcessing(("<EOT>", 0), ("<SOS>", 4)),
    "roberta": lambda p: p.RobertaProcessing(("<EOT>", 0), ("<SOS>", 4)),
    "t5-eos-only": lambda p: p.TemplateProcessing(
        single="$A <EOT>", pair="$A <EOT> $B <EOT>", special_tokens=[("<EOT>", 0)]
    ),
    "llama-bos": lambda p: p.TemplateProcessing(
        single="<SOS> $A", pair="<SOS> $A <SOS> $B:1", special_tokens=[("<SOS>", 4)]
    ),
    "gpt2-none": lambda p: p.ByteLevel(trim_offsets=False),
}


@pytest.mark.parametrize("family", sorted(POST_PROCESSORS))
def test_each_familys_post_processor_frames_as_transformers(tmp_path, family):
    from tokenizers import Tokenizer, processors

    folder = _folder("claude-v1", tmp_path)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.post_processor = POST_PROCESSORS[family](processors)
    raw.save(str(folder / "tokenizer.json"))
    ours = ArtifactTokenizer.from_file(folder / "tokenizer.json")
    reference = _reference(folder)
    assert ours.frames_texts == (family != "gpt2-none")
    for text in CORPUS:
        assert ours.ids(text, add_special_tokens=True) == reference(text)["input_ids"], text
        got = list(ours.encode(text, pair="and a second text").ids)
        assert got == reference(text, "and a second text")["input_ids"], text
    framed = ours.ids("Hello", add_special_tokens=True)
    bare = ours.ids("Hello")
    expected = {
        "bert": [4, *bare, 0],
        "roberta": [4, *bare, 0],
        "t5-eos-only": [*bare, 0],
        "llama-bos": [4, *bare],
        "gpt2-none": bare,
    }
    assert framed == expected[family]


def test_padding_and_truncation_of_the_file_never_reach_a_row(tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens and truncates at 128;
    neither applies: the runtime pads batches itself and refuses an over-long text."""
    folder = _folder("all-minilm-l6-v2", tmp_path)
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert raw.padding is not None and raw.padding["length"] == 128
    assert raw.truncation is not None and raw.truncation["max_length"] == 128
    ours = ArtifactTokenizer.from_file(folder / "tokenizer.json")
    ids = ours.ids("A man is playing a guitar.", add_special_tokens=True)
    assert ids == [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102]
    assert ours.ids("A man is playing a guitar.") == ids[1:-1]
    long_text = "word " * 400
    assert len(ours.ids(long_text, add_special_tokens=True)) == 402
    assert len(ours.encode_batch(["a", "a b c"])[0].ids) == 3  # [CLS] a [SEP], no padding


def test_frames_texts_says_which_files_add_special_tokens(tmp_path):
    frames = {
        name: ArtifactTokenizer.from_file(_folder(name, tmp_path) / "tokenizer.json").frames_texts
        for name in FOLDERS
    }
    assert frames == {"all-minilm-l6-v2": True, "claude-v1": False, "mistral-7b-v0.1": True}


# -- the importer's copy: tokenizer.json rewritten as transformers loads it beside its config


def _imported(folder: Path) -> ArtifactTokenizer:
    """The folder's tokenizer.json as the HF importer writes it (``as_transformers_loads``)."""
    from tokenizers import Tokenizer

    from llmspec.importers.hf.vocabulary import as_transformers_loads

    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    written, _ = as_transformers_loads(
        text, Tokenizer.from_str(text), folder / "tokenizer_config.json", []
    )
    (folder / "imported.json").write_text(written, encoding="utf-8")
    return ArtifactTokenizer.from_file(folder / "imported.json")


def _reference(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PreTrainedTokenizerFast.from_pretrained(str(folder))


def test_import_removes_the_files_padding_and_truncation_and_keeps_the_rest(tmp_path):
    import json

    folder = _folder("all-minilm-l6-v2", tmp_path)
    ours = _imported(folder)
    written = json.loads((folder / "imported.json").read_text(encoding="utf-8"))
    original = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert written["padding"] is None and written["truncation"] is None
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model"):
        assert written[key] == original[key], key
    reference = _reference(folder)
    for text in CORPUS:
        assert ours.ids(text, add_special_tokens=True) == reference(text)["input_ids"], text


def test_import_keeps_a_file_that_needs_no_rewrite_byte_for_byte(tmp_path):
    folder = _folder("claude-v1", tmp_path)
    _imported(folder)
    assert (folder / "imported.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_import_frames_by_the_files_post_processor_not_add_bos_token(tmp_path):
    """transformers 5 ignores tokenizer_config.json's add_bos_token / add_eos_token when a
    tokenizer.json exists: its post-processor frames texts, in the imported file too."""
    import json

    folder = _folder("mistral-7b-v0.1", tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.update(add_bos_token=False, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    reference = _reference(folder)
    assert reference("Hello world")["input_ids"] == [1, 22557, 1526]
    ours = _imported(folder)
    for text in CORPUS:
        assert ours.ids(text, add_special_tokens=True) == reference(text)["input_ids"], text
        assert list(ours.encode(text, pair="second").ids) == reference(text, "second")["input_ids"]


def test_import_makes_the_tokens_the_config_files_name_special_as_transformers_does(tmp_path):
    """Tokens of the vocabulary that special_tokens_map.json / tokenizer_config.json name but
    tokenizer.json has not added: transformers adds them as special tokens, which changes how
    texts split and what decoding skips; the imported file does the same."""
    import json

    folder = _folder("claude-v1", tmp_path)
    named = {
        "mask_token": "ing",
        "pad_token": {"content": "world", "lstrip": False, "normalized": False},
        "additional_special_tokens": ["the", "<not-in-the-vocabulary>"],
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(named), encoding="utf-8")
    reference = _reference(folder)
    notes: list[str] = []
    from tokenizers import Tokenizer

    from llmspec.importers.hf.vocabulary import as_transformers_loads

    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    written, _ = as_transformers_loads(
        text, Tokenizer.from_str(text), folder / "tokenizer_config.json", notes
    )
    assert any("<not-in-the-vocabulary>" in note for note in notes)
    (folder / "imported.json").write_text(written, encoding="utf-8")
    ours = ArtifactTokenizer.from_file(folder / "imported.json")
    as_is = ArtifactTokenizer.from_file(folder / "tokenizer.json")
    sample = "singing in the world"
    assert as_is.ids(sample) != reference(sample)["input_ids"]
    for text in [*CORPUS, sample, "theworld", "ing ing"]:
        ids = reference(text)["input_ids"]
        assert ours.ids(text, add_special_tokens=True) == ids, text
        for skip in (True, False):
            wanted = reference.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == wanted, (text, skip)


@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "claude-v1"])
def test_import_decodes_with_transformers_clean_up_of_tokenization_spaces(tmp_path, name):
    """``clean_up_tokenization_spaces: true``: transformers cleans up after decoding (not for
    BPE models); the imported file's decoder does the same."""
    import json

    folder = _folder(name, tmp_path)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    config["clean_up_tokenization_spaces"] = True
    config_path.write_text(json.dumps(config), encoding="utf-8")
    reference = _reference(folder)
    ours = _imported(folder)
    texts = [*CORPUS, "a  . b  , c ' s d ' ' e", "it ' s n't 'm 've 're ?! ."]
    changed = 0
    for text in texts:
        ids = reference(text)["input_ids"]
        for skip in (True, False):
            wanted = reference.decode(ids, skip_special_tokens=skip)
            assert ours.decode(ids, skip_special_tokens=skip) == wanted, (text, skip)
            changed += wanted != reference.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
    assert (changed > 0) == (name == "all-minilm-l6-v2")  # BPE: transformers ignores it


# -- end to end: import, export, runtime.embed


@pytest.mark.slow  # an import and an ONNX export with its parity gate
def test_an_imported_bert_with_a_padding_tokenizer_embeds_as_transformers(tmp_path):
    """A BERT (tiny, random weights) with all-MiniLM-L6-v2's tokenizer files, whose
    tokenizer.json pads to 128: imported, exported and embedded by the runtime, it gives
    transformers' mean-pooled embeddings (before the fix the padding sat inside every text)."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import runtime
    from llmspec.exporter.pipeline import export
    from llmspec.importers.hf.importer import import_hf

    hf_dir = _folder("all-minilm-l6-v2", tmp_path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(hf_dir)
    import_hf(hf_dir, tmp_path / "imported")
    export(tmp_path / "imported", tmp_path / "artifact")
    ours = runtime.load(tmp_path / "artifact", device="cpu")
    texts = ["A man is playing a guitar.", "  ünï  cödé 🎸\ttabs [CLS] x", "don't"]
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] < 128  # transformers does not apply the file's padding
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    wanted = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    got = np.asarray(ours.embed(texts))
    np.testing.assert_allclose(got, wanted, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # an import and an ONNX export with its parity gate
def test_an_imported_llama_prompt_starts_with_bos_and_generates_as_transformers(tmp_path):
    """A Llama (tiny, random weights) with Mistral 7B's tokenizer files: the runtime encodes
    a text prompt as transformers does (``<s>`` first, from the file's post-processor) and
    greedy decoding gives transformers' tokens and text."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import runtime
    from llmspec.exporter.pipeline import export
    from llmspec.importers.hf.importer import import_hf

    hf_dir = _folder("mistral-7b-v0.1", tmp_path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(hf_dir)
    import_hf(hf_dir, tmp_path / "imported")
    export(tmp_path / "imported", tmp_path / "artifact")
    ours = runtime.load(tmp_path / "artifact", device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    prompt = "Hello world, 🎸 naïve"
    ids = tokenizer(prompt, return_tensors="pt")
    assert int(ids["input_ids"][0, 0]) == 1
    with torch.no_grad():
        theirs = model.generate(**ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    new = theirs[0, ids["input_ids"].shape[1] :].tolist()
    result = ours.generate(prompt, max_new_tokens=8, chain="greedy")
    assert result.prompt_tokens[0] == ids["input_ids"][0].tolist()
    assert result.tokens[0] == new
    assert result.texts[0] == tokenizer.decode(new)
