"""Importing generated source as a module.

The source is written once to a per-user cache directory, under a name made of its sha256,
and imported from there with importlib, so tracebacks, ``inspect`` and ``torch.export`` see
real file lines. Nothing is written into site-packages or the working directory.

The cache directory is ``$LLMSPEC_CACHE_DIR/codegen`` if that variable is set, else
``$XDG_CACHE_HOME/llmspec/codegen``, else ``~/.cache/llmspec/codegen``; when that cannot be
written, ``<tmp>/llmspec-<user>/codegen``.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import types
from pathlib import Path

MODULE_PREFIX = "llmspec_generated_"
_LOCK = threading.Lock()
_MODULES: dict[str, types.ModuleType] = {}


def cache_dir() -> Path:
    """Where generated sources are kept (created on first use)."""
    explicit = os.environ.get("LLMSPEC_CACHE_DIR")
    if explicit:
        return Path(explicit) / "codegen"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmspec" / "codegen"


def _fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"llmspec-{getpass.getuser()}" / "codegen"


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _write_once(path: Path, source: str) -> None:
    """Write ``source`` to ``path`` unless it already holds exactly that (atomic rename)."""
    data = source.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_source(source: str) -> types.ModuleType:
    """The module that ``source`` defines, imported once per distinct source.

    Equal sources give the same module object. The module is registered in ``sys.modules``
    as ``llmspec_generated_<sha256 prefix>`` (dataclasses and pickling look modules up
    there)."""
    digest = source_sha256(source)
    with _LOCK:
        module = _MODULES.get(digest)
        if module is not None:
            return module
        name = MODULE_PREFIX + digest[:32]
        path = cache_dir() / f"{name}.py"
        try:
            _write_once(path, source)
        except OSError:  # an unwritable home: fall back to a per-user temporary directory
            path = _fallback_dir() / f"{name}.py"
            _write_once(path, source)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py path always loads
            raise ImportError(f"cannot import generated source from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _MODULES[digest] = module
        return module
