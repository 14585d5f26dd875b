"""Writing files so that nothing is lost: a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync it, then rename it over.

    Returns the path written. The directory must exist; an error leaves ``path`` untouched and
    no temporary file behind.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; files are shared like any other
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(result == 0)


def publish_directory(staged: Path, target: Path, *, replace: bool) -> None:
    """Move the fully written directory ``staged`` to ``target`` in one step.

    A new ``target`` appears by one rename. An existing one (only with ``replace``) is swapped
    atomically where the kernel can (Linux renameat2), so at every instant ``target`` is either
    the old directory or the new one; elsewhere the old one is first renamed aside. The old
    directory is deleted only after the new one is in place.
    """
    fsync_tree(staged)
    if not target.exists():
        os.rename(staged, target)
    elif not replace:
        raise FileExistsError(f"{target} exists; pass --force (force=True) to replace it")
    elif _exchange(staged, target):
        shutil.rmtree(staged)  # now holds the old directory
    else:  # pragma: no cover - non-Linux fallback
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, aside)
        os.rename(staged, target)
        shutil.rmtree(aside)
    parent = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)


def staging_directory(target: Path) -> Path:
    """A new empty directory beside ``target`` to write into before :func:`publish_directory`.

    Its name starts with a dot and ends in ``.partial``, so a crash leaves only an obviously
    partial hidden sibling, never a directory under the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    staged.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the published directory is shared
    return staged
