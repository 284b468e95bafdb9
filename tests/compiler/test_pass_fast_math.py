"""FastMath: Before/Expected, calls it leaves alone, and its error against float64."""

from __future__ import annotations

import math

import numpy as np
import tvm
from pass_helpers import relax_main, verify_pass
from tvm import relax, topi

from tvmdeploy.compiler.kernels.softmax_rows import softmax_rows
from tvmdeploy.compiler.passes.fast_math import FastMath
from tvmdeploy.compiler.presets import load_preset, resolve_preset


def test_exp_erf_tanh_softmax_become_polynomial_kernels():
    def before(bb, x):
        y = bb.emit(relax.op.exp(x))
        y = bb.emit(relax.op.erf(y))
        y = bb.emit(relax.op.tanh(y))
        y = bb.emit(relax.op.nn.softmax(y, axis=-1))
        return bb.emit(relax.op.nn.softmax(y, axis=0))

    def expected(bb, x):
        y = bb.emit(bb.call_te(topi.fast_exp, x))
        y = bb.emit(bb.call_te(topi.fast_erf, y))
        y = bb.emit(bb.call_te(topi.fast_tanh, y))
        # Over the last axis: the row softmax (kernels/softmax_rows.py); else TVM's.
        y = bb.emit(bb.call_te(softmax_rows, y, primfunc_name_hint="softmax_rows"))
        return bb.emit(bb.call_te(topi.nn.fast_softmax, y, 0))

    verify_pass(FastMath(), relax_main(before), relax_main(expected))


def test_float16_and_calls_of_functions_are_left_alone():
    mod = relax_main(lambda bb, x: bb.emit(relax.op.exp(x)), (4, 8), "float16")
    verify_pass(FastMath(), mod, mod)
    # A call whose callee is a function, not an op (TVM's FastMathTransform fails on it).
    bb = relax.BlockBuilder()
    y = relax.Var("y", relax.TensorType((4,), "float32"))
    with bb.function("helper", [y]):
        bb.emit_func_output(bb.emit(relax.op.exp(y)))
    helper = bb.get().get_global_var("helper")
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.Call(helper, [x])))
    after = FastMath()(bb.get())
    assert isinstance(after["main"].body.blocks[0].bindings[0].value.op, tvm.ir.GlobalVar)


def test_erf_and_exp_error_against_float64():
    _, target = resolve_preset(load_preset("host"))
    x = np.linspace(-12, 12, 100_001).astype(np.float32)
    mod = relax_main(lambda bb, v: bb.emit(relax.op.add(relax.op.erf(v), relax.op.exp(v))), x.shape)
    vm = relax.VirtualMachine(tvm.compile(FastMath()(mod), target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    want = np.vectorize(math.erf)(x.astype(np.float64)) + np.exp(x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
