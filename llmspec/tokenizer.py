"""Tokenizers for specs, built with the Hugging Face ``tokenizers`` library.

Three kinds, chosen by ``vocabulary.tokenizer.type``:

* ``byte-level`` (built in, no training): one token per byte. Ids are laid out as
  ``[specials][256 bytes][unused ...][sentinels, descending from the top]``: the special tokens
  first in the order pad, bos, eos, unk, mask (bos and eos may share one token), then the 256
  bytes in byte order, and the span-corruption sentinels at the top of the vocabulary with
  ``<extra_id_0>`` = size - 1, as in T5. Ids between are unused: they decode to nothing.
* ``bpe``: a byte-level BPE trained on the spec's corpus files to exactly ``vocabulary.size``
  ids (specials and sentinels included), with the same special-token order.
* ``file``: a given ``tokenizer.json``; its special tokens must be the spec's, or
  :class:`TokenizerMismatch` lists the ones that disagree.

Every kind maps bytes losslessly (the ByteLevel pre-tokenizer), so any text round-trips.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmspec.spec import BYTE_LEVEL_BASE, ModelSpec

SPECIAL_ORDER = ("pad", "bos", "eos", "unk", "mask")


class TokenizerMismatch(ValueError):
    """A tokenizer that does not fit its spec; the message lists every disagreement."""


def sentinel(index: int) -> str:
    """The text of span-corruption sentinel ``index`` (T5's naming)."""
    return f"<extra_id_{index}>"


def special_texts(spec: ModelSpec) -> list[str]:
    """The distinct special-token texts in id order (pad, bos, eos, unk, mask)."""
    present = spec.vocabulary.special_tokens.present()
    texts: list[str] = []
    for name in SPECIAL_ORDER:
        text = present.get(name)
        if text is not None and text not in texts:
            texts.append(text)
    return texts


def _byte_alphabet() -> list[str]:
    """The printable stand-in of each byte 0..255, as the ByteLevel pre-tokenizer writes them
    (GPT-2's bytes-to-unicode table), in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def _finish(tokenizer: Tokenizer, spec: ModelSpec) -> Tokenizer:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    sentinels = [sentinel(i) for i in range(spec.vocabulary.sentinels)]
    tokenizer.add_special_tokens([*special_texts(spec), *sentinels])
    return tokenizer


def byte_level(spec: ModelSpec) -> Tokenizer:
    """The built-in byte-level tokenizer of ``spec`` (see the module docstring for the ids)."""
    size = spec.vocabulary.size
    vocab: dict[str, int] = {}
    for text in special_texts(spec):
        vocab[text] = len(vocab)
    for symbol in _byte_alphabet():
        vocab[symbol] = len(vocab)
    for index in range(spec.vocabulary.sentinels):
        vocab[sentinel(index)] = size - 1 - index
    if len(special_texts(spec)) + BYTE_LEVEL_BASE + spec.vocabulary.sentinels > size:
        raise TokenizerMismatch(f"vocabulary.size {size} is too small for the byte-level tokenizer")
    return _finish(Tokenizer(models.BPE(vocab=vocab, merges=[])), spec)


def train_bpe(spec: ModelSpec, files: list[Path]) -> Tokenizer:
    """A byte-level BPE trained on ``files`` to ``vocabulary.size`` ids.

    Sentinels take the top ids, as with the byte-level tokenizer."""
    sentinels = spec.vocabulary.sentinels
    min_frequency = getattr(spec.vocabulary.tokenizer, "min_frequency", 2)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocabulary.size - sentinels,
        min_frequency=min_frequency,
        special_tokens=special_texts(spec),
        initial_alphabet=_byte_alphabet(),
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.train([str(f) for f in files], trainer)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([sentinel(i) for i in range(sentinels)])
    return tokenizer


def check_fits(tokenizer: Tokenizer, spec: ModelSpec) -> dict[str, int]:
    """The id of each special token; raise :class:`TokenizerMismatch` listing every way the
    tokenizer disagrees with the spec (missing specials, ids beyond the vocabulary)."""
    problems: list[str] = []
    ids: dict[str, int] = {}
    size = spec.vocabulary.size
    for name, text in spec.vocabulary.special_tokens.present().items():
        token_id = tokenizer.token_to_id(text)
        if token_id is None:
            problems.append(f"special token {name} {text!r} is not in the tokenizer")
        elif token_id >= size:
            problems.append(f"special token {name} {text!r} has id {token_id} >= size {size}")
        else:
            ids[name] = token_id
    for index in range(spec.vocabulary.sentinels):
        token_id = tokenizer.token_to_id(sentinel(index))
        if token_id is None or token_id >= size:
            problems.append(f"sentinel {sentinel(index)!r} is missing or beyond the vocabulary")
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if largest >= size:
        problems.append(f"the tokenizer has ids up to {largest}, beyond vocabulary.size {size}")
    if problems:
        raise TokenizerMismatch(
            "the tokenizer does not fit the spec: " + "; ".join(problems) + "; fix the spec's "
            "vocabulary section or the tokenizer"
        )
    return ids


def load_for_spec(spec: ModelSpec, base_dir: Path | None = None) -> Tokenizer:
    """The tokenizer a spec names, built, trained or read; checked against the spec."""
    kind = spec.vocabulary.tokenizer
    base = base_dir or Path.cwd()
    if kind.type == "byte-level":
        tokenizer = byte_level(spec)
    elif kind.type == "bpe":
        files = [base / name for name in kind.corpus]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TokenizerMismatch(f"corpus files not found: {', '.join(missing)}")
        tokenizer = train_bpe(spec, files)
    else:
        path = base / kind.path
        if not path.is_file():
            raise TokenizerMismatch(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise TokenizerMismatch(f"{path}: not a tokenizer.json ({err})") from None
    check_fits(tokenizer, spec)
    return tokenizer
