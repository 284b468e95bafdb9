"""The artifact is a closed world: the loader reads only plain, listed, hashed files in its folder.

Each case edits a real artifact the way an attacker (or a broken copy) would and checks the
loader and the CLI refuse it with one line, without opening anything outside the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tvmdeploy import compile_model
from tvmdeploy.cli.main import main
from tvmdeploy.compiler.pruning import MagnitudePruning
from tvmdeploy.errors import ArtifactError
from tvmdeploy.runtime import load, read_manifest
from tvmdeploy.runtime.manifest import MANIFEST_NAME
from tvmdeploy.runtime.weights_file import read_weights, write_weights


def _copy(artifact, tmp_path, name="copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(artifact, copy, symlinks=True)
    return copy


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli_error(capsys, *argv) -> str:
    """Run the CLI in-process: it must fail with exit 1 and exactly one line on stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("tvmdeploy: error: ") and err.count("\n") == 1, err
    assert "unexpected" not in err and "Check failed" not in err
    return err


@pytest.fixture(scope="module")
def pruned_artifact(tmp_path_factory, digits_model) -> Path:
    """An artifact whose weights travel beside the library (weights.npz)."""
    out = tmp_path_factory.mktemp("pruned") / "digits-pruned"
    return compile_model(digits_model, "host", output_dir=out, prune=MagnitudePruning(ratio=0.5)).artifact_dir


@pytest.mark.parametrize("name", ["../outside.so", "/tmp/outside.so", "sub/model.so", "..", ""])
def test_library_outside_the_folder_is_refused(digits_artifact, tmp_path, capsys, name):
    copy = _copy(digits_artifact, tmp_path)
    outside = tmp_path / "outside.so"
    shutil.copy(copy / "model.so", outside)
    digest = _sha(outside.read_bytes())

    def edit(m):
        m["library"] = name
        m["files"] = {name: digest}

    _edit_manifest(copy, edit)
    with pytest.raises(ArtifactError, match=r"manifest.json: '(library|files)' .*(path|file name)"):
        load(copy)
    _cli_error(capsys, "run", str(copy), "--random-inputs")


