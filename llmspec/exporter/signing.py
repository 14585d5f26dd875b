"""``llmspec sign`` and ``llmspec keygen``: Ed25519 signatures of artifacts (runtime.signing).

A signature covers manifest.json's exact bytes, and the manifest lists every file with its
sha256, so it covers the whole artifact. ``runtime.load(path, require_signature=PUBLIC_KEY)``
and ``llmspec verify ARTIFACT --key PUBLIC_KEY`` check it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmspec.files import write_atomic
from runtime import artifact as fmt
from runtime.signing import check_signature, new_key_pair, private_key, sign_manifest

PRIVATE_KEY = "private.pem"
PUBLIC_KEY = "public.pem"


def sign_artifact(path: str | os.PathLike[str], key: Any) -> Path:
    """Sign the artifact at ``path`` with the Ed25519 private ``key`` (a PEM file's path, PEM
    bytes or a key object): writes :data:`runtime.artifact.SIGNATURE` beside manifest.json.

    The artifact is checked first (manifest, exactly the listed files, every sha256), so a
    broken or tampered artifact is never signed. Returns the signature's path. Raises
    :class:`ArtifactError` or :class:`runtime.signing.SigningError`.
    """

    root = Path(path)
    secret = private_key(key)
    data = fmt.read_manifest_bytes(root)
    fmt.verify_files(root, fmt.parse_manifest(data, root / fmt.MANIFEST))
    target = write_atomic(root / fmt.SIGNATURE, sign_manifest(data, secret))
    check_signature(root, data, secret.public_key())  # what was written verifies
    return target


def write_key_pair(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``directory`` (created if needed): :data:`PRIVATE_KEY`
    (mode 0600) and :data:`PUBLIC_KEY`. Refuses to replace existing key files."""

    root = Path(directory)
    private, public = root / PRIVATE_KEY, root / PUBLIC_KEY
    for existing in (private, public):
        if os.path.lexists(existing):
            raise FileExistsError(f"{existing} exists; keys are never replaced, choose another -o")
    private_pem, public_pem = new_key_pair()
    root.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start (O_EXCL: not through an existing file or link), never
    # readable by others even for a moment.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
        handle.flush()
        os.fsync(handle.fileno())
    write_atomic(public, public_pem)
    return private, public
