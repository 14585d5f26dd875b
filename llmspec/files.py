"""Writing files so that nothing is lost: a crash leaves the old file or the new one, never half.

Every output of llmspec (artifacts, run directories and their checkpoints, single files such as
a schema, a tokenizer, generated source or a plot) is written through this module:

* a file by :func:`write_atomic` (a temporary sibling, fsync, rename over);
* a directory by :func:`publishing` (a hidden ``.NAME.*.partial`` staging sibling, published
  in one rename or an atomic swap).

A failure to write (a full disk or quota, a read-only or forbidden folder, any ``OSError``, and
safetensors' I/O errors) becomes one :class:`OutputError` naming the output, the cause and what
to do; the previous output stays as it was and no temporary file or staging directory is left.
Every file written gets the same permissions, ``0o666 & ~umask`` (libraries that write through
``mkstemp`` would leave 0600 files that other users of a deployment box cannot read).

Staging names carry their owner (``.NAME.<pid>-<host>.<random>.partial``), so that a staging
directory or temporary file a killed process left is removed by the next write of the same
output, and never one whose process is still running or that another machine (or container)
made.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llmspec.errors import LlmspecError

_DISK_ALMOST_FULL = 1 << 20  # an error without an errno, with less free than this: a full disk


class OutputError(OSError, LlmspecError):
    """An output could not be written. ``filename`` is the output (the file or directory the
    user asked for), ``strerror`` the cause, ``errno`` the error number where one is known; the
    message also says what to do. An ``OSError``, so code that catches ``OSError`` still does."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        code: int | None = None,
        advice: str | None = None,
    ) -> None:
        super().__init__(code, reason, os.fspath(path))
        self.advice = advice or _advice(code)

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}; {self.advice}"

    @classmethod
    def from_failure(cls, path: str | os.PathLike[str], failure: BaseException) -> OutputError:
        """The error for ``failure`` (an ``OSError`` or a library's I/O error) while writing
        ``path``. An error without an errno on a (nearly) full disk is reported as a full disk."""
        code = getattr(failure, "errno", None)
        if not isinstance(code, int):
            found = re.search(r"\(os error (\d+)\)", str(failure))  # Rust's io::Error text
            code = int(found.group(1)) if found else None
        reason = os.strerror(code) if code else str(failure) or type(failure).__name__
        if code is None:
            free = _free_bytes(Path(path))
            if free is not None and free < _DISK_ALMOST_FULL:
                code = errno.ENOSPC
                reason = f"{os.strerror(code)} ({failure}; {free} bytes free)"
        return cls(path, reason, code)


# What a person can do about a failed write, by its error number.
_ADVICE = {
    errno.ENOSPC: "free space on that disk (or raise your quota), or write to another disk",
    errno.EDQUOT: "free space on that disk (or raise your quota), or write to another disk",
    errno.EFBIG: "that file system cannot hold a file this large; write to another disk",
    errno.EROFS: "choose a folder on a writable disk",
    errno.EACCES: "you may not write there; choose a folder you can write to",
    errno.EPERM: "you may not write there; choose a folder you can write to",
    errno.ENOENT: "its folder does not exist; create it first or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "give the path of a file to write, for example one inside that directory",
    errno.EEXIST: "something else is in the way there; move it or choose another path",
    errno.ELOOP: "its symbolic links point at each other; remove the loop or choose another path",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _advice(code: int | None) -> str:
    """What a person can do about a failed write."""
    return _ADVICE.get(code or 0, "check that its folder exists, is writable and has free space")


def _free_bytes(path: Path) -> int | None:
    """The bytes an unprivileged user can still write on ``path``'s file system (None where
    unknown)."""
    if not hasattr(os, "statvfs"):  # pragma: no cover - Windows
        return None
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


def _write_failure(err: BaseException) -> BaseException | None:
    """The operating system's refusal to write behind ``err`` (``err`` itself, or what it was
    raised while handling), or None when ``err`` is not one (a bug of ours, a bad input)."""
    cause: BaseException | None = err
    for _ in range(8):  # a chain is short; a bound in case one loops
        if cause is None:
            break
        if isinstance(cause, OSError):
            return cause
        # safetensors raises SafetensorError (an Exception, not imported here) with Rust's
        # io::Error text in it.
        if type(cause).__name__ == "SafetensorError" and "I/O error" in str(cause):
            return cause
        # torch.save's cleanup raises a RuntimeError while handling the OSError of a write
        cause = cause.__cause__ or cause.__context__
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to write inside the block into :class:`OutputError` naming ``path``."""
    try:
        yield
    except OutputError:
        raise
    except Exception as err:
        failure = _write_failure(err)
        if failure is None:
            raise
        raise OutputError.from_failure(path, failure) from err


def file_mode() -> int:
    """The permissions of every file llmspec writes: ``0o666`` less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Read without changing it where the kernel tells (Linux), since setting it to read it is
    # a race with other threads creating files.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


# ----------------------------------------------------------------------------------------
# Owners of temporary names, and removing what a killed process left


def _owner() -> str:
    """``<pid>-<host>``: who made a temporary name. The host is 8 hex digits of a hash of the
    host name and the pid namespace, so that a pid is only ever checked where it means the
    same process (not on another machine sharing the folder, nor in another container)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    where = f"{socket.gethostname()}/{namespace}".encode("utf-8", "replace")
    return f"{os.getpid()}-{hashlib.sha256(where).hexdigest()[:8]}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a name we made: keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or no pid we could have had): keep it
    return True


def remove_stale(folder: Path, name: str | None, suffix: str) -> list[Path]:
    """Remove the temporary siblings (``.NAME.<pid>-<host>.<random><suffix>``) of ``name`` in
    ``folder`` (of any name if ``name`` is None) that a process of this machine made and that
    is no longer running. Anything else is left alone: other names, other machines, running
    processes, names not in this form. Returns what was removed."""
    _, host = _owner().split("-")
    stem = re.escape(name) if name is not None else ".+"
    pattern = re.compile(rf"\.{stem}\.(\d{{1,10}})-([0-9a-f]{{8}})\.[a-z0-9_]+{re.escape(suffix)}")
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if not found or found.group(2) != host or _alive(int(found.group(1))):
            continue
        if entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ----------------------------------------------------------------------------------------
# Files


def _file_destination(given: Path) -> Path:
    """The file that writing ``given`` replaces: ``given``, or the file a link points to.
    Raises :class:`OutputError` for a directory, a device, a pipe, a socket or a loop."""
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if target.is_symlink():  # realpath stops in a loop of links
        raise OutputError(given, os.strerror(errno.ELOOP), errno.ELOOP)
    if target.is_dir():
        raise OutputError(given, "it is a directory", errno.EISDIR)
    if target.exists() and not target.is_file():
        raise OutputError(
            given,
            "it is not a regular file (a device, a pipe or a socket)",
            advice="give the path of a file to write (without -o, schema and codegen print "
            "to standard output)",
        )
    return target


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync it, then rename it over.

    Returns the path written. The directory must exist. A symbolic link is followed (the file
    it points to is replaced, the link kept, as a shell's ``>`` does); a directory, a device, a
    pipe or a socket is refused (renaming over it would replace it; writing into a pipe may
    never end). Raises :class:`OutputError` (naming ``path``) when it cannot be written;
    ``path`` is then untouched and no temporary file is left behind.
    """
    given = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with writing(given):  # a name too long for the system fails already here
        target = _file_destination(given)
        remove_stale(target.parent, target.name, ".tmp")
        fd, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.{_owner()}.", suffix=".tmp", dir=target.parent
        )
        try:
            os.fchmod(fd, file_mode())  # mkstemp makes 0600; files are shared like any other
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return given


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


