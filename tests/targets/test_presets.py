"""Target presets: every shipped preset validates and builds a tvm.target.Target."""

from __future__ import annotations

import pytest

from tvmdeploy.errors import PresetError
from tvmdeploy.compiler.presets import list_presets, load_preset, resolve_preset

REQUIRED = {
    "host",
    "x86_64",
    "x86_64-avx2",
    "x86_64-avx512",
    "aarch64-cortex-a72",
    "aarch64-cortex-a76",
    "cuda-sm80",
    "cuda-sm90",
}


def test_required_presets_ship():
    assert REQUIRED <= {p.name for p in list_presets()}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_preset_builds_a_tvm_target(name):
    import tvm

    preset, target = resolve_preset(load_preset(name))
    assert isinstance(target, tvm.target.Target)
    assert preset.description
    if preset.target["kind"] == "cuda":
        assert target.kind.name == "cuda" and target.host is not None
        assert target.host.attrs["mtriple"] == "x86_64-linux-gnu"
        assert preset.device == "cuda"
    else:
        assert target.kind.name == "llvm" and "mcpu" in target.attrs and "mtriple" in target.attrs
        assert int(target.attrs["num-cores"]) >= 1  # MetaSchedule needs it
    if name.startswith("aarch64"):
        assert preset.arch == "aarch64" and preset.build.cross_compiler == "aarch64-linux-gnu-gcc"


def test_host_preset_resolves_this_machine():
    import os
    import platform

    preset, target = resolve_preset(load_preset("host"))
    assert preset.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    assert target.attrs["mtriple"].startswith(preset.arch)
    assert "conda" not in target.attrs["mtriple"]  # with the conda triple LLVM ignores mcpu
    assert int(target.attrs["num-cores"]) == len(os.sched_getaffinity(0))
    assert str(target.attrs["mcpu"]) not in ("", "generic")


def test_unknown_preset_names_the_choices():
    with pytest.raises(PresetError, match=r"unknown target preset 'x86-65'.*x86_64-avx2"):
        load_preset("x86-65")


def _write(tmp_path, text, name="custom.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_misspelled_key_names_file_and_key(tmp_path):
    path = _write(tmp_path, 'description = "typo"\n[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\n[build]\nthread = 2\n')
    with pytest.raises(PresetError, match=rf"{path}: unknown key 'thread' in \[build\]"):
        load_preset(str(path))
    path = _write(tmp_path, 'descripton = "typo"\n[target]\nkind = "llvm"\n', "top.toml")
    with pytest.raises(PresetError, match=r"top.toml: unknown key 'descripton' in the top level"):
        load_preset(str(path))


def test_misspelled_target_option_is_rejected_by_tvm(tmp_path):
    path = _write(tmp_path, '[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpus = "haswell"\n')
    with pytest.raises(PresetError, match=r"custom.toml: TVM rejects the target: .*mcpus"):
        resolve_preset(load_preset(str(path)))


def test_unknown_cpu_is_rejected(tmp_path):
    path = _write(tmp_path, '[target]\nkind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "haswel"\n')
    with pytest.raises(PresetError, match=r"LLVM does not know the CPU 'haswel'"):
        resolve_preset(load_preset(str(path)))


def test_cuda_preset_needs_a_host(tmp_path):
    path = _write(tmp_path, '[target]\nkind = "cuda"\narch = "sm_80"\n')
    with pytest.raises(PresetError, match=r"needs a \[host\] table"):
        load_preset(str(path))


def test_invalid_toml(tmp_path):
    path = _write(tmp_path, "[target\n")
    with pytest.raises(PresetError, match=r"custom.toml is not valid TOML"):
        load_preset(str(path))
