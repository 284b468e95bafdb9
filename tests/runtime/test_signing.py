"""Signed artifacts: Ed25519 over manifest.json, checked before any code of the artifact is loaded."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS

from tvmdeploy.cli.main import main
from tvmdeploy.compiler.signing import SigningError, keygen, sign_artifact
from tvmdeploy.errors import ArtifactError
from tvmdeploy.runtime import load
from tvmdeploy.runtime.signing import SIGNATURE_NAME, SignatureError

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: keygen(folder / name) for name in ("release", "other")}  # name -> (private, public)


@pytest.fixture
def signed(digits_artifact, keys, tmp_path) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(digits_artifact, folder)
    sign_artifact(folder, keys["release"][0])
    return folder


def _rehash(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(keys):
    private, public = keys["release"]
    assert private.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        keygen(private)


def test_signed_artifact_loads_with_its_key_and_runs_the_same(signed, digits_artifact, keys, digits):
    images, _ = digits
    doc = json.loads((signed / SIGNATURE_NAME).read_text())
    assert doc["algorithm"] == "ed25519" and len(doc["key_id"]) == 16
    # Any one trusted key may match; its public key may also be given as bytes.
    model = load(signed, trusted_keys=[keys["other"][1], keys["release"][1].read_bytes()])
    reference = load(digits_artifact)
    np.testing.assert_array_equal(model(images[:1])[0], reference(images[:1])[0])


def test_tampered_manifest_is_refused(signed, keys):
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["threads"] = 64
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(SignatureError, match="signature does not match manifest.json") as info:
        load(signed, trusted_keys=[keys["release"][1]])
    assert "\n" not in str(info.value)


def test_replaced_library_with_rehashed_manifest_is_refused_before_it_is_loaded(signed, keys, tmp_path):
    """The attack hashes alone cannot catch: a new library and a manifest re-hashed to match.
    The stand-in library leaves a mark when the dynamic linker runs its constructor."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build the stand-in library")
    mark = tmp_path / "constructor-ran"
    source = tmp_path / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        f'__attribute__((constructor)) static void ran(void) {{ FILE *f = fopen("{mark}", "w"); if (f) fclose(f); }}\n'
    )
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(signed / "model.so"), str(source)], check=True)
    _rehash(signed)
    with pytest.raises(SignatureError, match="signature does not match"):
        load(signed, trusted_keys=[keys["release"][1]])
    assert not mark.exists()
    # Without trusted keys the re-hashed artifact passes the hash check and its code runs.
    with pytest.raises(Exception):
        load(signed)
    assert mark.exists()


def test_signature_by_an_untrusted_key_is_refused(signed, keys):
    with pytest.raises(SignatureError, match="not among the trusted keys") as info:
        load(signed, trusted_keys=[keys["other"][1]])
    assert "other.pub" in str(info.value)


def test_unsigned_artifact_is_refused_when_keys_are_required(digits_artifact, keys):
    with pytest.raises(SignatureError, match="is not signed") as info:
        load(digits_artifact, trusted_keys=[keys["release"][1]])
    assert "tvmdeploy sign" in str(info.value)
    with pytest.raises(SignatureError, match="trusted_keys is empty"):
        load(digits_artifact, trusted_keys=[])


