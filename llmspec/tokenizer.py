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

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmspec.errors import LlmspecError
from llmspec.spec.sections import BYTE_LEVEL_BASE, ModelSpec
from runtime import artifact as fmt
from runtime.reading import UnreadableFile, check_regular, is_inside, iter_lines, read_text
from runtime.tokenizer import MAX_TOKENIZER_BYTES, is_panic

SPECIAL_ORDER = ("pad", "bos", "eos", "unk", "mask")
# Corpora reach the BPE trainer in pieces of at most this many bytes: a line is rarely longer,
# and a longer one (a minified file, a corpus without newlines) is cut, which only changes
# the word counts at the cuts. The trainer's own file reader holds whole lines in memory.
CORPUS_MAX_LINE = 64 * 1024


class TokenizerMismatch(ValueError, LlmspecError):
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


def byte_alphabet() -> list[str]:
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
    for symbol in byte_alphabet():
        vocab[symbol] = len(vocab)
    for index in range(spec.vocabulary.sentinels):
        vocab[sentinel(index)] = size - 1 - index
    if len(special_texts(spec)) + BYTE_LEVEL_BASE + spec.vocabulary.sentinels > size:
        raise TokenizerMismatch(f"vocabulary.size {size} is too small for the byte-level tokenizer")
    return _finish(Tokenizer(models.BPE(vocab=vocab, merges=[])), spec)


def corpus_pieces(files: list[Path], max_line: int = CORPUS_MAX_LINE) -> Iterator[str]:
    """The text of ``files`` in order, line by line with the line ends kept (as the
    tokenizers library's own file reader yields it), a line longer than ``max_line`` bytes in
    pieces. Raises :class:`TokenizerMismatch` for a file that is not a regular file."""
    for path in files:
        try:
            yield from iter_lines(path, max_line, keepends=True)
        except UnreadableFile as err:
            raise TokenizerMismatch(f"corpus file {err}") from None


def train_bpe(spec: ModelSpec, files: list[Path], max_line: int = CORPUS_MAX_LINE) -> Tokenizer:
    """A byte-level BPE trained on ``files`` to ``vocabulary.size`` ids.

    Sentinels take the top ids, as with the byte-level tokenizer. The files are streamed in
    pieces of at most ``max_line`` bytes (see :data:`CORPUS_MAX_LINE`); on files whose lines
    are shorter the result is the same as ``Tokenizer.train(files)``'s."""
    sentinels = spec.vocabulary.sentinels
    min_frequency = getattr(spec.vocabulary.tokenizer, "min_frequency", 2)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocabulary.size - sentinels,
        min_frequency=min_frequency,
        special_tokens=special_texts(spec),
        initial_alphabet=byte_alphabet(),
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.train_from_iterator(corpus_pieces(files, max_line), trainer)
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
    for text in spec.generation.stop_tokens if spec.generation is not None else ():
        token_id = tokenizer.token_to_id(text)
        if token_id is None or token_id >= size:
            problems.append(
                f"stop token {text!r} (generation.stop_tokens) is not one token of the "
                "tokenizer within the vocabulary"
            )
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if largest >= size:
        problems.append(f"the tokenizer has ids up to {largest}, beyond vocabulary.size {size}")
    if problems:
        raise TokenizerMismatch(
            "the tokenizer does not fit the spec: " + "; ".join(problems) + "; fix the spec's "
            "vocabulary section or the tokenizer"
        )
    return ids


def stop_token_ids(tokenizer: Tokenizer, spec: ModelSpec) -> list[int]:
    """Every token that ends generation, eos first, then ``generation.stop_tokens`` in order;
    empty when the spec lists no stop tokens (eos alone stops, as in artifacts made before
    stop tokens existed). Call :func:`check_fits` first: it checks that each is a token."""
    stops = spec.generation.stop_tokens if spec.generation is not None else []
    if not stops:
        return []
    eos = spec.vocabulary.special_tokens.eos
    ids = []
    for text in ([eos] if eos is not None else []) + list(stops):
        token_id = tokenizer.token_to_id(text)
        if token_id is None:
            raise TokenizerMismatch(f"stop token {text!r} is not a token of the tokenizer")
        ids.append(token_id)
    return ids


def read_tokenizer(path: Path) -> Tokenizer:
    """The ``tokenizer.json`` at ``path``: a regular file of at most
    :data:`MAX_TOKENIZER_BYTES`, parsed; anything else is a :class:`TokenizerMismatch`."""
    try:
        text = read_text(path, MAX_TOKENIZER_BYTES, fmt.TOKENIZER)
    except UnreadableFile as err:
        raise TokenizerMismatch(str(err)) from None
    return read_tokenizer_text(text, path)


def read_tokenizer_text(text: str, path: Path) -> Tokenizer:
    """The tokenizer of the ``tokenizer.json`` text read from ``path`` (for messages); a
    :class:`TokenizerMismatch` when it is not one."""
    try:
        return Tokenizer.from_str(text)
    except BaseException as err:  # a bare Exception, or pyo3's PanicException (BaseException)
        if not (isinstance(err, Exception) or is_panic(err)):
            raise
        raise TokenizerMismatch(f"{path}: not a tokenizer.json ({err})") from None


def spec_file(base: Path, name: str, field: str) -> Path:
    """The file ``name`` that the spec field ``field`` names, in the spec's folder ``base``.

    The spec's validation already refuses absolute names and ``..``; this refuses a name that
    leads outside ``base`` through a symlink, and one that is not a regular file (a FIFO would
    block, a device would never end). Raises :class:`TokenizerMismatch`."""
    path = base / name
    if not is_inside(path, base):
        raise TokenizerMismatch(
            f"{field}: {name!r} leads outside the spec's folder {base} (through a symlink); "
            "files named in a spec are read from its folder only: copy the file next to the "
            "spec instead of linking to it"
        )
    try:
        check_regular(path)
    except UnreadableFile as err:
        raise TokenizerMismatch(f"{field}: {err}") from None
    return path


def load_for_spec(spec: ModelSpec, base_dir: Path | None = None) -> Tokenizer:
    """The tokenizer a spec names, built, trained or read; checked against the spec.

    Files the spec names (a BPE corpus, a tokenizer.json) are read from ``base_dir``, the
    spec's folder (default: the working directory), and must lie inside it."""
    kind = spec.vocabulary.tokenizer
    base = base_dir or Path.cwd()
    if kind.type == "byte-level":
        tokenizer = byte_level(spec)
    elif kind.type == "bpe":
        missing = [str(base / name) for name in kind.corpus if not (base / name).exists()]
        if missing:
            raise TokenizerMismatch(f"corpus files not found: {', '.join(missing)}")
        files = [
            spec_file(base, name, f"vocabulary.tokenizer.corpus[{i}]")
            for i, name in enumerate(kind.corpus)
        ]
        tokenizer = train_bpe(spec, files)
    else:
        if not (base / kind.path).exists():
            raise TokenizerMismatch(f"{base / kind.path}: tokenizer file not found")
        tokenizer = read_tokenizer(spec_file(base, kind.path, "vocabulary.tokenizer.path"))
    check_fits(tokenizer, spec)
    return tokenizer
