"""Shared fixtures: real models, ONNX Runtime as the numerical reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tvmdeploy.data import DIGITS_CNN, DIGITS_TEST

MODELS = Path(__file__).parent / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def ort_run(model_path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def randomized_light_model(name: str, out_dir: Path, seed: int = 0, logits: bool = True) -> Path:
    """A light_*.onnx architecture with random weights instead of its constant ones.

    The light models generate every weight with ConstantOfShape(0.02), which makes all
    channels identical and hides layout and indexing bugs. This swaps each generated
    weight for a seeded random initializer of the same shape: LeCun-normal for conv/dense
    weights, positive scales/variances and small shifts for 1-D parameters.
    With `logits`, the final Softmax is cut off: random weights saturate it to one-hot,
    which would hide numerical differences.
    """
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    graph = model.graph
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept_nodes, new_inits = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(x) for x in shapes[node.input[0]])
            new_inits.append(numpy_helper.from_array(_random_weight(node.output[0], shape, rng), node.output[0]))
        else:
            kept_nodes.append(node)
    if logits and kept_nodes[-1].op_type == "Softmax" and kept_nodes[-1].output[0] == graph.output[0].name:
        softmax = kept_nodes.pop()
        elem_type = graph.output[0].type.tensor_type.elem_type
        del graph.output[:]
        graph.output.append(onnx.helper.make_tensor_value_info(softmax.input[0], elem_type, None))
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(new_inits)
    # Weights are initializers now; IR v3 lists initializers as inputs too.
    if model.ir_version < 4:
        listed = {i.name for i in graph.input}
        for init in new_inits:
            if init.name not in listed:
                graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    path = out_dir / f"light_{name}_random.onnx"
    onnx.save(model, path)
    return path


def _random_weight(name: str, shape: tuple[int, ...], rng) -> np.ndarray:
    if len(shape) >= 2:  # conv (O, I, kh, kw) or dense (out, in) / (in, out)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else min(shape)
        return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    lowered = name.lower()
    if any(k in lowered for k in ("_s_", "scale", "riv", "var")):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def random_inputs(model_path, seed: int = 0) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


@pytest.fixture(scope="session")
def digits():
    data = np.load(DIGITS_TEST)
    return data["image"], data["label"]


@pytest.fixture(scope="session")
def digits_model() -> Path:
    return DIGITS_CNN


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def digits_artifact(session_dir, digits_model) -> Path:
    """The digits CNN compiled once for host, shared by the read-only tests."""
    from tvmdeploy import compile_model

    return compile_model(digits_model, "host", output_dir=session_dir / "digits-host").artifact_dir


def pytest_configure(config):
    # The compile side maps TVM's compiler library first: a test that only loads an artifact
    # must not leave this process with the runtime-only library for the tests that compile.
    import tvmdeploy.compiler  # noqa: F401

    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    # Hermetic: tests never read or write the user's real tuning cache (~/.cache/tvmdeploy).
    import tempfile

    os.environ["TVMDEPLOY_CACHE_DIR"] = tempfile.mkdtemp(prefix="tvmdeploy-test-cache-")
