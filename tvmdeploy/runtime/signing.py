"""Signed artifacts, device side: verify an Ed25519 signature over manifest.json.

The manifest holds every file's sha256, so a valid signature over its exact bytes vouches
for every file: hashes alone catch corruption, the signature catches someone who changed
a file *and* re-hashed the manifest.

    manifest.sig   {"format": "tvmdeploy-signature", "version": 1, "algorithm": "ed25519",
                    "key_id": <first 16 hex of sha256(raw public key)>,
                    "signature": <base64 of the 64-byte Ed25519 signature of manifest.json>}

Public keys are PEM SubjectPublicKeyInfo files (`tvmdeploy keygen` writes KEY.pub; the
same format as `openssl pkey -pubout`). They are parsed here with the standard library;
only the signature check needs a crypto library, imported when trusted keys are given:
`cryptography` (the `tvmdeploy[sign]` extra) or, on small devices, PyNaCl.

Imports nothing from the compile side and never TVM.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

from ..errors import ArtifactError
from .manifest import MANIFEST_NAME, Manifest

SIGNATURE_NAME = "manifest.sig"
SIGNATURE_FORMAT = "tvmdeploy-signature"
SIGNATURE_VERSION = 1
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw 32-byte key follows.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_SIGNATURE_BYTES = 4096
EXTRA_HINT = "pip install 'tvmdeploy[sign]' (cryptography) or pip install pynacl"

KeySource = Union[str, os.PathLike, bytes]


class SignatureError(ArtifactError):
    """An artifact is unsigned, its signature is bad, or it is signed by a key not trusted."""


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # 32 bytes
    source: str  # where it came from, for messages

    @property
    def key_id(self) -> str:
        return key_id(self.raw)


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def public_key_pem(raw: bytes) -> str:
    body = base64.encodebytes(_ED25519_SPKI_PREFIX + raw).decode().replace("\n", "")
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def parse_public_key(data: bytes, source: str) -> PublicKey:
    """A PEM public key (or its raw 32 bytes) -> PublicKey; one-line error otherwise."""
    if len(data) == 32 and not data.startswith(b"-----"):
        return PublicKey(data, source)
    text = data.decode("ascii", errors="replace")
    if "PRIVATE KEY" in text:
        raise SignatureError(f"{source} is a private key; trust the public one (the .pub file `tvmdeploy keygen` wrote)")
    begin, end = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
    if begin not in text or end not in text:
        raise SignatureError(f"{source} is not a PEM public key (expected {begin}); use the .pub file from `tvmdeploy keygen`")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{source}: the PEM public key is not valid base64") from None
    if len(der) != len(_ED25519_SPKI_PREFIX) + 32 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise SignatureError(f"{source} is not an Ed25519 public key (tvmdeploy signs with Ed25519 only)")
    return PublicKey(der[len(_ED25519_SPKI_PREFIX):], source)


def load_public_key(key: KeySource) -> PublicKey:
    if isinstance(key, bytes):
        return parse_public_key(key, "a public key given as bytes")
    path = Path(key)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SignatureError(f"trusted key {path} cannot be read ({e.strerror or e})") from None
    return parse_public_key(data, str(path))


def signature_document(manifest_bytes: bytes, raw_public_key: bytes, signature: bytes) -> str:
    return json.dumps(
        {
            "format": SIGNATURE_FORMAT,
            "version": SIGNATURE_VERSION,
            "algorithm": "ed25519",
            "key_id": key_id(raw_public_key),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "signature": base64.b64encode(signature).decode(),
        },
        indent=2,
    ) + "\n"


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    # O_NOFOLLOW: a link in place of the manifest or signature could point out of the artifact.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SignatureError(f"{path}: cannot read the {what} ({e.strerror or e}; a symbolic link is refused)") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SignatureError(f"{path}: the {what} is larger than {limit} bytes; not a tvmdeploy {what}")
    return data


def verify_manifest_signature(folder: Path, trusted_keys: Iterable[KeySource]) -> Manifest:
    """Check manifest.sig against the trusted keys; return the manifest parsed from the very
    bytes that were verified. Raises SignatureError (one line) otherwise.

    Runs before any file of the artifact is hashed or loaded.
    """
    folder = Path(folder)
    try:
        manifest_bytes = _read_limited(folder / MANIFEST_NAME, _MAX_MANIFEST_BYTES, "manifest")
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: not a tvmdeploy artifact (no {MANIFEST_NAME})") from None
    try:
        sig_bytes = _read_limited(folder / SIGNATURE_NAME, _MAX_SIGNATURE_BYTES, "signature")
    except FileNotFoundError:
        sig_bytes = None
    check_signature(folder, manifest_bytes, sig_bytes, trusted_keys)
    try:
        return Manifest.from_json(manifest_bytes.decode())
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{folder / MANIFEST_NAME}: unreadable manifest ({e}); recompile the artifact") from None


def check_signature(folder: Path, manifest_bytes: bytes, sig_bytes: bytes | None, trusted_keys: Iterable[KeySource]) -> None:
    """The signature document `sig_bytes` (None: unsigned) signs exactly `manifest_bytes`
    with one of the trusted keys; else one SignatureError line naming what is wrong."""
    if isinstance(trusted_keys, (str, bytes, os.PathLike)):  # one key, not a list of them
        trusted_keys = [trusted_keys]
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise SignatureError("trusted_keys is empty: give at least one public key, or None to skip signature checks")
    if sig_bytes is None:
        raise SignatureError(
            f"{folder} is not signed (no {SIGNATURE_NAME}) and trusted keys are required; "
            f"sign it with `tvmdeploy sign {folder} --key KEY`"
        )
    try:
        doc = json.loads(sig_bytes)
        if doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != "ed25519":
            raise ValueError("not an Ed25519 tvmdeploy signature")
        if int(doc.get("version", 0)) > SIGNATURE_VERSION:
            raise ValueError(f"signature version {doc['version']} is newer than this tvmdeploy understands")
        signature = base64.b64decode(doc["signature"], validate=True)
        signer = str(doc["key_id"])
        if len(signature) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise SignatureError(f"{folder / SIGNATURE_NAME}: unreadable signature ({e}); re-sign the artifact") from None
    matching = [k for k in keys if k.key_id == signer]
    if not matching:
        raise SignatureError(
            f"{folder} is signed by key {signer}, which is not among the trusted keys "
            f"({', '.join(f'{k.key_id} ({k.source})' for k in keys)}); refusing to load it"
        )
    verify = _ed25519_verifier()
    if not verify(matching[0].raw, signature, manifest_bytes):
        raise SignatureError(
            f"{folder}: the signature does not match {MANIFEST_NAME} (the manifest was modified after signing, "
            f"or the signature was forged); refusing to load it"
        )


def _ed25519_verifier():
    """verify(raw_public_key, signature, message) -> bool, from cryptography or PyNaCl."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        pass
    else:
        def verify(raw: bytes, signature: bytes, message: bytes) -> bool:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
                return True
            except InvalidSignature:
                return False

        return verify
    try:
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey
    except ImportError:
        raise SignatureError(
            f"checking artifact signatures needs an Ed25519 library, and neither cryptography nor PyNaCl "
            f"is installed; {EXTRA_HINT}"
        ) from None

    def verify(raw: bytes, signature: bytes, message: bytes) -> bool:
        try:
            VerifyKey(raw).verify(message, signature)
            return True
        except BadSignatureError:
            return False

    return verify