def test_signature_of_another_artifact_does_not_transfer(signed, digits_artifact, keys, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(digits_artifact, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_name"] = "renamed"
    (other / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(signed / SIGNATURE_NAME, other / SIGNATURE_NAME)
    with pytest.raises(SignatureError, match="signature does not match"):
        load(other, trusted_keys=[keys["release"][1]])


def test_cli_compile_sign_and_run_with_trusted_keys(keys, tmp_path, capsys):
    private, public = keys["release"]
    # A key that cannot sign fails before the compile, leaving nothing behind.
    code, out, err = cli(capsys, "compile", MODELS / "mlp.onnx", "-o", tmp_path / "mlp", "--sign", public)
    assert code == 1 and "not a PEM private key" in err and not (tmp_path / "mlp").exists(), err
    code, out, err = cli(capsys, "compile", MODELS / "mlp.onnx", "-o", tmp_path / "mlp", "--sign", private)
    assert code == 0, err
    assert (tmp_path / "mlp" / SIGNATURE_NAME).is_file() and "signed with" in out
    code, out, err = cli(capsys, "run", tmp_path / "mlp", "--trusted-key", public, "--random-inputs", "--repeat", "0")
    assert code == 0 and "output logits: float32[1, 10]" in out, err

    for argv, fragment in [
        (["--trusted-key", keys["other"][1]], "not among the trusted keys"),
        (["--trusted-key", private], "is a private key"),
        (["--trusted-key", tmp_path / "missing.pub"], "cannot be read"),
    ]:
        code, _, err = cli(capsys, "run", tmp_path / "mlp", *argv, "--random-inputs")
        assert code == 1 and fragment in err and len(err.strip().splitlines()) == 1, err

    (tmp_path / "mlp" / SIGNATURE_NAME).unlink()
    code, _, err = cli(capsys, "run", tmp_path / "mlp", "--trusted-key", public, "--random-inputs")
    assert code == 1 and "is not signed" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli(capsys, "sign", tmp_path / "mlp", "--key", private)
    assert code == 0 and (tmp_path / "mlp" / SIGNATURE_NAME).is_file(), err
    # A public key cannot sign; a corrupted artifact is not signed.
    code, _, err = cli(capsys, "sign", tmp_path / "mlp", "--key", public)
    assert code == 1 and "not a PEM private key" in err, err
    with open(tmp_path / "mlp" / "model.so", "ab") as f:
        f.write(b"\0")
    code, _, err = cli(capsys, "sign", tmp_path / "mlp", "--key", private)
    assert code == 1 and "does not match the sha256" in err, err


def test_verifying_without_a_crypto_library_names_the_extra(signed, keys):
    """A device without cryptography or PyNaCl: one line naming what to install. Unsigned
    loading still works there (the crypto library is imported only for trusted keys)."""
    script = (
        "import sys\n"
        "sys.modules['cryptography'] = None; sys.modules['nacl'] = None\n"
        "from tvmdeploy.runtime import load\n"
        "from tvmdeploy.errors import ArtifactError\n"
        "load(sys.argv[1])\n"
        "try:\n"
        "    load(sys.argv[1], trusted_keys=[sys.argv[2]])\n"
        "except ArtifactError as e:\n"
        "    print(e)\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script, str(signed), str(keys["release"][1])],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tvmdeploy[sign]" in run.stdout and "pynacl" in run.stdout and len(run.stdout.strip().splitlines()) == 1


def test_pynacl_alone_verifies_on_a_device(signed, keys):
    """The small-device path: PyNaCl instead of cryptography, same verdicts."""
    pytest.importorskip("nacl", reason="PyNaCl is in the test extra")
    script = (
        "import json, sys\n"
        "sys.modules['cryptography'] = None\n"
        "from tvmdeploy.runtime import load\n"
        "from tvmdeploy.runtime.signing import SignatureError\n"
        "model = load(sys.argv[1], trusted_keys=[sys.argv[2]])\n"
        "open(sys.argv[1] + '/manifest.json', 'a').write(' ')\n"
        "try:\n"
        "    load(sys.argv[1], trusted_keys=[sys.argv[2]])\n"
        "    print(json.dumps({'tampered': 'loaded'}))\n"
        "except SignatureError as e:\n"
        "    print(json.dumps({'tampered': str(e), 'nacl': 'nacl.signing' in sys.modules}))\n"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script, str(signed), str(keys["release"][1])],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["nacl"] is True and "signature does not match manifest.json" in result["tampered"], result


def test_a_symlinked_manifest_is_refused_under_trusted_keys(signed, keys, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(signed / "manifest.json", outside)
    (signed / "manifest.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        load(signed, trusted_keys=[keys["release"][1]])
