"""Safe loading: what the YAML layer accepts, what it refuses, and how it says so."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmspec import SpecError, load_spec
from llmspec.spec.yaml_safe import MAX_BYTES, MAX_DEPTH, load_yaml

DECODER = """\
name: tiny-decoder
architecture: decoder-only
vocabulary:
  size: 260
  special_tokens: {bos: "<s>", eos: "</s>", pad: "<pad>"}
context_length: 128
d_model: 64
layers: 2
attention: {heads: 4, kv_heads: 2}
feed_forward: {d_ff: 128, activation: swiglu}
norm: {type: rmsnorm, eps: 1e-5}
positions: {type: rope}
objective: {type: causal-lm}
generation:
  chain:
    - {type: temperature, value: 0.8}
    - {type: top_p, p: 0.9}
    - {type: sample}
"""


def replace(old: str, new: str, text: str = DECODER) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def problems(source: str | bytes | Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    return info.value


def only_problem(source: str | bytes | Path) -> str:
    error = problems(source)
    assert len(error.problems) == 1, str(error)
    return str(error.problems[0])


def test_the_base_spec_is_valid() -> None:
    spec = load_spec(DECODER)
    assert spec.name == "tiny-decoder"
    assert spec.kv_heads == 2


# ----------------------------------------------------------------------------------------
# Tags


def test_python_tags_are_rejected_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = replace("layers: 2", f"layers: !!python/object/apply:os.system ['touch {marker}']")
    message = only_problem(text)
    assert ":8:9: layers: the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [
        "!!python/name:os.system ''",
        "!!str 2",
        "!!int '2'",
        "!!float 2",
        "!custom 2",
        "!<tag:yaml.org,2002:str> 2",
        "! 2",
        "!!map {a: 1}",
        "!!seq [1]",
    ],
)
def test_every_explicit_tag_is_rejected(value: str) -> None:
    message = only_problem(replace("layers: 2", f"layers: {value}"))
    assert ":8:9: layers: the YAML tag" in message
    assert "is not allowed in a spec" in message


def test_a_tag_on_a_key_is_rejected() -> None:
    message = only_problem(replace("layers: 2", "!!str layers: 2"))
    assert ":8:1: <document>: the YAML tag 'tag:yaml.org,2002:str' is not allowed" in message


# ----------------------------------------------------------------------------------------
# Anchors and aliases


def test_an_anchor_is_rejected_where_it_is_defined() -> None:
    message = only_problem(replace("d_model: 64", "d_model: &width 64"))
    assert ":7:10: d_model: anchors and aliases (&name, *name) are not allowed" in message


def test_an_alias_is_rejected_even_without_its_anchor() -> None:
    message = only_problem(replace("d_model: 64", "d_model: *width"))
    assert ":7:10: d_model: anchors and aliases" in message


def test_a_merge_key_is_rejected() -> None:
    text = replace("attention: {heads: 4, kv_heads: 2}", "attention: {<<: *base, heads: 4}")
    assert "anchors and aliases" in only_problem(text)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['lol0: &lol0 "lol"']
    for level in range(1, levels + 1):
        items = ", ".join([f"*lol{level - 1}"] * width)
        lines.append(f"lol{level}: &lol{level} [{items}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_document_fails_at_its_first_anchor() -> None:
    # 9 ** 9 (387 million) strings if expanded; the loader stops before the first alias.
    message = only_problem(billion_laughs() + DECODER)
    assert ":1:7: lol0: anchors and aliases" in message


def test_a_billion_laughs_document_fails_as_yaml_text_too() -> None:
    with pytest.raises(SpecError, match="anchors and aliases"):
        load_yaml(billion_laughs())


# ----------------------------------------------------------------------------------------
# Duplicate keys, depth, size, documents, encodings


def test_duplicate_keys_are_rejected_naming_both_lines() -> None:
    error = problems(DECODER + "layers: 3\n")
    (problem,) = error.problems
    assert (problem.line, problem.column, problem.path) == (19, 1, ("layers",))
    assert "duplicate key 'layers' (first given on line 8)" in problem.message


def test_duplicate_keys_in_a_nested_block_mapping_are_rejected() -> None:
    text = replace("  size: 260\n", "  size: 260\n  size: 300\n")
    message = only_problem(text)
    assert ":5:3: vocabulary.size: duplicate key 'size' (first given on line 4)" in message


def nested(depth: int) -> str:
    """``extra`` holding lists nested ``depth`` deep."""
    return DECODER + "extra: " + "[" * depth + "]" * depth + "\n"


def test_nesting_deeper_than_the_cap_is_rejected() -> None:
    message = only_problem(nested(MAX_DEPTH + 5))
    assert f"nesting deeper than {MAX_DEPTH} levels" in message
    assert ":19:" in message


def test_nesting_within_the_cap_is_not_a_depth_error() -> None:
    message = only_problem(nested(MAX_DEPTH - 3))
    assert "unknown key 'extra'" in message


def test_pathological_nesting_fails_cleanly() -> None:
    # Far past Python's recursion limit: the loader must stop at the cap, not recurse.
    with pytest.raises(SpecError, match="nesting deeper"):
        load_spec("a: " + "[" * 100_000 + "\n")
    with pytest.raises(SpecError, match="nesting deeper"):
        load_spec("".join(" " * i + f"k{i}:\n" for i in range(200)))


def test_text_over_the_size_cap_is_rejected_before_parsing() -> None:
    text = DECODER + "#" * MAX_BYTES + "\n"
    message = only_problem(text)
    assert f"specs are capped at {MAX_BYTES}" in message


def test_a_file_over_the_size_cap_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(DECODER + "#" * MAX_BYTES + "\n")
    message = only_problem(path)
    assert message.startswith(f"{path}: ")
    assert f"capped at {MAX_BYTES}" in message


def test_multiple_documents_are_rejected() -> None:
    message = only_problem(DECODER + "---\n" + DECODER)
    assert ":19:1: <document>: a spec file holds one YAML document" in message


def test_one_document_with_explicit_markers_is_fine() -> None:
    assert load_spec("---\n" + DECODER + "...\n").name == "tiny-decoder"


def test_non_utf8_bytes_are_rejected_with_their_place(tmp_path: Path) -> None:
    data = replace("tiny-decoder", "tiny-d\xe9coder").encode("latin-1")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(data)
    for source in (path, data):
        message = only_problem(source)
        assert ":1:13: <document>: not UTF-8 text (byte 12); save it as UTF-8" in message


def test_utf8_bytes_and_a_byte_order_mark_are_fine() -> None:
    assert load_spec(DECODER.encode()).name == "tiny-decoder"
    assert load_spec("\ufeff" + DECODER).name == "tiny-decoder"


def test_control_characters_are_rejected_with_their_place() -> None:
    message = only_problem(replace("tiny-decoder", "tiny\x00decoder"))
    assert ":1:11: <document>: invalid YAML: the character U+0000 is not allowed" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_an_empty_spec_is_one_clear_problem(text: str) -> None:
    assert "a spec is a mapping of sections" in only_problem(text)


def test_an_empty_file_is_one_clear_problem(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert "got an empty file" in only_problem(path)


@pytest.mark.parametrize(
    ("text", "what"),
    [("- a\n- b\n", "got a list"), ("tiny\n", "got the text 'tiny'"), ("42\n", "got 42")],
)
def test_a_spec_that_is_not_a_mapping_is_one_clear_problem(text: str, what: str) -> None:
    message = only_problem(text)
    assert (
        f":1:1: <document>: a spec is a mapping of sections (name:, architecture:, ...), {what}"
        in (message)
    )


@pytest.mark.parametrize("key", ["1", "~", "true", "[a]", "{a: 1}"])
def test_mapping_keys_must_be_words(key: str) -> None:
    message = only_problem(DECODER + f"? {key}\n: x\n")
    assert "mapping keys must be plain words" in message


def test_a_missing_file_and_a_directory_are_spec_errors(tmp_path: Path) -> None:
    assert "no such file" in only_problem(tmp_path / "absent.yaml")
    assert "no such file" in only_problem(str(tmp_path / "absent.yaml"))
    assert "is a directory" in only_problem(tmp_path)


def test_one_line_text_that_cannot_be_a_file_name_is_read_as_text() -> None:
    assert "a spec is a mapping" in only_problem("x" * 5000)
    assert "not allowed" in only_problem("a\x00b")


def test_integers_beyond_64_bits_are_rejected_cheaply() -> None:
    # 5000 digits is past Python's int-from-text limit: the loader must not even try.
    message = only_problem(replace("d_model: 64", "d_model: " + "9" * 5000))
    assert ":7:10: d_model: the integer 99999999999999999999... is out of range" in message
    message = only_problem(replace("d_model: 64", "d_model: 0x" + "f" * 17))
    assert "out of range" in message


# ----------------------------------------------------------------------------------------
# YAML 1.1 surprises, handled deliberately


def test_yaml_11_booleans_stay_strings() -> None:
    data = load_yaml("a: no\nb: on\nc: yes\nd: off\ne: y\nf: n\n").data
    assert data == {"a": "no", "b": "on", "c": "yes", "d": "off", "e": "y", "f": "n"}


def test_name_no_is_the_string_no() -> None:
    assert load_spec(replace("name: tiny-decoder", "name: no")).name == "no"


def test_exponents_without_a_dot_are_numbers() -> None:
    data = load_yaml("a: 1e5\nb: 1e-5\nc: 1.0e-5\nd: -2E+3\ne: .5\n").data
    assert data == {"a": 1e5, "b": 1e-5, "c": 1e-5, "d": -2e3, "e": 0.5}
    assert all(isinstance(v, float) for v in data.values())
    assert load_spec(DECODER).norm.eps == 1e-5


def test_only_the_core_schema_resolves_plain_scalars() -> None:
    data = load_yaml(
        "a: 010\nb: 0o17\nc: 0x1F\nd: 1_000\ne: ~\nf: null\ng: True\nh: .inf\ni: -.inf\n"
        "j: 12:30\nk: 2024-01-01\n"
    ).data
    assert data["a"] == 10  # decimal, not YAML 1.1 octal
    assert (data["b"], data["c"]) == (15, 31)
    assert data["d"] == "1_000"  # YAML 1.1 digit separators are text
    assert data["e"] is None and data["f"] is None
    assert data["g"] is True
    assert (data["h"], data["i"]) == (math.inf, -math.inf)
    assert (data["j"], data["k"]) == ("12:30", "2024-01-01")  # no sexagesimals, no dates
    assert math.isnan(load_yaml("x: .nan\n").data["x"])


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n"])
def test_yaml_11_booleans_on_a_boolean_field_say_to_use_true_or_false(word: str) -> None:
    message = only_problem(DECODER + f"bias: {word}\n")
    assert f":19:7: bias: expected true or false, got the text '{word}'" in message
    assert "use true/false" in message


def test_true_and_false_are_booleans() -> None:
    assert load_spec(DECODER + "bias: false\n").bias is False


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("layers: 2", 'layers: "2"', ":8:9: layers: expected a whole number, got the text '2'"),
        ("eps: 1e-5", "eps: '1e-5'", ":11:28: norm.eps: expected a number, got the text '1e-5'"),
        ("size: 260", 'size: "260"', ":4:9: vocabulary.size: expected a whole number"),
    ],
)
def test_quoted_numbers_are_not_numbers(old: str, new: str, expected: str) -> None:
    assert expected in only_problem(replace(old, new))


def test_quoted_words_stay_text() -> None:
    assert load_yaml('a: "true"\nb: "null"\nc: "1e5"\n').data == {
        "a": "true",
        "b": "null",
        "c": "1e5",
    }


# ----------------------------------------------------------------------------------------
# Every problem at once


def test_several_problems_are_reported_at_once_in_source_order() -> None:
    text = replace("d_model: 64", "d_model: -64")
    text = replace("kv_heads", "kv_hed", text)
    text = replace("activation: swiglu", "activation: swigloo", text)
    text = replace("type: rope", "type: rop", text)
    error = problems(text)
    assert str(error).startswith("4 problems in spec\n")
    assert [(p.line, ".".join(map(str, p.path))) for p in error.problems] == [
        (7, "d_model"),
        (9, "attention.kv_hed"),
        (10, "feed_forward.activation"),
        (12, "positions.type"),
    ]
    assert "did you mean 'kv_heads'?" in str(error)
    assert "did you mean 'swiglu'?" in str(error)
    assert "did you mean 'rope'?" in str(error)


def test_cross_field_problems_are_reported_together_with_field_errors() -> None:
    text = replace("layers: 2", "layers: 0")  # a field error
    text = replace("kv_heads: 2", "kv_heads: 3", text)  # a rule on attention
    text = replace("    - {type: sample}\n", "", text)  # a rule on generation
    text = replace('eos: "</s>", ', "", text)  # a rule across vocabulary and generation
    error = problems(text)
    messages = [str(p) for p in error.problems]
    assert len(messages) == 4, str(error)
    assert (
        "<string>:5:19: vocabulary.special_tokens.eos: a model that generates needs" in messages[0]
    )
    assert "<string>:8:9: layers: must be greater than 0, got 0" in messages[1]
    assert "<string>:9:33: attention.kv_heads: kv_heads (3) must divide heads (4)" in messages[2]
    assert "<string>:16:5: generation.chain: the chain has no selector" in messages[3]


def test_rules_that_read_an_invalid_field_are_skipped_not_crashed() -> None:
    # heads is text, so neither the heads/d_model nor the rope rule can run; the field error
    # is reported alone and nothing escapes.
    message = only_problem(replace("heads: 4, kv_heads: 2", "heads: four, kv_heads: 3"))
    assert ":9:20: attention.heads: expected a whole number, got the text 'four'" in message


def test_the_error_text_lists_every_problem_under_a_count() -> None:
    error = problems("name: Bad Name\n")
    lines = str(error).splitlines()
    assert lines[0] == f"{len(error.problems)} problems in spec"
    assert lines[1:] == [str(p) for p in error.problems]