def test_inspect_never_hashes_a_file_outside_the_folder(digits_artifact, tmp_path, capsys):
    copy = _copy(digits_artifact, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2\n")
    _edit_manifest(copy, lambda m: m["files"].update({str(secret): _sha(secret.read_bytes())}))
    err = _cli_error(capsys, "inspect", str(copy))
    assert "is a path, not a plain file name" in err
    assert "secret" not in capsys.readouterr().out


def test_symlinked_library_is_refused_even_when_its_hash_matches(digits_artifact, tmp_path, capsys):
    copy = _copy(digits_artifact, tmp_path)
    outside = tmp_path / "elsewhere.so"
    (copy / "model.so").rename(outside)
    (copy / "model.so").symlink_to(outside)  # same bytes, same sha256, but not in the folder
    with pytest.raises(ArtifactError, match=r"model.so cannot be opened .*must be a plain file in the folder"):
        load(copy)
    _cli_error(capsys, "inspect", str(copy))


def test_symlinked_manifest_is_refused(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    (copy / MANIFEST_NAME).rename(tmp_path / "m.json")
    (copy / MANIFEST_NAME).symlink_to(tmp_path / "m.json")
    with pytest.raises(ArtifactError, match=r"manifest.json cannot be opened \(Too many levels of symbolic links\); it must be a plain file"):
        read_manifest(copy)


def test_fifo_in_place_of_the_library_is_refused_without_blocking(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    (copy / "model.so").unlink()
    os.mkfifo(copy / "model.so")  # opening a FIFO for reading would block without O_NONBLOCK
    with pytest.raises(ArtifactError, match=r"model.so is not a regular file"):
        load(copy)


def test_loaded_library_is_a_private_copy_of_the_verified_bytes(digits_artifact, tmp_path, digits):
    """dlopen maps a private copy made from the hashed bytes, never the artifact's file by path."""
    copy = _copy(digits_artifact, tmp_path)
    model = load(copy)
    maps = Path("/proc/self/maps").read_text()
    assert str(copy / "model.so") not in maps
    assert "tvmdeploy-load-" in maps  # the copy, already deleted once mapped
    (copy / "model.so").write_bytes(b"replaced after loading")  # changes nothing for the loaded model
    (out,) = model(digits[0][:1])
    (expected,) = load(digits_artifact)(digits[0][:1])
    np.testing.assert_array_equal(out, expected)


BAD_FIELDS = [
    (lambda m: m.update(inputs="image"), r"'inputs' must be a list"),
    (lambda m: m["inputs"][0].update(shape=[1, "x", 8, 8]), r"'inputs' \[0\]: 'shape' dimension must be an integer"),
    (lambda m: m["inputs"][0].update(shape=[1, 1, 8, 2**40]), r"'shape' dimension must be between"),
    (lambda m: m["inputs"][0].update(dtype="int4"), r"'dtype' 'int4' is not one of"),
    (lambda m: m["inputs"][0].pop("name"), r"'name' must be a string"),
    (lambda m: m.update(threads=-1), r"'threads' must be between 0"),
    (lambda m: m.update(threads="2"), r"'threads' must be an integer, not a string"),
    (lambda m: m.update(threads=True), r"'threads' must be an integer, not a boolean"),
    (lambda m: m.update(device="tpu"), r"'device' must be one of cpu, cuda"),
    (lambda m: m.update(cpu_flags="avx2"), r"'cpu_flags' must be a list of strings"),
    (lambda m: m.update(extra=[1]), r"'extra' must be an object"),
    (lambda m: m.update(target=None), r"'target' must be an object, not null"),
    (lambda m: m.pop("library"), r"'library' is missing"),
    (lambda m: m["files"].update({"model.so": "abc"}), r"must map to a sha256"),
    (lambda m: m.update(extra={"a": json.loads("[" * 40 + "]" * 40)}), r"JSON nested \d+ levels deep"),
    (lambda m: m.update(weights="weights.npz"), r"'files' lists no sha256 for the weights file 'weights.npz'"),
    (lambda m: m.update(compute_capability=8), r"'compute_capability' must be null or"),
    (lambda m: m.update(build_seconds="fast"), r"'build_seconds' must be a non-negative number"),
    (lambda m: m["inputs"][0].update(index_range=[0, 10]), r"'index_range' is for integer inputs, not float32"),
    (lambda m: m["inputs"][0].update(dtype="int64", index_range="0..10"), r"'index_range' must be a list \[low, high\]"),
    (lambda m: m["inputs"][0].update(dtype="int64", index_range=[0, 1.5]), r"'index_range' bound must be an integer"),
    (lambda m: m["inputs"][0].update(dtype="int64", index_range=[5, 5]), r"'index_range' \[5, 5\] is empty"),
]


@pytest.mark.parametrize("edit, message", BAD_FIELDS)
def test_manifest_schema_violations_are_one_line(digits_artifact, tmp_path, capsys, edit, message):
    copy = _copy(digits_artifact, tmp_path)
    _edit_manifest(copy, edit)
    with pytest.raises(ArtifactError, match=message):
        read_manifest(copy)
    _cli_error(capsys, "inspect", str(copy))
    _cli_error(capsys, "run", str(copy), "--random-inputs")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100000 + "]" * 100000, r"unreadable manifest \(RecursionError"),
        ("[1, 2]", r"must be a JSON object, not a list"),
        ('{"schema_version": 99}', r"manifest schema 99 is newer"),
        ("{not json", r"unreadable manifest \(JSONDecodeError"),
    ],
)
def test_unparseable_manifests(digits_artifact, tmp_path, capsys, text, message):
    copy = _copy(digits_artifact, tmp_path)
    (copy / MANIFEST_NAME).write_text(text)
    with pytest.raises(ArtifactError, match=message):
        read_manifest(copy)
    _cli_error(capsys, "inspect", str(copy))


def test_oversized_manifest_is_refused_before_reading(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    with open(copy / MANIFEST_NAME, "r+b") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    with pytest.raises(ArtifactError, match=r"manifest.json is \d+ bytes, more than"):
        read_manifest(copy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["inputs"][0].update(shape=[1, 1, 8, 9]),
        lambda m: m["inputs"][0].update(dtype="float64"),
        lambda m: m["inputs"][0].update(shape=[1, 64]),
    ],
)
def test_manifest_that_disagrees_with_the_library(digits_artifact, tmp_path, capsys, edit):
    copy = _copy(digits_artifact, tmp_path)
    _edit_manifest(copy, edit)
    model = load(copy)
    with pytest.raises(ArtifactError, match=r"the library rejected inputs that match manifest.json"):
        model(*model.random_inputs())
    _cli_error(capsys, "run", str(copy), "--random-inputs", "--repeat", "0")


