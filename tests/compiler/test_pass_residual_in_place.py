"""AccumulateInPlace (passes/residual_in_place.py): which kernels may overwrite an input,
which call sites may let them, and the same numbers as the plain build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.script import tirx as T

from tvmdeploy.compiler import _tvm
from tvmdeploy.compiler.passes import residual_in_place
from tvmdeploy.compiler.passes.residual_in_place import accumulate_in_place, in_place_operand
from tvmdeploy.compiler.presets import load_preset, resolve_preset
from tvmdeploy.compiler.tuning.default_schedule import apply_default_schedules

MODELS = Path(__file__).resolve().parents[1] / "models"
TARGET = resolve_preset(load_preset("host"))[1]
SHAPE = (4, 32)


def _scheduled(body, n_inputs=2):
    """main(x0, x1, ...) = body(bb, xs): legalized, fused and given default schedules."""
    bb = relax.BlockBuilder()
    xs = [relax.Var(f"x{i}", relax.TensorType(SHAPE, "float32")) for i in range(n_inputs)]
    with bb.function("main", xs):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *xs))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(mod)))
    return apply_default_schedules(mod, TARGET)[0]


def _in_place_calls(mod) -> int:
    return mod["main"].script(show_meta=False).count("R.call_tir_inplace(")


def _run(mod, inputs):
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return [o.numpy() for o in out] if isinstance(out, (list, tuple)) or hasattr(out, "__len__") and not hasattr(out, "numpy") else out.numpy()


def _fresh(bb, x, scale):
    """scale * x computed by a kernel of its own (a matmul: nothing fuses it into its reader)."""
    return bb.emit(relax.op.matmul(x, relax.const(scale * np.eye(32, dtype="float32"))))


def _residual(bb, x0, x1):
    """r = 2 x0 (a kernel's output); y = relu(x1 * 3) + r: r read last by the add."""
    r = _fresh(bb, x0, 2.0)
    y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.matmul(x1, relax.const(np.eye(32, dtype="float32"))))))
    return relax.op.add(y, r)


def _kernels(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, _tvm.PrimFunc)}


def test_a_kernel_adding_a_dead_tensor_writes_over_it():
    mod = _scheduled(_residual)
    after = accumulate_in_place(mod)
    assert _in_place_calls(after) == 1
    inputs = [np.random.default_rng(i).standard_normal(SHAPE).astype("float32") for i in range(2)]
    want = np.maximum(inputs[1], 0) + 2 * inputs[0]
    np.testing.assert_allclose(_run(after, inputs), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_run(after, inputs), _run(mod, inputs))


def _read_later(bb, x0, x1):
    """r read by two kernels: only the second may overwrite it."""
    r = _fresh(bb, x0, 2.0)
    a = bb.emit(relax.op.add(_fresh(bb, x1, 3.0), r))
    return relax.op.add(_fresh(bb, a, 0.5), r)


def _model_input(bb, x0, x1):
    """The residual is the model's input: the caller's tensor."""
    return relax.op.add(_fresh(bb, x1, 3.0), x0)


def _view_read_later(bb, x0, x1):
    """A view of r (a reshape, which the build makes a view) is returned after r's last read."""
    r = _fresh(bb, x0, 2.0)
    view = bb.emit(relax.op.reshape(r, (128,)))
    return relax.Tuple([bb.emit(relax.op.add(_fresh(bb, x1, 3.0), r)), view])


@pytest.mark.parametrize("body, in_place", [(_read_later, 1), (_model_input, 0), (_view_read_later, 0)])
def test_call_sites_that_still_need_the_tensor_are_left_alone(body, in_place):
    mod = _scheduled(body)
    after = accumulate_in_place(mod)
    assert _in_place_calls(after) == in_place
    inputs = [np.random.default_rng(i).standard_normal(SHAPE).astype("float32") for i in range(2)]
    got, want = _run(after, inputs), _run(mod, inputs)
    for g, w in zip(got if isinstance(got, (list, tuple)) else [got], want if isinstance(want, (list, tuple)) else [want]):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_only_kernels_reading_the_tensor_at_the_element_they_write_qualify():
    (add,) = _kernels(_scheduled(lambda bb, x0, x1: relax.op.add(x0, x1))).values()
    assert in_place_operand(add) == 0
    # x1 read at another element than the one written (reversed): x0 qualifies, x1 never
    (flipped,) = _kernels(_scheduled(lambda bb, x0, x1: relax.op.add(bb.emit(relax.op.flip(x1, axis=1)), x0))).values()
    assert in_place_operand(flipped) == 1  # x0, the kernel's second parameter
    (only_flipped,) = _kernels(_scheduled(lambda bb, x0, x1: relax.op.flip(bb.emit(relax.op.add(x1, x0)), axis=1))).values()
    assert in_place_operand(only_flipped) is None
    # a read in two blocks: a[i] + a[31 - i] written in a second pass would read
    # elements the first pass already overwrote
    assert in_place_operand(_two_passes) is None


@T.prim_func(s_tir=True)
def _two_passes(a: T.Buffer((32,), "float32"), out: T.Buffer((32,), "float32")):
    T.func_attr({"tirx.noalias": True})
    tmp = T.sblock_alloc_buffer((32,))
    for i in range(32):
        with T.sblock("copy"):
            v = T.axis.remap("S", [i])
            tmp[v] = a[v]
    for i in range(32):
        with T.sblock("sum"):
            v = T.axis.remap("S", [i])
            out[v] = tmp[v] + a[31 - v]


def test_a_residual_block_export_overwrites_its_residual_and_matches(tmp_path, monkeypatch):
    from tvmdeploy.compiler.pipeline import compile_model
    from tvmdeploy.runtime import load

    model = MODELS / "residual_block.onnx"
    compile_model(str(model), target="host", output_dir=str(tmp_path / "in_place"), cache_dir=str(tmp_path / "cache"))
    manifest = (tmp_path / "in_place" / "manifest.json").read_text()
    assert "AccumulateInPlace" in manifest
    monkeypatch.setattr(residual_in_place, "accumulate_in_place", tvm.transform.module_pass(lambda m, c: m, 0, "Off"))
    compile_model(str(model), target="host", output_dir=str(tmp_path / "plain"), cache_dir=str(tmp_path / "cache"))
    session = ort.InferenceSession(str(model))
    feed = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(feed.shape).astype("float32")
    got = load(str(tmp_path / "in_place"))(x)[0]
    np.testing.assert_array_equal(got, load(str(tmp_path / "plain"))(x)[0])
    np.testing.assert_allclose(got, session.run(None, {feed.name: x})[0], rtol=1e-4, atol=1e-4)
