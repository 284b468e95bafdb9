"""The deploy side stands alone: no compile-side module, no TVM compiler library."""

from __future__ import annotations

import json
import logging
import os
import pkgutil
import subprocess
import sys

import tvmdeploy.runtime

RUNTIME_MODULES = sorted(f"tvmdeploy.runtime.{m.name}" for m in pkgutil.iter_modules(tvmdeploy.runtime.__path__))

IMPORT_ALL = r"""
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from tvmdeploy.runtime.tvm_library import import_tvm
import_tvm()
maps = open("/proc/self/maps").read()
print(json.dumps({
    "compile_side": sorted(m for m in sys.modules if m.startswith(("tvmdeploy.compiler", "tvmdeploy.board"))),
    "tvm_compiler_python": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir.meta_schedule"))),
    "compiler_mapped": "libtvm_compiler" in maps,
    "runtime_mapped": "libtvm_runtime" in maps,
    "env_left": "TVM_USE_RUNTIME_LIB" in __import__("os").environ,
}))
"""


def test_every_runtime_module_imports_without_the_compile_side():
    assert "tvmdeploy.runtime.loader" in RUNTIME_MODULES and "tvmdeploy.runtime.remote" in RUNTIME_MODULES
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *RUNTIME_MODULES], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["compile_side"] == []
    assert report["runtime_mapped"] and not report["compiler_mapped"]
    assert report["tvm_compiler_python"] == []
    # The choice is made for this process only: children keep the user's environment.
    assert report["env_left"] is False


def test_loader_says_when_the_compiler_is_already_mapped(digits_artifact, caplog):
    # This test process imported the compile side first (conftest), so TVM has its compiler.
    import tvmdeploy.runtime.tvm_library as tvm_library

    tvm_library._said = False
    with caplog.at_level(logging.INFO, logger="tvmdeploy.runtime"):
        tvmdeploy.runtime.load(digits_artifact)
    said = [r.getMessage() for r in caplog.records if r.name == "tvmdeploy.runtime"]
    assert len(said) == 1 and "already imported with its compiler library" in said[0]