def _share(root: Path) -> None:
    """Give every file under ``root`` :func:`file_mode` and every directory its ``+x`` form,
    whatever the library that wrote it chose (safetensors and ONNX's external data: 0600)."""
    files = file_mode()
    folders = 0o777 & ~_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(folders if path.is_dir() else files)


# ----------------------------------------------------------------------------------------
# Directories


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


def destination(target: Path) -> Path:
    """Where a directory published at ``target`` goes: ``target`` itself or, when it is a
    symbolic link to a directory, that directory (``current -> v1``: ``v1`` is replaced and the
    link kept, so deployments that flip ``current`` keep working). Raises
    ``FileExistsError`` for a link to nothing or to something other than a directory, and for
    an existing ``target`` that is not a directory."""
    if target.is_symlink():
        real = Path(os.path.realpath(target))
        if not real.is_dir():
            raise FileExistsError(
                f"{target} is a symbolic link to {os.readlink(target)}, which is not an existing "
                "directory; point the link at a directory or remove it"
            )
        return real
    if target.exists() and not target.is_dir():
        raise FileExistsError(
            f"{target} exists and is not a directory; remove it or choose another"
        )
    return target


def publish_directory(staged: Path, target: Path, *, replace: bool) -> None:
    """Move the fully written directory ``staged`` to ``target`` in one step.

    A new ``target`` appears by one rename. An existing one (only with ``replace``) is swapped
    atomically where the kernel can (Linux renameat2), so at every instant ``target`` is either
    the old directory or the new one; elsewhere the old one is first renamed aside. The old
    directory is deleted only after the new one is in place. A ``target`` that is a symbolic
    link to a directory is published into that directory and the link kept (see
    :func:`destination`). Every file gets :func:`file_mode`. Raises ``FileExistsError`` for an
    existing ``target`` without ``replace``, :class:`OutputError` when writing fails.
    """
    real = destination(target)
    if real.exists() and not replace:
        raise FileExistsError(f"{target} exists; pass --force (force=True) to replace it")
    with writing(target):
        _share(staged)
        fsync_tree(staged)
        if not real.exists():
            os.rename(staged, real)
        elif _exchange(staged, real):
            shutil.rmtree(staged)  # now holds the old directory
        else:  # pragma: no cover - non-Linux fallback
            aside = real.with_name(f".{real.name}.old-{os.getpid()}")
            os.rename(real, aside)
            os.rename(staged, real)
            shutil.rmtree(aside)
        parent = os.open(real.parent, os.O_RDONLY)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)


def staging_directory(target: Path) -> Path:
    """A new empty directory beside ``target`` to write into before :func:`publish_directory`.

    Its name starts with a dot and ends in ``.partial``, so a crash leaves only an obviously
    partial hidden sibling, never a directory under the final name; such siblings that a
    process of this machine left and that is no longer running are removed first. Beside a
    symbolic link's directory when ``target`` is a link (see :func:`destination`). Raises
    :class:`OutputError` when the directory cannot be made."""
    real = destination(target)
    with writing(target):
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(real.parent, real.name, ".partial")
        prefix = f".{real.name}.{_owner()}."
        staged = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=real.parent))
        staged.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the published directory is shared
    return staged


@contextlib.contextmanager
def publishing(target: Path, *, replace: bool) -> Iterator[Path]:
    """Write a directory atomically: yields a staging directory (:func:`staging_directory`)
    and publishes it at ``target`` when the block ends (:func:`publish_directory`).

    If the block or the publishing fails, the staging directory is removed and ``target`` is
    as it was; a failure to write becomes :class:`OutputError` naming ``target``, other errors
    pass through unchanged."""
    staged = staging_directory(target)
    try:
        with writing(target):
            yield staged
        publish_directory(staged, target, replace=replace)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