def test_extra_input_in_the_manifest_is_caught_at_load(digits_artifact, tmp_path):
    copy = _copy(digits_artifact, tmp_path)
    _edit_manifest(copy, lambda m: m["inputs"].append({"name": "extra", "shape": [1], "dtype": "float32"}))
    with pytest.raises(ArtifactError, match=r"the library takes 1 arguments, but manifest.json lists 2 input"):
        load(copy)


def _rewrite_weights(folder: Path, entries: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    (folder / "weights.npz").write_bytes(buffer.getvalue())
    _edit_manifest(folder, lambda m: m["files"].update({"weights.npz": _sha(buffer.getvalue())}))


def _entries(folder: Path) -> dict:
    with np.load(folder / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def test_weights_file_must_be_listed(pruned_artifact, tmp_path):
    copy = _copy(pruned_artifact, tmp_path)
    _edit_manifest(copy, lambda m: m["files"].pop("weights.npz"))
    with pytest.raises(ArtifactError, match=r"'files' lists no sha256 for the weights file"):
        load(copy)


def test_weights_entry_missing_or_extra_tensor(pruned_artifact, tmp_path, capsys):
    entries = _entries(pruned_artifact)
    count = sum(k.endswith(".shape") for k in entries)
    missing = _copy(pruned_artifact, tmp_path, "missing")
    _rewrite_weights(missing, {k: v for k, v in entries.items() if k != "0.shape" and not k.startswith("0.")} | {"0.shape": entries["0.shape"]})
    with pytest.raises(ArtifactError, match=r"weights.npz: damaged weights file \(KeyError"):
        load(missing)
    extra = _copy(pruned_artifact, tmp_path, "extra")
    _rewrite_weights(extra, entries | {f"{count}.shape": np.array([2], np.int64), f"{count}.dense": np.ones(2, np.float32)})
    with pytest.raises(ArtifactError, match=rf"weights.npz holds {count + 1} weight\(s\); the files do not belong together"):
        load(extra)
    _cli_error(capsys, "run", str(extra), "--random-inputs")
    stray = _copy(pruned_artifact, tmp_path, "stray")
    _rewrite_weights(stray, entries | {"notes": np.zeros(1)})
    with pytest.raises(ArtifactError, match=r"unexpected entry 'notes'"):
        load(stray)


def test_declared_weight_size_is_bounded_by_the_file(pruned_artifact, tmp_path):
    entries = _entries(pruned_artifact)
    mask_key = next(k for k in entries if k.endswith(".mask"))
    index = mask_key.split(".")[0]
    huge = _copy(pruned_artifact, tmp_path)
    _rewrite_weights(huge, entries | {f"{index}.shape": np.array([1 << 20, 1 << 20], np.int64)})
    with pytest.raises(ArtifactError, match=rf"weight {index} declares \d+ elements, more than its mask"):
        load(huge)


def test_npy_header_declaring_more_than_stored_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    write_weights(path, [np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)])  # dense (distinct values)
    crafted = io.BytesIO()  # a header claiming 2**37 floats in front of 64 bytes
    np.lib.format.write_array_header_1_0(crafted, {"descr": "<f4", "fortran_order": False, "shape": (1 << 37,)})
    crafted.write(bytes(64))
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, crafted.getvalue() if info.filename == "0.dense.npy" else src.read(info))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"entry '0.dense.npy' declares \d+ bytes of float32 but stores 1\d\d\b"):
        read_weights(path)


def test_unlisted_files_are_not_used(digits_artifact, tmp_path, digits):
    """A file dropped into the folder (not in the manifest) is neither hashed nor loaded."""
    copy = _copy(digits_artifact, tmp_path)
    (copy / "weights.npz").write_bytes(b"not listed, never read")
    (copy / "evil.so").write_bytes(b"\x7fELF")
    (out,) = load(copy)(digits[0][:1])
    assert out.shape == (1, 10)
