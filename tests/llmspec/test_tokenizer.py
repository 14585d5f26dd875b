"""Tokenizers built for specs: lossless, special tokens where the spec says, ids in range."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspec.spec.loading import load_spec
from llmspec.tokenizer import (
    TokenizerMismatch,
    byte_level,
    check_fits,
    load_for_spec,
    sentinel,
    train_bpe,
)

SPECS = Path(__file__).resolve().parents[2] / "specs"
T5 = load_spec(SPECS / "tiny-t5.yaml")
GPT = load_spec(SPECS / "tiny-gpt.yaml")
BYTE_T5 = byte_level(T5)


@given(st.text(max_size=200))
def test_byte_level_round_trips_any_text(text):
    ids = BYTE_T5.encode(text).ids
    assert all(0 <= i < T5.vocabulary.size for i in ids)
    assert BYTE_T5.decode(ids, skip_special_tokens=False) == text


def test_byte_level_uses_one_token_per_byte():
    text = "héllo, wörld"
    assert len(BYTE_T5.encode(text).ids) == len(text.encode("utf-8"))


def test_byte_level_special_ids_come_first_and_sentinels_descend_from_the_top():
    ids = check_fits(BYTE_T5, T5)
    assert ids == {"pad": 0, "eos": 1, "unk": 2}
    size = T5.vocabulary.size
    for index in range(T5.vocabulary.sentinels):
        assert BYTE_T5.token_to_id(sentinel(index)) == size - 1 - index


def test_shared_bos_eos_is_one_token():
    tokenizer = byte_level(GPT)
    ids = check_fits(tokenizer, GPT)
    assert ids["bos"] == ids["eos"]


def test_special_token_text_is_one_token_not_its_bytes():
    assert BYTE_T5.encode("a</s>b").ids == [
        BYTE_T5.token_to_id("a"),
        1,
        BYTE_T5.token_to_id("b"),
    ]


def test_bpe_trains_to_the_vocabulary_size_with_specials(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    text = (SPECS / "tiny-t5.yaml").read_text().replace("size: 275", "size: 320")
    spec = load_spec(text)
    tokenizer = train_bpe(spec, [corpus])
    ids = check_fits(tokenizer, spec)
    assert ids["pad"] == 0
    encoded = tokenizer.encode("the quick brown fox").ids
    assert len(encoded) < len("the quick brown fox")  # merges were learned
    assert tokenizer.decode(encoded) == "the quick brown fox"
    assert max(tokenizer.get_vocab().values()) < spec.vocabulary.size


def test_a_tokenizer_file_that_lacks_the_specs_tokens_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    byte_level(GPT).save(str(path))
    text = (
        (SPECS / "tiny-t5.yaml")
        .read_text()
        .replace(
            "special_tokens: {pad:",
            "tokenizer: {type: file, path: tokenizer.json}\n  special_tokens: {pad:",
        )
    )
    spec = load_spec(text)
    with pytest.raises(TokenizerMismatch) as info:
        load_for_spec(spec, tmp_path)
    message = str(info.value)
    assert "'</s>' is not in the tokenizer" in message and "sentinel" in message


def test_missing_tokenizer_file_names_the_file(tmp_path):
    text = (
        (SPECS / "tiny-gpt.yaml")
        .read_text()
        .replace("special_tokens:", "tokenizer: {type: file, path: nope.json}\n  special_tokens:")
    )
    with pytest.raises(TokenizerMismatch, match=r"nope\.json: tokenizer file not found"):
        load_for_spec(load_spec(text), tmp_path)
