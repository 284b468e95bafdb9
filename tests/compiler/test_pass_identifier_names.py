"""IdentifierParamNames: Before/Expected, and a model-zoo input name through the CUDA build."""

from __future__ import annotations

import tvm
from tvm import relax

from tvmdeploy.compiler.passes import IdentifierParamNames
from tvmdeploy.compiler.passes.identifier_names import identifier


def _add(names: list[str]) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType((2, 3), "float32")) for n in names]
    with bb.function("main", params, attrs={"num_input": len(params)}):
        with bb.dataflow():
            out = params[0]
            for p in params[1:]:
                out = bb.emit(relax.op.add(out, p))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def test_names_that_are_not_identifiers_are_renamed():
    after = IdentifierParamNames()(_add(["gpu_0/data_0", "gpu_0_data_0", "1x", "ok"]))
    tvm.ir.assert_structural_equal(after, _add(["gpu_0_data_0_1", "gpu_0_data_0", "_1x", "ok"]), map_free_vars=True)
    assert [p.name for p in after["main"].params] == ["gpu_0_data_0_1", "gpu_0_data_0", "_1x", "ok"]


def test_valid_names_are_left_alone():
    before = _add(["x", "y"])
    assert IdentifierParamNames()(before)["main"].same_as(before["main"])


def test_identifier():
    assert identifier("a.b/c-d", set()) == "a_b_c_d"
    assert identifier("", {"input"}) == "input_1"
