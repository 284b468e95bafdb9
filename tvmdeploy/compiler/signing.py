"""Signing artifacts: Ed25519 key pairs and signatures over manifest.json.

Needs `cryptography` (the `tvmdeploy[sign]` extra); the device side verifies with
tvmdeploy.runtime.signing (cryptography or PyNaCl). The signature file's format is
described there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import TvmDeployError
from ..runtime.manifest import MANIFEST_NAME
from ..runtime.signing import EXTRA_HINT, SIGNATURE_NAME, key_id, signature_document

Signer = Callable[[bytes], str]  # manifest bytes -> the manifest.sig document


class SigningError(TvmDeployError):
    """A key cannot be made or read, or an artifact cannot be signed."""


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise SigningError(f"signing needs the cryptography package; {EXTRA_HINT.split(' or ')[0]}") from None
    return serialization, Ed25519PrivateKey


def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to PATH (mode 0600) and its public key to PATH.pub."""
    serialization, Ed25519PrivateKey = _crypto()
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningError(f"{p} already exists; refusing to overwrite a key (choose another path)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_signer(key_path: str | os.PathLike) -> Signer:
    """Read a private key (PEM from `tvmdeploy keygen`) now, so a bad key fails before a compile."""
    serialization, Ed25519PrivateKey = _crypto()
    path = Path(key_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningError(f"signing key {path} cannot be read ({e.strerror or e})") from None
    if b"PRIVATE KEY" not in data:
        raise SigningError(f"{path} is not a PEM private key; sign with the key `tvmdeploy keygen` wrote (not its .pub)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"{path}: cannot read the private key ({e}); encrypted keys are not supported") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 key (tvmdeploy signs with Ed25519 only)")
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(manifest_bytes: bytes) -> str:
        return signature_document(manifest_bytes, raw_public, key.sign(manifest_bytes))

    sign.key_id = key_id(raw_public)  # type: ignore[attr-defined]
    return sign


def write_signature(folder: Path, signer: Signer) -> Path:
    """Sign folder/manifest.json as it is on disk; manifest.sig replaces any older one atomically."""
    manifest_bytes = (folder / MANIFEST_NAME).read_bytes()
    tmp = folder / (SIGNATURE_NAME + ".tmp")
    tmp.write_text(signer(manifest_bytes))
    os.replace(tmp, folder / SIGNATURE_NAME)
    return folder / SIGNATURE_NAME


def sign_artifact(artifact: str | os.PathLike, key_path: str | os.PathLike) -> Path:
    """Sign an existing artifact folder, after checking its files match its manifest
    (a signature must not vouch for a corrupted artifact). Returns the signature file."""
    from ..runtime.artifact_manifest import read_manifest, verify_files

    signer = load_signer(key_path)
    folder = Path(artifact)
    verify_files(folder, read_manifest(folder))
    return write_signature(folder, signer)
