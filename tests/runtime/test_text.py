"""Incremental detokenization: whole characters only, stop strings never leak."""

from pathlib import Path

import pytest

from llmspec.spec.loading import load_spec
from llmspec.tokenizer import byte_level
from runtime.generation import RowText

SPECS = Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level(load_spec(SPECS / "tiny-gpt.yaml"))


def _row(tokenizer, stop=()):
    return RowText(lambda ids: tokenizer.decode(ids, skip_special_tokens=False), stop, frozenset())


def _stream(tokenizer, row, text):
    released = []
    for token in tokenizer.encode(text).ids:
        row.push(token)
        released.append(row.release(final=row.stopped))
        if row.stopped:
            break
    row.flush()
    released.append(row.release(final=True))
    return released


def test_multibyte_characters_are_released_whole(tokenizer):
    text = "héllo wörld → 日本"
    assert len(tokenizer.encode(text).ids) == len(text.encode())  # one token per byte
    row = _row(tokenizer)
    released = _stream(tokenizer, row, text)
    assert "".join(released) == row.text == text
    assert not any("\ufffd" in piece for piece in released)


@pytest.mark.parametrize("stop", ["wö", "ld", "→ 日", "lo w"])
def test_text_is_cut_before_the_stop_string_which_never_leaks(tokenizer, stop):
    text = "héllo wörld → 日本"
    row = _row(tokenizer, [stop, "unrelated"])
    released = _stream(tokenizer, row, text)
    assert row.stopped
    assert row.text == text[: text.find(stop)]
    assert "".join(released) == row.text


def test_held_back_text_comes_out_when_the_stop_string_does_not_complete(tokenizer):
    row = _row(tokenizer, ["abc"])
    released = _stream(tokenizer, row, "xxabxab")
    assert not row.stopped
    assert "".join(released) == "xxabxab"
    assert released[3] == ""  # "xxab": "ab" may begin "abc"


def test_an_incomplete_character_at_the_end_is_flushed_as_a_replacement(tokenizer):
    row = _row(tokenizer)
    ids = tokenizer.encode("a日").ids[:-1]  # "a" and two of the three bytes of 日
    for token in ids:
        row.push(token)
    assert row.release(final=False) == "a"
    row.flush()
    assert row.release(final=True).startswith("\ufffd")
