"""Single-file bundles: pack an artifact, load the file; hostile bundles are refused whole."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tvmdeploy.cli.main import main
from tvmdeploy.compiler.signing import keygen, sign_artifact
from tvmdeploy.errors import ArtifactError
from tvmdeploy.runtime import load
from tvmdeploy.runtime.bundle import BundleError, pack, unpack
from tvmdeploy.runtime.signing import SignatureError


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where bundles are unpacked during a test, to check nothing is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="module")
def bundle(digits_artifact, tmp_path_factory) -> Path:
    return pack(digits_artifact, tmp_path_factory.mktemp("bundle") / "digits.tvmd")


def test_bundle_round_trip_runs_bit_for_bit_and_leaves_nothing_behind(bundle, digits_artifact, digits, private_tmp):
    images, _ = digits
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    assert sorted(m.name for m in members) == sorted(["manifest.json", *manifest["files"]])
    assert all(m.isreg() for m in members)

    model = load(bundle)
    assert model.path == bundle
    reference = load(digits_artifact)
    for image in images[:3]:
        np.testing.assert_array_equal(model(image[None])[0], reference(image[None])[0])
    assert list(private_tmp.iterdir()) == []  # unpacked, loaded, removed


def test_signed_bundle_keeps_its_signature(digits_artifact, tmp_path, private_tmp):
    folder = tmp_path / "digits"
    shutil.copytree(digits_artifact, folder)
    private, public = keygen(tmp_path / "key")
    _, other = keygen(tmp_path / "other")
    sign_artifact(folder, private)
    signed = pack(folder, tmp_path / "signed.tvmd")
    assert load(signed, trusted_keys=[public]).manifest.model_name
    with pytest.raises(SignatureError) as info:
        load(signed, trusted_keys=[other])
    # The message names the bundle, not the temporary folder it was unpacked into.
    assert str(signed) in str(info.value) and str(private_tmp) not in str(info.value)
    with pytest.raises(SignatureError, match="is not signed"):
        load(pack(digits_artifact, tmp_path / "unsigned.tvmd"), trusted_keys=[public])
    assert list(private_tmp.iterdir()) == []


def _hostile(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], manifest_from: Path | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        if manifest_from is not None:
            for name in sorted(os.listdir(manifest_from)):
                tar.add(manifest_from / name, arcname=name)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    "member, fragment",
    [
        (_member("../escaped.txt"), "a path out of the folder"),
        (_member("sub/../../escaped.txt"), "a path out of the folder"),
        (_member("/tmp/escaped-absolute.txt"), "an absolute path"),
        (_member("model.so", tarfile.SYMTYPE, "/etc/passwd"), "a link (to '/etc/passwd')"),
        (_member("model.so", tarfile.LNKTYPE, "manifest.json"), "a link"),
        (_member("null", tarfile.CHRTYPE), "not a regular file"),
        (_member("folder", tarfile.DIRTYPE), "not a regular file"),
        (_member("sub/model.so"), "a path with a folder part"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "directory", "subfolder"],
)
def test_hostile_members_are_refused_and_nothing_is_written(member, fragment, digits_artifact, tmp_path, private_tmp, capsys):
    work = tmp_path / "work"
    work.mkdir()
    path = _hostile(work / "hostile.tvmd", [(member, b"payload")], manifest_from=digits_artifact)
    with pytest.raises(BundleError) as info:
        load(path)
    message = str(info.value)
    assert fragment in message and repr(member.name) in message and "\n" not in message
    assert list(private_tmp.iterdir()) == []  # the partial unpack is removed
    assert sorted(os.listdir(work)) == ["hostile.tvmd"]  # and nothing landed beside it
    assert not Path("/tmp/escaped-absolute.txt").exists()
    code, _, err = main(["run", str(path), "--random-inputs"]), *capsys.readouterr()
    assert code == 1 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_oversized_member_and_too_many_members_are_refused(digits_artifact, tmp_path, private_tmp):
    big = _hostile(tmp_path / "big.tvmd", [(_member("model.so"), b"\0" * 4096)])
    with pytest.raises(BundleError, match="4096 bytes, over the 1024-byte limit"):
        unpack(big, max_member_bytes=1024)
    with pytest.raises(BundleError, match="over 2048 bytes"):
        unpack(_hostile(tmp_path / "sum.tvmd", [(_member(f"f{i}"), b"\0" * 1000) for i in range(3)]), max_total_bytes=2048)
    many = _hostile(tmp_path / "many.tvmd", [(_member(f"f{i}"), b"x") for i in range(10)])
    with pytest.raises(BundleError, match="more than 5 members"):
        unpack(many, max_members=5)
    assert list(private_tmp.iterdir()) == []
    # The default limits pass a real artifact.
    shutil.rmtree(unpack(pack(digits_artifact, tmp_path / "ok.tvmd")))


def test_members_the_manifest_does_not_list_or_tampered_files_are_refused(digits_artifact, tmp_path, private_tmp):
    extra = _hostile(tmp_path / "extra.tvmd", [(_member("payload.so"), b"\x7fELF")], manifest_from=digits_artifact)
    with pytest.raises(BundleError, match="'payload.so': not listed in the bundle's manifest.json"):
        load(extra)
    duplicate = _hostile(tmp_path / "dup.tvmd", [(_member("manifest.json"), b"{}")], manifest_from=digits_artifact)
    with pytest.raises(BundleError, match="a second member of that name"):
        load(duplicate)
    # A library swapped inside the bundle fails the hash check, before it is loaded.
    swapped = tmp_path / "swapped"
    shutil.copytree(digits_artifact, swapped)
    (swapped / "model.so").write_bytes(b"\x7fELF not a library")
    with pytest.raises(ArtifactError, match="model.so does not match the sha256") as info:
        load(_hostile(tmp_path / "swapped.tvmd", [], manifest_from=swapped))
    assert "swapped.tvmd" in str(info.value)
    assert list(private_tmp.iterdir()) == []


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tvmd"
    junk.write_bytes(b"not a tar file at all")
    with pytest.raises(BundleError, match="not a tvmdeploy bundle"):
        load(junk)
    truncated = tmp_path / "truncated.tvmd"
    data = (tmp_path / "whole.tvmd")
    _hostile(data, [(_member("model.so"), os.urandom(200_000))])
    truncated.write_bytes(data.read_bytes()[:50_000])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load(truncated)


def test_cli_pack_and_run(digits_artifact, tmp_path, capsys):
    folder = tmp_path / "digits-host"
    shutil.copytree(digits_artifact, folder)
    code, out, err = main(["pack", str(folder)]), *capsys.readouterr()
    assert code == 0 and (tmp_path / "digits-host.tvmd").is_file(), err
    code, out, err = main(["run", str(tmp_path / "digits-host.tvmd"), "--random-inputs", "--repeat", "0"]), *capsys.readouterr()
    assert code == 0 and "output" in out, err


def test_cli_inspect_a_signed_bundle(digits_artifact, tmp_path, capsys, private_tmp):
    folder = tmp_path / "digits"
    shutil.copytree(digits_artifact, folder)
    private, public = keygen(tmp_path / "key")
    _, other = keygen(tmp_path / "other")
    code, out, err = main(["inspect", str(pack(folder, tmp_path / "unsigned.tvmd"))]), *capsys.readouterr()
    assert code == 0 and "signature: none (unsigned)" in out and "files verified" in out, err
    sign_artifact(folder, private)
    bundle = pack(folder, tmp_path / "signed.tvmd")
    code, out, err = main(["inspect", str(bundle)]), *capsys.readouterr()
    assert code == 0 and "present, not checked" in out, err
    code, out, err = main(["inspect", str(bundle), "--trusted-key", str(public)]), *capsys.readouterr()
    assert code == 0 and "verified against the trusted key" in out, err
    code, out, err = main(["inspect", str(bundle), "--trusted-key", str(other)]), *capsys.readouterr()
    assert code == 1 and "not among the trusted keys" in err and str(bundle) in err and len(err.strip().splitlines()) == 1, err
    code, out, err = main(["run", str(bundle), "--rpc", "127.0.0.1:1", "--random-inputs"]), *capsys.readouterr()
    assert code == 1 and "give the artifact folder" in err, err
    assert list(private_tmp.iterdir()) == []
