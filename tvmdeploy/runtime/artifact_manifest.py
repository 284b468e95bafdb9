"""An artifact folder's manifest, read and schema-checked (optionally against a trusted
signature), and its files checked against the manifest's hashes. No TVM: the loader,
bundles, the remote runner and the CLI's inspect all start here."""

from __future__ import annotations

import json
import os

from ..errors import ArtifactError
from . import schema
from .artifact_files import ArtifactFolder
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest
from .schema import MAX_MANIFEST_BYTES


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read an artifact's manifest and check it against the schema (no hashing, no TVM)."""
    with ArtifactFolder(path) as folder:
        return read_checked_manifest(folder)


def read_checked_manifest(folder: ArtifactFolder, trusted_keys=None) -> Manifest:
    """The manifest, schema-checked; with trusted keys, parsed from the very bytes whose
    signature was checked (before any other file is read)."""
    where = folder.path / MANIFEST_NAME
    if not folder.exists(MANIFEST_NAME):
        raise ArtifactError(f"{folder.path}: not a tvmdeploy artifact (no {MANIFEST_NAME}); compile one with `tvmdeploy compile`")
    text = folder.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    if trusted_keys is not None:
        from .signing import SIGNATURE_NAME, check_signature

        signature = folder.read(SIGNATURE_NAME, 64 * 1024) if folder.exists(SIGNATURE_NAME) else None
        check_signature(folder.path, text, signature, trusted_keys)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise ArtifactError(f"{where}: unreadable manifest ({type(e).__name__}: {str(e)[:200]}); recompile the artifact") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: manifest schema {version} is newer than this "
            f"tvmdeploy understands ({SCHEMA_VERSION}); upgrade tvmdeploy"
        )
    try:
        schema.validate(data)
    except schema.SchemaError as e:
        raise ArtifactError(f"{where}: {e}; recompile the artifact") from None
    return Manifest.from_dict(data)


def verify_files(folder: str | os.PathLike, manifest: Manifest) -> dict[str, int]:
    """Hash every file the manifest lists, each read once from its own descriptor; {name: size}."""
    with ArtifactFolder(folder) as opened:
        return {name: opened.verify(name, expected) for name, expected in manifest.files.items()}
