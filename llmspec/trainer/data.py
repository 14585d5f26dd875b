"""The corpora a run reads, their token stream and its chunks, and the batches cut from them.

Numpy only (no torch, even indirectly), so that ``llmspec eval``, which runs ONNX artifacts,
reads and cuts its data exactly as training does. How a run tokenizes, chunks, orders and
corrupts its data is described in :mod:`llmspec.trainer.loop`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmspec.trainer.objectives import Collator, Features, TokenIds
from llmspec.trainer.settings import Settings, TrainError
from runtime.reading import UnreadableFile, check_regular, iter_lines

EVAL_FRACTION, EVAL_MAX_CHUNKS = 0.05, 64
EVAL_STREAM = 2**31  # the seed component that tells evaluation generators from training ones


def named_corpus_files(data: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(file, name to record) of each file of ``data`` (see :func:`corpus_files`). The name is
    the file's own, or for a file found in a directory the directory's name and the path below
    it: a run records where its data came from without the building machine's folders."""
    files: list[tuple[Path, str]] = []
    missing = []
    for item in data:
        path = Path(item)
        if path.is_file():
            files.append((path, path.name))
        elif path.is_dir():
            top = path.name or path.resolve().name
            files += sorted(
                (p, (Path(top) / p.relative_to(path)).as_posix())
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():  # a FIFO, a socket, a device: never read (one could block)
            try:
                check_regular(path)
            except UnreadableFile as err:
                raise TrainError(f"data {err}") from None
        else:
            missing.append(str(path))
    if missing:
        raise TrainError(f"data not found: {', '.join(missing)}")
    if not files:
        raise TrainError("no data: give --data with at least one text file")
    return files


def corpus_files(data: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files of ``data``: files as given, directories expanded to every non-hidden file
    under them in name order."""
    return [path for path, _ in named_corpus_files(data)]


# A document is encoded this much text at a time: encoding a whole large file at once holds
# about a hundred bytes per token in the tokenizer's result (a 1 GiB file: ~100 GiB).
ENCODE_CHUNK = 1 << 18  # characters
ENCODE_CHUNK_MAX = 1 << 20  # past this, a piece is cut even where the cut is not clean


def _document_pieces(path: Path) -> Iterator[str]:
    """The text of ``path`` in pieces of at least :data:`ENCODE_CHUNK` characters (the last
    one shorter), read in bounded lines. Pieces end with a line end followed by a character
    that is not white space, where byte-level BPE pre-tokenization splits anyway, so a file's
    tokens are those of encoding it whole; only a stretch of :data:`ENCODE_CHUNK_MAX`
    characters without such a place is cut elsewhere. Raises UnicodeDecodeError for a file
    that is not UTF-8 and :class:`UnreadableFile` for one that is not a regular file."""
    buffer: list[str] = []
    size = 0
    for line in iter_lines(path, ENCODE_CHUNK, keepends=True, errors="strict"):
        clean = bool(buffer) and buffer[-1].endswith("\n") and not line[:1].isspace()
        if size >= ENCODE_CHUNK_MAX or (size >= ENCODE_CHUNK and clean):
            yield "".join(buffer)
            buffer, size = [], 0
        buffer.append(line)
        size += len(line)
    if buffer:
        yield "".join(buffer)


def token_stream(files: Sequence[Path], tokenizer: Any, ids: TokenIds, causal: bool) -> np.ndarray:
    """The documents' tokens joined into one int32 stream (see :mod:`llmspec.trainer.loop`)."""
    head = [ids.bos] if causal and ids.bos is not None and ids.bos != ids.eos else []
    tail = [ids.eos] if ids.eos is not None else []
    pieces: list[np.ndarray] = []
    for path in files:
        document: list[np.ndarray] = []
        try:
            for text in _document_pieces(path):
                # the stream frames documents itself (head, tail): a tokenizer file's own
                # post-processor ([CLS] ... [SEP], <s>) must not frame every piece
                piece = tokenizer.encode(text, add_special_tokens=False).ids
                document.append(np.asarray(piece, dtype=np.int32))
        except UnicodeDecodeError:
            continue  # not text
        except UnreadableFile as err:
            raise TrainError(f"data {err}") from None
        except OSError as err:
            raise TrainError(f"{path}: cannot read: {err.strerror or err}") from None
        if not document:
            continue
        pieces += [np.asarray(head, dtype=np.int32), *document, np.asarray(tail, dtype=np.int32)]
    if not pieces:
        raise TrainError("the data has no text (files empty or not UTF-8)")
    return np.concatenate(pieces)


@dataclass(frozen=True)
class Dataset:
    """The stream cut into chunks, split into training and held-out chunks."""

    stream: np.ndarray
    starts: np.ndarray  # chunk k is stream[starts[k] : starts[k] + length] (clipped)
    length: int
    train: np.ndarray  # chunk indices
    held_out: np.ndarray

    @classmethod
    def make(cls, stream: np.ndarray, length: int, seed: int) -> Dataset:
        starts = np.arange(0, len(stream), length)
        if len(starts) > 1 and len(stream) - starts[-1] < 2:
            starts = starts[:-1]  # a one-token tail teaches nothing
        order = np.random.default_rng([seed, EVAL_STREAM]).permutation(len(starts))
        n_eval = (
            0
            if len(starts) < 2
            else min(EVAL_MAX_CHUNKS, max(1, round(EVAL_FRACTION * len(starts))))
        )
        return cls(stream, starts, length, np.sort(order[n_eval:]), np.sort(order[:n_eval]))

    def chunk(self, index: int) -> np.ndarray:
        start = int(self.starts[index])
        return self.stream[start : start + self.length].astype(np.int64)

    def train_chunk(self, position: int, seed: int, cache: dict[int, np.ndarray]) -> np.ndarray:
        """The chunk at ``position`` of the endless sequence of seeded epochs."""
        n = len(self.train)
        epoch = position // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return self.chunk(int(self.train[cache[epoch][position % n]]))


def batch_examples(
    dataset: Dataset,
    collator: Collator,
    settings: Settings,
    step: int,
    rank: int,
    world: int,
    cache: dict[int, np.ndarray],
) -> Features:
    """This process's share of step ``step``'s global batch, collated."""
    share = settings.batch_size // world
    first = step * settings.batch_size + rank * share
    features = []
    for j in range(first, first + share):
        tokens = dataset.train_chunk(j, settings.seed, cache)
        rng = np.random.default_rng([settings.seed, step, j])
        features.append(collator.example(tokens, rng))
    return collator.pad(features)


def eval_batches(
    dataset: Dataset, collator: Collator, settings: Settings, size: int
) -> list[Features]:
    """The held-out chunks, collated once with fixed generators, ``size`` per batch."""
    out = []
    chunks = [int(i) for i in dataset.held_out]
    for first in range(0, len(chunks), size):
        features = [
            collator.example(
                dataset.chunk(i), np.random.default_rng([settings.seed, EVAL_STREAM, i])
            )
            for i in chunks[first : first + size]
        ]
        out.append(collator.pad(features))
    return out
