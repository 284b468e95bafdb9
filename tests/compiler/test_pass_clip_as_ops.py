"""ClipAsRelaxOps and RemoveInferenceDropout: Before/Expected, and what they leave alone."""

from __future__ import annotations

import numpy as np
from pass_helpers import relax_main, verify_pass
from tvm import relax, topi

from tvmdeploy.compiler.passes.clip_as_ops import ClipAsRelaxOps
from tvmdeploy.compiler.passes.remove_dropout import RemoveInferenceDropout

LOW, HIGH = relax.const(np.float32(0.0)), relax.const(np.float32(6.0))


def test_importer_clip_kernels_become_relax_ops():
    """What TVM's ONNX importer emits for Clip(x, 0, 6) (opset >= 11), and the ops it means."""

    def before(bb, x):
        y = bb.emit_te(topi.maximum, x, LOW)
        return bb.emit_te(topi.minimum, y, HIGH)

    def expected(bb, x):
        y = bb.emit(relax.op.maximum(x, LOW))
        return bb.emit(relax.op.minimum(y, HIGH))

    after = relax.transform.DeadCodeElimination()(ClipAsRelaxOps()(relax_main(before)))
    verify_pass(lambda m: m, after, relax_main(expected))


def test_other_kernels_and_tensor_bounds_are_left_alone():
    bound = relax.const(np.full((1, 3, 8, 8), 2.0, np.float32))

    def before(bb, x):
        y = bb.emit_te(topi.maximum, x, bound)  # a tensor, not a scalar bound
        return bb.emit_te(topi.add, y, LOW)  # not a max/min

    mod = relax_main(before)
    verify_pass(ClipAsRelaxOps(), mod, mod)


def test_inference_dropout_is_the_identity():
    def before(bb, x):
        y = bb.emit(relax.op.nn.relu(x))
        dropped = bb.emit(relax.op.nn.dropout(y, 0.5))
        return relax.op.add(bb.emit(relax.TupleGetItem(dropped, 0)), y)

    def expected(bb, x):
        y = bb.emit(relax.op.nn.relu(x))
        return relax.op.add(y, y)

    after = relax.transform.DeadCodeElimination()(RemoveInferenceDropout()(relax_main(before)))
    verify_pass(lambda m: m, after, relax_main(expected))
