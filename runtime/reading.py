"""Reading files that someone else wrote: bounded in size, regular files only, no hangs.

Every file llmspec reads from input it did not write itself (a spec, a corpus, an examples
file, a tokenizer.json, an artifact's JSON files) goes through this module, so that

* a FIFO, a socket, a device such as ``/dev/zero`` or a directory is refused before a single
  byte is read (a FIFO is opened non-blocking, so opening it cannot hang);
* at most ``limit`` bytes are ever read, whatever size the file system reports (``/proc`` and
  device files report 0);
* JSON is refused above a nesting depth before Python's recursive parser sees it (a deeply
  nested document would otherwise end in ``RecursionError``).

Failures raise :class:`UnreadableFile` (a ValueError) whose message names the file and says
what to do; callers turn it into their own error type (``SpecError``, ``ArtifactError``, ...).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import LlmspecError

MiB = 1 << 20

# Nesting of the JSON files we read ourselves (manifest.json, generation.json, examples): the
# deepest legitimate one is a handful of levels.
MAX_JSON_DEPTH = 64


class UnreadableFile(ValueError, LlmspecError):
    """A file that cannot be read safely; the message names it and says why."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (symlinks followed).

    Opened with ``O_NONBLOCK`` so that a FIFO cannot block the call; the flag is cleared again
    for the regular file that passes the check. Raises :class:`UnreadableFile`.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnreadableFile(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{name}: is a directory, not a file") from None
    except OSError as err:
        raise UnreadableFile(f"{name}: cannot open ({err.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{name}: is {_kind(mode)}; give a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike[str]) -> int:
    """The size of the regular file ``path``; raises :class:`UnreadableFile` for anything else.

    For files handed by name to a library that opens them itself (ONNX Runtime, the tokenizer
    trainer): the check happens here, without reading."""
    fd = open_regular(path)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The contents of the regular file ``path``, refused when longer than ``limit`` bytes.

    Reads at most ``limit + 1`` bytes, so a file that lies about its size (``/proc``, a file
    growing while read) cannot make it read more. ``what`` names the kind of file in messages
    ("spec", "manifest", ...)."""
    fd = open_regular(path)
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            block = os.read(fd, min(MiB, limit + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
    except OSError as err:
        raise UnreadableFile(f"{os.fspath(path)}: cannot read ({err.strerror})") from None
    finally:
        os.close(fd)
    if total > limit:
        raise UnreadableFile(
            f"{os.fspath(path)}: larger than {limit} bytes, the limit for a {what}; "
            "give a smaller file"
        )
    return b"".join(chunks)


def read_text(path: str | os.PathLike[str], limit: int, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8; raises :class:`UnreadableFile` for other bytes."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UnreadableFile(
            f"{os.fspath(path)}: not UTF-8 text (byte {err.start}); save the {what} as UTF-8"
        ) from None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``data`` (strings skipped)."""
    bare = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    step = np.isin(bare, np.frombuffer(b"[{", np.uint8)).astype(np.int64)
    step -= np.isin(bare, np.frombuffer(b"]}", np.uint8))
    return int(np.cumsum(step).max(initial=0))


def parse_json(data: bytes, name: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text ``data`` (from ``name``, for messages) parsed, refusing deep nesting, invalid
    UTF-8 and invalid JSON with an :class:`UnreadableFile`."""
    depth = json_depth(data)
    if depth > max_depth:
        raise UnreadableFile(
            f"{name}: JSON nested {depth} levels deep, more than the {max_depth} allowed"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UnreadableFile(f"{name}: not UTF-8 (byte {err.start})") from None
    except (ValueError, RecursionError) as err:  # ValueError: also an int of > 4300 digits
        raise UnreadableFile(f"{name}: not valid JSON ({err})") from None


def read_json(
    path: str | os.PathLike[str],
    limit: int,
    what: str = "JSON file",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """A bounded, depth-checked JSON file (see :func:`read_bytes`, :func:`parse_json`)."""
    return parse_json(read_bytes(path, limit, what), os.fspath(path), max_depth)


def iter_lines(
    path: str | os.PathLike[str],
    max_line: int,
    limit: int | None = None,
    *,
    keepends: bool = False,
    errors: str = "replace",
) -> Iterator[str]:
    """The lines of a UTF-8 text file (without line ends), never holding more than ``max_line``
    bytes: a longer line is yielded in pieces of at most ``max_line`` bytes, cut at a character
    boundary. ``limit`` caps the bytes read in all (None: no cap). Invalid UTF-8 is replaced
    by U+FFFD, as corpora from the wild often have a stray byte.

    ``keepends`` keeps each line's ``\n`` / ``\r\n`` (joined, the pieces are then the file's
    text exactly); ``errors="strict"`` raises UnicodeDecodeError for invalid UTF-8 instead."""
    fd = open_regular(path)
    read = 0
    with os.fdopen(fd, "rb") as handle:
        while True:
            line = handle.readline(max_line)
            if not line:
                return
            read += len(line)
            if limit is not None and read > limit:
                raise UnreadableFile(
                    f"{os.fspath(path)}: larger than {limit} bytes; give a smaller file"
                )
            if not line.endswith(b"\n") and len(line) == max_line:
                # Cut at a character boundary: carry the bytes of a split character over.
                cut = len(line)
                while cut > 0 and (line[cut - 1] & 0xC0) == 0x80:
                    cut -= 1
                if cut > 0 and line[cut - 1] >= 0xC0:
                    cut -= 1
                if cut > 0:
                    handle.seek(cut - len(line), os.SEEK_CUR)
                    line = line[:cut]
            yield (line if keepends else line.rstrip(b"\r\n")).decode("utf-8", errors=errors)


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside the directory ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):  # outside, unreadable, a symlink loop
        return False
    return True
