"""Rewrites of an ONNX graph before TVM's importer sees it.

Each one turns something real exporters write, and TVM's importer trips over, into an
equivalent plain form: static input shapes, Constant nodes in their `value` form,
shape-computing subgraphs folded to constants.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...runtime.manifest import TensorSpec

# Ops whose presence means the graph computes shapes (or weights) at run time.
_SHAPE_COMPUTING_OPS = {"Shape", "Size", "ConstantOfShape", "Expand", "Range", "Where", "Gather"}

# Constant's attribute forms other than `value` (opset 12+), and how to make a tensor of each.
_CONSTANT_FORMS = {
    "value_int": lambda a: np.array(a.i, dtype=np.int64),
    "value_ints": lambda a: np.array(list(a.ints), dtype=np.int64),
    "value_float": lambda a: np.array(a.f, dtype=np.float32),
    "value_floats": lambda a: np.array(list(a.floats), dtype=np.float32),
}


def graph_inputs(model: onnx.ModelProto):
    """The real inputs. Before ONNX IR v4, initializers were also listed as graph inputs."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def walk_nodes(graph: onnx.GraphProto):
    """Every node, including those of If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from walk_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from walk_nodes(g)


def with_static_inputs(model: onnx.ModelProto, inputs: list[TensorSpec]) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    by_name = {s.name: s for s in inputs}
    for inp in model.graph.input:
        spec = by_name.get(inp.name)
        if spec is None:
            continue
        shape = inp.type.tensor_type.shape
        del shape.dim[:]
        for size in spec.shape:
            shape.dim.add().dim_value = size
    return model


def normalize_constants(model: onnx.ModelProto) -> int:
    """Rewrite Constant(value_int/value_ints/value_float/value_floats) into Constant(value).

    torch.onnx (2.x, dynamo) writes `value_ints`; TVM's importer reads only `value`.
    Returns the number of nodes rewritten (in place).
    """
    rewritten = 0
    for node in walk_nodes(model.graph):
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        make = _CONSTANT_FORMS.get(attr.name)
        if make is None:
            continue
        tensor = numpy_helper.from_array(make(attr))
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", tensor))
        rewritten += 1
    return rewritten


def sum_to_adds(model: onnx.ModelProto) -> int:
    """Rewrite Sum(a, b, c...) into Add(Add(a, b), c)... (in place; returns how many).

    TVM's importer turns an n-input Sum (ResNet's residual joins in Caffe2-era exports)
    into broadcast_to x n + stack + sum over a new axis: a materialized n-times-larger
    5-D tensor, a reduction kernel per join, and a rank no layout pass can convert. A
    chain of Adds (same multidirectional broadcasting) fuses into the producing conv.
    """
    rewritten = 0
    for graph in _graphs(model.graph):
        nodes, before = [], rewritten
        for node in graph.node:
            if node.op_type != "Sum" or node.domain not in ("", "ai.onnx"):
                nodes.append(node)
                continue
            inputs = list(node.input)
            if len(inputs) == 1:
                nodes.append(helper.make_node("Identity", inputs, list(node.output), name=node.name))
            else:
                acc = inputs[0]
                for i, operand in enumerate(inputs[1:], start=1):
                    out = node.output[0] if i == len(inputs) - 1 else f"{node.output[0]}__sum{i}"
                    nodes.append(helper.make_node("Add", [acc, operand], [out], name=f"{node.name}__add{i}"))
                    acc = out
            rewritten += 1
        if rewritten > before:
            del graph.node[:]
            graph.node.extend(nodes)
    return rewritten


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def computes_shapes(model: onnx.ModelProto) -> bool:
    return any(n.op_type in _SHAPE_COMPUTING_OPS for n in model.graph.node)


def fold_with_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Constant-fold shape subgraphs with ONNX Runtime's basic (ONNX-domain) optimizer.

    Returns None where ONNX Runtime cannot load the model; TVM's importer then gets the
    graph as it is.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="tvmdeploy-fold-") as tmp:
        out = os.path.join(tmp, "folded.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = out
        options.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            folded = onnx.load(out)
        except Exception:
            return None
    # In IR v3 models weights are also graph inputs; ONNX Runtime drops the initializers
    # it folded but leaves their input entries behind, which would read as model inputs.
    real_inputs = {i.name for i in graph_inputs(model)}
    initializers = {t.name for t in folded.graph.initializer}
    kept = [i for i in folded.graph.input if i.name in real_inputs or i.name in initializers]
    del folded.graph.input[:]
    folded.graph.input.extend(kept)
    return folded


