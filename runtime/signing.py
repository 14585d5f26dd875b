"""Signed artifacts: an Ed25519 signature of ``manifest.json``, checked before anything is used.

``manifest.json`` lists every file of the artifact with its size and sha256 (and
:func:`runtime.artifact.verify_files` refuses anything unlisted), so a signature of the
manifest's exact bytes covers the whole artifact. The signature is the raw 64-byte Ed25519
signature in :data:`runtime.artifact.SIGNATURE` (``manifest.json.sig``), so OpenSSL can check
it as well::

    openssl pkeyutl -verify -pubin -inkey public.pem -rawin \\
        -in ARTIFACT/manifest.json -sigfile ARTIFACT/manifest.json.sig

Keys are PEM files: the private key PKCS #8 (unencrypted; keep it 0600 and off deployment
boxes), the public key SubjectPublicKeyInfo (``llmspec keygen`` makes a pair; so does
``openssl genpkey -algorithm ed25519 -out private.pem`` and
``openssl pkey -in private.pem -pubout -out public.pem``).

The implementation is the ``cryptography`` package's Ed25519, an optional dependency
(``pip install 'llmspec[sign]'``): it is imported only inside the functions here, so
``import runtime`` and unsigned loads do not need it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from runtime.artifact import MANIFEST, SIGNATURE, ArtifactError
from runtime.errors import LlmspecError
from runtime.reading import UnreadableFile, read_bytes

SIGNATURE_BYTES = 64  # an Ed25519 signature
KEY_FILE_LIMIT = 64 << 10  # a PEM key is a few hundred bytes

KeySource = Any  # a path to a PEM file, PEM bytes, or a cryptography key object


class SigningError(ValueError, LlmspecError):
    """A key that cannot be used (unreadable, not Ed25519, the wrong half), or no
    ``cryptography`` package; the message says what to do. A bad *signature* is an
    :class:`ArtifactError`: it is the artifact that cannot be trusted then."""


def _ed25519() -> Any:
    try:
        # Imported here: `cryptography` is the optional `sign` extra, needed only by signing.
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(
            "signing and signature checks need the cryptography package: "
            "pip install 'llmspec[sign]'"
        ) from None
    return ed25519


def _pem(key: str | os.PathLike[str] | bytes, what: str) -> tuple[bytes, str]:
    """The PEM bytes of ``key`` (a file, read bounded, or the bytes themselves) and a name."""
    if isinstance(key, bytes):
        return key, f"the {what}"
    try:
        return read_bytes(key, KEY_FILE_LIMIT, what), os.fspath(key)
    except UnreadableFile as err:
        raise SigningError(str(err)) from None


def private_key(key: KeySource) -> Any:
    """An Ed25519 private key from a PEM file path, PEM bytes or a key object."""
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    from cryptography.hazmat.primitives import serialization

    data, name = _pem(key, "private key")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningError(
            f"{name}: the private key is encrypted; give an unencrypted PKCS #8 PEM key"
        ) from None
    except ValueError as err:
        raise SigningError(
            f"{name}: not a PEM private key ({err}); make one with llmspec keygen"
        ) from None
    except Exception as err:  # cryptography raises UnsupportedAlgorithm for other key types
        raise SigningError(f"{name}: not a usable private key ({err})") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise SigningError(
            f"{name}: a {type(loaded).__name__}, not an Ed25519 key; make one with llmspec keygen"
        )
    return loaded


def public_key(key: KeySource) -> Any:
    """An Ed25519 public key from a PEM file path, PEM bytes or a key object (a private key
    stands for its public half)."""
    ed25519 = _ed25519()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    from cryptography.hazmat.primitives import serialization

    data, name = _pem(key, "public key")
    if b"PRIVATE KEY" in data:
        raise SigningError(
            f"{name}: a private key; checking a signature takes the public key "
            "(public.pem from llmspec keygen), and the private key belongs nowhere else"
        )
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise SigningError(
            f"{name}: not a PEM public key ({err}); give the public.pem of llmspec keygen"
        ) from None
    except Exception as err:  # UnsupportedAlgorithm
        raise SigningError(f"{name}: not a usable public key ({err})") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise SigningError(f"{name}: a {type(loaded).__name__}, not an Ed25519 key")
    return loaded


def fingerprint(key: KeySource) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as PEM: (private PKCS #8, public SubjectPublicKeyInfo)."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def sign_manifest(data: bytes, key: KeySource) -> bytes:
    """The signature of manifest.json's bytes ``data`` with the private ``key``."""
    signature: bytes = private_key(key).sign(data)
    return signature


def check_signature(root: Path, data: bytes, key: KeySource) -> None:
    """Check that ``root``'s :data:`SIGNATURE` is ``key``'s signature of ``data`` (the bytes of
    its manifest.json, as read once by the caller). Raises :class:`ArtifactError` for a missing
    or wrong signature, :class:`SigningError` for an unusable key."""
    public = public_key(key)  # first: it says so when cryptography is not installed
    from cryptography.exceptions import InvalidSignature

    path = root / SIGNATURE
    if not os.path.lexists(path):
        raise ArtifactError(
            f"{path}: missing; the artifact is not signed, and a signature was required "
            "(sign it with llmspec sign ARTIFACT --key PRIVATE_KEY)"
        )
    if os.path.islink(path):
        raise ArtifactError(f"{path}: is a symbolic link; an artifact holds regular files only")
    try:
        signature = read_bytes(path, SIGNATURE_BYTES, "signature")
    except UnreadableFile as err:
        raise ArtifactError(f"{err}; it is not an Ed25519 signature") from None
    if len(signature) != SIGNATURE_BYTES:
        raise ArtifactError(
            f"{path}: {len(signature)} bytes, not a {SIGNATURE_BYTES}-byte Ed25519 signature"
        )
    try:
        public.verify(signature, data)
    except InvalidSignature:
        raise ArtifactError(
            f"{path}: not a valid signature of {MANIFEST} by the key {fingerprint(public)} "
            "(the artifact was changed after signing, or signed with another key); "
            "do not use it"
        ) from None
