"""Fuzzing spec loading: whatever the text, the only failure a user sees is a SpecError.

(a) arbitrary text, YAML-ish token soup and random YAML documents; (b) random mutations of
valid specs of every family (delete a key, misspell a key, replace a value, change a tag).
A bad spec never escapes as another exception, and a mutated spec's problems each carry a
message, a field path and a place.
"""

from __future__ import annotations

import copy
import typing
from typing import Any, get_args, get_origin

import yaml
from hypothesis import given
from hypothesis import strategies as st

from llmspec import ModelSpec, SpecError, dump_spec, load_spec
from llmspec.spec.sections import Section
from llmspec.spec.yaml_safe import load_yaml

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

ENCODER = """\
name: tiny-encoder
architecture: encoder-only
vocabulary:
  size: 300
  special_tokens: {pad: "[PAD]", unk: "[UNK]", mask: "[MASK]", bos: "[CLS]", eos: "[SEP]"}
context_length: 128
d_model: 64
layers: 2
attention: {heads: 4}
feed_forward: {d_ff: 256, activation: gelu}
norm: {type: layernorm, position: post, eps: 1e-12}
positions: {type: learned, max_positions: 128}
embeddings: {token_types: 2, norm: true}
head: {tied: true, transform: true, pooler: true, logits_bias: learned}
dropout: {hidden: 0.1, attention: 0.1}
objective: {type: masked-lm, mask_rate: 0.15, mask_fraction: 0.8, random_fraction: 0.1}
"""

SPAN_CORRUPTION = """\
name: tiny-t5
architecture: encoder-decoder
vocabulary:
  size: 400
  special_tokens: {pad: "<pad>", eos: "</s>", unk: "<unk>"}
  sentinels: 100
context_length: 128
d_model: 64
layers: 2
decoder_layers: 3
attention: {heads: 4, scaled: false}
feed_forward: {d_ff: 128, activation: geglu}
norm: {type: rmsnorm, eps: 1e-6}
positions: {type: relative, buckets: 32, max_distance: 128}
bias: false
head: {tied: true, rescale: true}
objective: {type: span-corruption, noise_density: 0.15, mean_span_length: 3.0}
generation:
  max_new_tokens: 32
  chain: [{type: greedy}]
"""

DENOISING = """\
name: tiny-bart
architecture: encoder-decoder
vocabulary:
  size: 300
  tokenizer: {type: byte-level}
  special_tokens: {bos: "<s>", eos: "</s>", pad: "<pad>", unk: "<unk>", mask: "<mask>"}
context_length: 128
d_model: 64
layers: 2
attention: {heads: 4}
feed_forward: {d_ff: 128, activation: gelu}
norm: {type: layernorm, position: post}
positions: {type: learned, max_positions: 130, offset: 2}
embeddings: {norm: true}
head: {logits_bias: buffer}
objective: {type: denoising, mask_rate: 0.3, poisson_lambda: 3.5, permute_sentences: true}
precision: {dtype: fp16, quantize: int4, block_size: 64}
generation:
  chain: [{type: beam_search, beams: 4, length_penalty: 1.0}]
"""

BASES = {
    "decoder-only": DECODER,
    "encoder-only": ENCODER,
    "span-corruption": SPAN_CORRUPTION,
    "denoising": DENOISING,
}
BASE_DATA = {name: load_yaml(text).data for name, text in BASES.items()}


