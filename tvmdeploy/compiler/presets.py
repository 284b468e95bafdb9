"""Hardware target presets: TOML files under the top-level `targets/` folder.

A preset is data, validated up front: an unknown key is an error naming the file and
the key (a misspelled `mcpu` must never silently build for a generic CPU). Listing
presets reads TOML only; resolving one (host detection, TVM validation) loads TVM.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import PresetError

# Extra preset folders (os.pathsep-separated) searched before the built-in ones.
PRESET_PATH_ENV = "TVMDEPLOY_TARGETS"

_TOP_LEVEL_KEYS = {"description", "detect", "target", "host", "build"}
_DETECTABLE = {"mtriple", "mcpu", "num-cores"}
_EXPORT_FORMATS = {"so", "tar"}
_DEVICE_OF_KIND = {"llvm": "cpu", "cuda": "cuda"}


@dataclass(frozen=True)
class BuildFacts:
    """How the library is produced and run, beyond what the TVM target says."""

    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-gcc"; None: host compiler
    cross_compiler_packages: tuple[str, ...] = ()  # Debian packages that provide it
    sysroot: str | None = None
    linker_options: tuple[str, ...] = ()
    export_format: str = "so"  # "so" (shared library) or "tar" (objects, link on the device)
    threads: int = 0  # default runtime thread count; 0 = one per core of the running machine


_BUILD_KEYS = {f.name for f in dataclasses.fields(BuildFacts)}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    source: Path
    target: dict[str, Any]
    host: dict[str, Any] | None = None
    build: BuildFacts = field(default_factory=BuildFacts)
    detect: tuple[str, ...] = ()  # target keys filled in from the compiling machine

    @property
    def device(self) -> str:
        """The runtime device family the artifact runs on: "cpu" or "cuda"."""
        return _DEVICE_OF_KIND[self.target["kind"]]

    @property
    def cpu_target(self) -> dict[str, Any]:
        """The llvm target that produces the CPU code (the host for GPU presets)."""
        return self.target if self.target["kind"] == "llvm" else (self.host or {})

    @property
    def arch(self) -> str | None:
        """CPU architecture of the code, from the triple ("x86_64", "aarch64"); None until resolved."""
        triple = self.cpu_target.get("mtriple")
        return triple.split("-")[0] if triple else None


def preset_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep) if p]
    package = Path(__file__).resolve().parents[1]
    # Source checkout / editable install: <repo>/targets. Wheel install: tvmdeploy/targets.
    dirs += [package.parent / "targets", package / "targets"]
    return [d for d in dirs if d.is_dir()]


def list_presets() -> list[Preset]:
    seen: dict[str, Preset] = {}
    for d in preset_dirs():
        for path in sorted(d.glob("*.toml")):
            seen.setdefault(path.stem, parse_preset_file(path))
    return sorted(seen.values(), key=lambda p: p.name)


def find_preset_file(name_or_path: str) -> Path:
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml":
        if not as_path.is_file():
            raise PresetError(f"preset file {name_or_path} does not exist")
        return as_path
    for d in preset_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in preset_dirs() for p in d.glob("*.toml")})
    raise PresetError(
        f"unknown target preset '{name_or_path}'; available: {', '.join(names)} "
        f"(or pass a path to a .toml preset file; `tvmdeploy targets` describes each)"
    )


def load_preset(name_or_path: str) -> Preset:
    """Find and parse a preset by name (or .toml path); not yet resolved against TVM."""
    return parse_preset_file(find_preset_file(name_or_path))


def parse_preset_file(path: Path) -> Preset:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"preset file {path} is not valid TOML: {e}") from None

    def unknown(keys, allowed, where: str) -> None:
        extra = sorted(set(keys) - set(allowed))
        if extra:
            raise PresetError(
                f"preset file {path}: unknown key '{extra[0]}' in {where} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )

    unknown(data, _TOP_LEVEL_KEYS, "the top level")
    _check_types(path, data)
    target = data.get("target")
    if not isinstance(target, dict) or "kind" not in target:
        raise PresetError(f"preset file {path}: a [target] table with a 'kind' is required")
    if target["kind"] not in _DEVICE_OF_KIND:
        raise PresetError(
            f"preset file {path}: target kind '{target['kind']}' is not supported "
            f"(supported: {', '.join(sorted(_DEVICE_OF_KIND))})"
        )
    if target["kind"] == "cuda" and not str(target.get("arch", "")).startswith("sm_"):
        raise PresetError(f"preset file {path}: a cuda target needs an 'arch' such as \"sm_80\" (the GPU generation)")
    host = data.get("host")
    if host is not None and (not isinstance(host, dict) or host.get("kind") != "llvm"):
        raise PresetError(f"preset file {path}: [host] must be an llvm target table")
    if target["kind"] != "llvm" and host is None:
        raise PresetError(f"preset file {path}: a {target['kind']} target needs a [host] table")
    build = data.get("build", {})
    unknown(build, _BUILD_KEYS, "[build]")
    detect = data.get("detect", [])
    unknown(detect, _DETECTABLE, "detect")
    try:
        facts = BuildFacts(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in build.items()}
        )
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise PresetError(f"preset file {path}: bad [build] table: {e}") from None
    if facts.export_format not in _EXPORT_FORMATS:
        raise PresetError(
            f"preset file {path}: export_format '{facts.export_format}' must be one of "
            f"{', '.join(sorted(_EXPORT_FORMATS))}"
        )
    if not isinstance(facts.threads, int) or facts.threads < 0:
        raise PresetError(f"preset file {path}: threads must be a non-negative integer")
    return Preset(
        name=path.stem,
        description=str(data.get("description", "")),
        source=path,
        target=dict(target),
        host=dict(host) if host else None,
        build=facts,
        detect=tuple(detect),
    )


# Field types, checked one by one before any is used: a list where a string belongs (or a
# string where a list belongs, which Python would split into characters) is one line.
_STR, _STRS, _COUNT, _THREADS = "a string", "a list of strings", "a positive integer", "a non-negative integer"
_TARGET_TYPES = {"kind": _STR, "mtriple": _STR, "mcpu": _STR, "mattr": _STRS, "num-cores": _COUNT, "arch": _STR}
_BUILD_TYPES = {
    "cross_compiler": _STR, "cross_compiler_packages": _STRS, "sysroot": _STR, "linker_options": _STRS,
    "export_format": _STR, "threads": _THREADS,
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return value > 0 if kind == _COUNT else value >= 0


def _check_types(path: Path, data: dict) -> None:
    def check(table: Any, types: dict, where: str) -> None:
        if not isinstance(table, dict):
            raise PresetError(f"preset file {path}: {where} must be a table ([{where.strip('[]')}]), not {type(table).__name__}")
        for key, kind in types.items():
            if key in table and not _type_ok(table[key], kind):
                raise PresetError(
                    f"preset file {path}: '{key}' in {where} must be {kind}, not {table[key]!r}"
                )

    if not isinstance(data.get("description", ""), str):
        raise PresetError(f"preset file {path}: 'description' must be a string")
    if not _type_ok(data.get("detect", []), _STRS):
        raise PresetError(f"preset file {path}: 'detect' must be a list of strings, e.g. [\"mcpu\"]")
    if "target" in data:
        check(data["target"], _TARGET_TYPES, "[target]")
    if "host" in data:
        check(data["host"], _TARGET_TYPES, "[host]")
    check(data.get("build", {}), _BUILD_TYPES, "[build]")


def _with_num_cores(preset: Preset, target: dict[str, Any]) -> dict[str, Any]:
    """An llvm target needs num-cores (MetaSchedule's thread count): from the preset's own
    thread count when it has one, else the preset is refused naming the key to add."""
    if target["kind"] != "llvm" or "num-cores" in target:
        return target
    if preset.build.threads > 0:
        return {**target, "num-cores": preset.build.threads}
    raise PresetError(
        f"preset file {preset.source}: [target] needs 'num-cores' (the device's core count, e.g. num-cores = 4), "
        f"or detect = [\"num-cores\"] to take this machine's"
    )


def resolve_preset(preset: Preset):
    """Fill in detected fields and validate the preset against TVM.

    Returns (resolved preset, tvm.target.Target). Raises PresetError naming the file.
    """
    from . import _tvm

    target = dict(preset.target)
    if preset.detect:
        detected = _tvm.detect_host()
        target.update({k: detected[k] for k in preset.detect})
        if "mcpu" in preset.detect and detected.get("mattr"):  # features the detected CPU lacks here
            target["mattr"] = [*target.get("mattr", []), *detected["mattr"]]
    resolved = dataclasses.replace(preset, target=target, detect=())
    cpu = resolved.cpu_target
    if "mcpu" in cpu and "mtriple" not in cpu:
        raise PresetError(
            f"preset file {preset.source}: 'mcpu' needs an 'mtriple' too "
            f"(without one LLVM ignores the CPU name)"
        )
    if "mcpu" in cpu and not _tvm.is_valid_llvm_cpu(cpu["mtriple"], cpu["mcpu"]):
        raise PresetError(
            f"preset file {preset.source}: LLVM does not know the CPU '{cpu['mcpu']}' "
            f"for triple {cpu['mtriple']}"
        )
    try:
        tvm_target = _tvm.make_target(resolved.target, resolved.host)
    except Exception as e:  # TVM raises ValueError/TypeError with its own wording
        raise PresetError(f"preset file {preset.source}: TVM rejects the target: {e}") from None
    target = _with_num_cores(resolved, resolved.target)
    if target is not resolved.target:
        resolved = dataclasses.replace(resolved, target=target)
        tvm_target = _tvm.make_target(resolved.target, resolved.host)
    return resolved, tvm_target
