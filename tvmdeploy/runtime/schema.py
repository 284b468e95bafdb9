"""The manifest's schema: every field's type, range, size and nesting, checked before use.

A manifest is data from outside the process (a download, a shared folder). It is checked
whole, before anything else reads it, so that a wrong type or an absurd value is one line
naming the field, never a TypeError deep inside the loader or a TVM `Check failed`.
Standard library only: shared by the compiler (which writes manifests) and the thin loader.
"""

from __future__ import annotations

import re
from typing import Any
from .thread_pool import MAX_THREADS

MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 16  # JSON nesting anywhere (target, extra)
MAX_TENSORS = 4096
MAX_RANK = 32
MAX_DIM = 2**31 - 1
MAX_TEXT = 4096
# Element types numpy and TVM agree on, so the loader can hand arrays over unchanged.
# (Sub-byte types such as int4 have no numpy dtype: "int4" in numpy means a 4-byte int.)
DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
)
DEVICES = frozenset(["cpu", "cuda"])
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SchemaError(ValueError):
    """One field of a manifest is wrong: the message names it and what was expected."""


def plain_name_problem(name: Any) -> str | None:
    """Why `name` is not a plain file name inside the folder (None when it is one)."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name"
    if "/" in name or "\\" in name or "\0" in name:
        return f"'{name}' is a path, not a plain file name inside the artifact"
    if name in (".", ".."):
        return f"'{name}' is not a file name"
    if len(name) > 255:
        return "file name is longer than 255 characters"
    return None


def validate(data: Any) -> None:
    """Raise SchemaError naming the first field that does not fit the schema."""
    if not isinstance(data, dict):
        raise SchemaError(f"the manifest must be a JSON object, not {_kind(data)}")
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise SchemaError(f"JSON nested {depth} levels deep (at most {MAX_DEPTH})")
    for key, check in _FIELDS.items():
        if key not in data:
            if key in _OPTIONAL:
                continue
            raise SchemaError(f"'{key}' is missing")
        problem = check(data[key])
        if problem:
            raise SchemaError(f"'{key}' {problem}")
    if data["library"] not in data["files"]:
        raise SchemaError(f"'files' lists no sha256 for the library '{data['library']}'")
    if data["weights"] != "embedded" and data["weights"] not in data["files"]:
        raise SchemaError(f"'files' lists no sha256 for the weights file '{data['weights']}'")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (a hostile manifest may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    return f"is longer than {limit} characters" if len(value) > limit else None


def _int(value: Any, low: int, high: int) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an integer, not {_kind(value)}"
    return None if low <= value <= high else f"must be between {low} and {high}, not {value}"


def _strings(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_TENSORS * 4:
        return "must be a list of strings"
    bad = next((v for v in value if _text(v)), None)
    return None if bad is None else f"must be a list of strings (has {_kind(bad)})"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be an object, not {_kind(value)}"


def _versions(value: Any) -> str | None:
    if not isinstance(value, dict) or any(_text(k, 64) or _text(v, 256) for k, v in value.items()):
        return "must be an object of strings (package -> version)"
    return None


def _tensors(allow_unknown_dims: bool):
    low = -1 if allow_unknown_dims else 0

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) > MAX_TENSORS:
            return f"must be a list of at most {MAX_TENSORS} tensors"
        for i, spec in enumerate(value):
            problem = _tensor(spec, low)
            if problem:
                return f"[{i}]: {problem}"
        return None

    return check


def _tensor(spec: Any, low: int) -> str | None:
    if not isinstance(spec, dict):
        return f"must be an object with name, shape and dtype, not {_kind(spec)}"
    if _text(spec.get("name"), 1024):
        return "'name' must be a string"
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        return f"'shape' must be a list of at most {MAX_RANK} dimensions"
    for d in shape:
        problem = _int(d, low, MAX_DIM)
        if problem:
            return f"'shape' dimension {problem}"
    if spec.get("dtype") not in DTYPES:
        return f"'dtype' {spec.get('dtype')!r} is not one of {', '.join(sorted(DTYPES))}"
    return _index_range(spec)


def _index_range(spec: dict) -> str | None:
    value = spec.get("index_range")
    if value is None:
        return None
    if not spec["dtype"].startswith(("int", "uint")):
        return f"'index_range' is for integer inputs, not {spec['dtype']}"
    if not isinstance(value, list) or len(value) != 2:
        return "'index_range' must be a list [low, high]"
    for bound in value:
        problem = _int(bound, -(2**63), 2**63)
        if problem:
            return f"'index_range' bound {problem}"
    return None if value[0] < value[1] else f"'index_range' {value} is empty (low must be below high)"


def _files(value: Any) -> str | None:
    if not isinstance(value, dict) or len(value) > 1024:
        return "must be an object (file name -> sha256)"
    for name, digest in value.items():
        problem = plain_name_problem(name)
        if problem:
            return f"entry {problem}"
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"entry '{name}' must map to a sha256 (64 lowercase hex digits)"
    return None


def _weights(value: Any) -> str | None:
    return None if value == "embedded" else plain_name_problem(value)


def _build_seconds(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9
    return None if ok else "must be a non-negative number of seconds"


def _compute_capability(value: Any) -> str | None:
    ok = value is None or (isinstance(value, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", value))
    return None if ok else "must be null or a compute capability such as \"8.0\""


def _one_of(choices: frozenset):
    return lambda value: None if value in choices else f"must be one of {', '.join(sorted(choices))}, not {value!r}"


_FIELDS = {
    "schema_version": lambda v: _int(v, 1, 1 << 30),
    "model_name": _text,
    "source_file": _text,
    "source_sha256": lambda v: _text(v, 128),
    "inputs": _tensors(allow_unknown_dims=False),
    "outputs": _tensors(allow_unknown_dims=True),
    "preset": _text,
    "target": _object,
    "device": _one_of(DEVICES),
    "arch": lambda v: _text(v, 64),
    "cpu_flags": _strings,
    "threads": lambda v: _int(v, 0, MAX_THREADS),
    "library": plain_name_problem,
    "weights": _weights,
    "passes": _strings,
    "versions": _versions,
    "build_seconds": _build_seconds,
    "files": _files,
    "extra": _object,
    "compute_capability": _compute_capability,
}
_OPTIONAL = {"extra", "compute_capability"}
