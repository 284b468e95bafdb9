"""GuardIntegerDivision: Before/Expected, what it leaves alone, and end to end on ONNX
Div/Mod of integer inputs: ONNX Runtime's numbers where it has some, and a zero divisor
(or the minimum over -1) no longer kills the process with SIGFPE."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from pass_helpers import verify_pass
from tvm import relax

from tvmdeploy import compile_model, load
from tvmdeploy.compiler.passes.guard_integer_division import GuardIntegerDivision


def _two_inputs(body, dtype="int64"):
    bb = relax.BlockBuilder()
    x, d = (relax.Var(n, relax.TensorType((4,), dtype)) for n in ("x", "d"))
    with bb.function("main", [x, d]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x, d))
        bb.emit_func_output(out)
    return bb.get()


def test_an_integer_divisor_that_may_trap_is_replaced_where_it_would():
    before = _two_inputs(lambda bb, x, d: relax.op.floor_divide(x, d))

    def expected(bb, x, d):
        c = lambda v: relax.const(np.array(v, "int64"), "int64")  # noqa: E731
        traps = relax.op.logical_or(
            relax.op.equal(d, c(0)), relax.op.logical_and(relax.op.equal(x, c(np.iinfo(np.int64).min)), relax.op.equal(d, c(-1)))
        )
        return relax.op.floor_divide(x, relax.op.where(traps, c(1), d))

    verify_pass(GuardIntegerDivision(), before, relax.transform.Normalize()(_two_inputs(expected)))


@pytest.mark.parametrize("case", ["float", "constant-divisor"])
def test_divisions_that_cannot_trap_are_left_alone(case):
    if case == "float":
        mod = _two_inputs(lambda bb, x, d: relax.op.divide(x, d), "float32")
    else:
        mod = _two_inputs(lambda bb, x, d: relax.op.mod(x, relax.const(np.array([2, 3, 5, 7], "int64"), "int64")))
    verify_pass(GuardIntegerDivision(), mod, mod)


def _onnx(op, path):
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [4]) for n in ("a", "b")]
    node = helper.make_node(op, ["a", "b"], ["y"], **({"fmod": 0} if op == "Mod" else {}))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.INT64, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize("op", ["Div", "Mod"])
def test_onnx_integer_division_matches_onnxruntime_and_never_traps(op, tmp_path):
    _onnx(op, tmp_path / "m.onnx")
    artifact = compile_model(tmp_path / "m.onnx", "host", output_dir=tmp_path / "art").artifact_dir
    a, b = np.array([7, -7, 7, -7]), np.array([2, 2, -2, -2])
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(load(artifact)(a, b)[0], want)
    # In a child process: before the guard this died of SIGFPE.
    lowest = np.iinfo(np.int64).min
    code = (
        "import numpy as np; from tvmdeploy import load; "
        f"print(load({str(artifact)!r})(np.array([5, 6, {lowest}, 8]), np.array([0, 3, -1, 0]))[0].tolist())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    values = eval(run.stdout.strip().splitlines()[-1])
    assert values[1] == (2 if op == "Div" else 0)  # the elements that did not trap are exact