class Vocabulary:
    """Every key, literal value and variant tag reachable from the spec's types: the words a
    real spec (and a typo of one) is made of."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.words: set[str] = set()
        self.tags: set[str] = set()
        self._seen: set[Any] = set()
        self._visit(ModelSpec)

    def _visit(self, annotation: Any, key: str = "") -> None:
        origin = get_origin(annotation)
        if origin is typing.Literal:
            values = {str(v) for v in get_args(annotation)}
            self.words |= values
            if key == "type":
                self.tags |= values
        elif origin is not None:
            for arg in get_args(annotation):
                self._visit(arg, key)
        elif isinstance(annotation, type) and annotation not in self._seen:
            self._seen.add(annotation)
            if issubclass(annotation, Section):
                fields = {n: f.annotation for n, f in annotation.model_fields.items()}
            elif hasattr(annotation, "__dataclass_fields__"):  # a decoding step
                fields = typing.get_type_hints(annotation)
            else:
                return
            for name, field in fields.items():
                self.keys.add(name)
                self._visit(field, name)


_vocabulary = Vocabulary()
KEYS, WORDS, TAGS = (sorted(s) for s in (_vocabulary.keys, _vocabulary.words, _vocabulary.tags))


def test_the_bases_are_valid_and_the_vocabulary_is_complete() -> None:
    for text in BASES.values():
        load_spec(text)
    assert {"kv_heads", "mask_rate", "sentinels", "chain", "beams"} <= set(KEYS)
    assert {"swiglu", "rmsnorm", "bf16", "int4", "encoder-decoder"} <= set(WORDS)
    assert {"byte-level", "rope", "relative", "denoising", "top_p", "beam_search"} <= set(TAGS)
    assert "swiglu" not in TAGS


# ----------------------------------------------------------------------------------------
# Strategies

# Integers stay below a million: kv_heads that does not divide a huge heads makes spec.py's
# divisor hint loop over every number up to heads (reported; out of this file's scope).
# Integers beyond 64 bits are refused by the loader itself (see test_loading.py).
BOUNDARY_NUMBERS = [0, -1, 1, 2, 3, 7, 255, 256, 257, 1023, 0.0, 0.5, 1.0, 1.5, -0.5, 1e-12]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1_000_000),
    st.sampled_from(BOUNDARY_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from([*WORDS, *KEYS, "yes", "no", "on", "off", "1e5", "0x1F", "~", ""]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)
spec_shaped = st.dictionaries(st.sampled_from(KEYS), documents, max_size=12)
yaml_tokens = st.sampled_from(
    [
        *("{", "}", "[", "]", ": ", ":", "- ", ", ", " ", "  ", "\n", "\n  ", "\t", "#", "'", '"'),
        *("&a ", "*a", "!!str ", "!!python/object/apply:os.system ", "! ", "!tag ", "<<: "),
        *("---\n", "...\n", "? ", "| ", "> ", "%YAML 1.2\n", "\\", "\x00", "\ufeff", "é"),
        *("name", "layers", "heads", "type", "rope", "1e5", "-1", "0.5", "yes", "null", "9" * 30),
    ]
)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load_or_spec_error(text: str) -> SpecError | None:
    """Load; return the SpecError, if any. Any other exception fails the test."""
    try:
        load_spec(text)
    except SpecError as err:
        assert err.problems, "a SpecError lists at least one problem"
        assert str(err).splitlines()[0].endswith("in spec")
        for problem in err.problems:
            assert problem.message.strip()
        return err
    return None


# ----------------------------------------------------------------------------------------
# (a) arbitrary documents


@given(st.text(max_size=400))
def test_arbitrary_text_only_ever_raises_spec_error(text: str) -> None:
    load_or_spec_error(text + "\n")  # a newline keeps one-line text from naming a file


@given(st.lists(yaml_tokens, max_size=60).map("".join))
def test_yaml_token_soup_only_ever_raises_spec_error(text: str) -> None:
    load_or_spec_error(text + "\n")


@given(documents)
def test_random_yaml_documents_only_ever_raise_spec_error(data: Any) -> None:
    load_or_spec_error(dump(data))


@given(spec_shaped)
def test_random_spec_shaped_documents_only_ever_raise_spec_error(data: dict[str, Any]) -> None:
    error = load_or_spec_error(dump(data))
    assert error is not None  # nothing this random is a whole valid spec


# ----------------------------------------------------------------------------------------
# (b) mutations of valid specs

Path = tuple[str | int, ...]


def nodes(data: Any, prefix: Path = ()) -> list[Path]:
    """The path of every value under ``data`` (not ``data`` itself)."""
    out: list[Path] = []
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else []
    )
    for key, value in items:
        out.append((*prefix, key))
        out.extend(nodes(value, (*prefix, key)))
    return out


def parent_of(data: Any, path: Path) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def typos(draw: st.DrawFn, word: str) -> str:
    """One edit: drop, double, swap or replace a character, or change the separator."""
    letters = "abcdefghijklmnopqrstuvwxyz_-"
    if not word:
        return draw(st.sampled_from(letters))
    i = draw(st.integers(0, len(word) - 1))
    edit = draw(st.sampled_from(["drop", "double", "swap", "replace", "separator", "case"]))
    if edit == "drop" and len(word) > 1:
        return word[:i] + word[i + 1 :]
    if edit == "double":
        return word[:i] + word[i] + word[i:]
    if edit == "swap" and i + 1 < len(word) and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if edit == "separator" and ("_" in word or "-" in word):
        return word.replace("_", "#").replace("-", "_").replace("#", "-")
    if edit == "case":
        return word.upper()
    return word[:i] + draw(st.sampled_from(letters.replace(word[i], ""))) + word[i + 1 :]


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A valid spec with one to three random edits, as YAML text, and the edits made."""
    data = copy.deepcopy(BASE_DATA[draw(st.sampled_from(sorted(BASE_DATA)))])
    edits: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = nodes(data)
        tagged = [p for p in paths if p[-1] == "type"]
        keyed = [p for p in paths if isinstance(p[-1], str)]
        edit = draw(st.sampled_from(["delete", "rename", "replace", "retag"]))
        if edit == "retag" and tagged:
            path = draw(st.sampled_from(tagged))
            old = parent_of(data, path)[path[-1]]
            new: Any = draw(st.sampled_from(TAGS) | typos(str(old)))
            parent_of(data, path)[path[-1]] = new
        elif edit == "rename" and keyed:
            path = draw(st.sampled_from(keyed))
            parent = parent_of(data, path)
            new = draw(typos(str(path[-1])) | st.sampled_from(KEYS))
            if new in parent:
                continue
            parent[new] = parent.pop(path[-1])
        elif edit == "delete":
            path = draw(st.sampled_from(paths))
            del parent_of(data, path)[path[-1]]
        else:
            path = draw(st.sampled_from(paths))
            new = draw(documents)
            parent_of(data, path)[path[-1]] = new
        edits.append(f"{edit} {path}")
    return dump(data), edits


@given(mutated_specs())
def test_mutated_specs_fail_only_with_located_problems(case: tuple[str, list[str]]) -> None:
    text, edits = case
    error = load_or_spec_error(text)
    if error is None:
        return
    for problem in error.problems:
        # safe_dump writes valid YAML of one mapping, so every problem is about a field.
        assert problem.path, f"{edits}: {problem}"
        assert problem.line > 0 and problem.column > 0, f"{edits}: {problem}"
        assert "<key>" not in problem.path


@given(mutated_specs())
def test_a_mutated_spec_that_loads_survives_its_normalized_dump(
    case: tuple[str, list[str]],
) -> None:
    text, _ = case
    try:
        spec = load_spec(text)
    except SpecError:
        return
    assert load_spec(dump_spec(spec)) == spec
