"""Shared by the one-file-per-pass tests: build Before/Expected modules, verify a pass."""

from __future__ import annotations

import tvm
from tvm import relax


def relax_main(body, shape=(1, 3, 8, 8), dtype="float32") -> tvm.IRModule:
    """main(x) with one dataflow block whose bindings `body(bb, x)` emits; returns its output."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def verify_pass(run_pass, before: tvm.IRModule, expected: tvm.IRModule, **equal_options) -> tvm.IRModule:
    """run_pass(before) is well-formed and structurally equal to expected; returns it."""
    after = run_pass(before)
    assert relax.analysis.well_formed(after) is not False, "the pass produced an ill-formed module"
    tvm.ir.assert_structural_equal(after, expected, **equal_options)
    return after
