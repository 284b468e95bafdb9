"""ONNX -> Relax, robust to what real exporters write.

Real exports (torch.onnx, tf2onnx, Keras) compute shapes at run time with
Shape/Gather/Concat/Expand/ConstantOfShape subgraphs, which TVM's ONNX frontend does
not always see through. Once the input shapes are static those subgraphs are constant,
so they are folded away (by ONNX Runtime's basic, ONNX-domain-only optimizer) before
conversion. Every check that can fail is done before anything slow runs, and reports
everything it found at once.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ...errors import ModelImportError, summarize_exception
from ...runtime.manifest import TensorSpec
from ...runtime.schema import DTYPES
from .model import ImportedModel, checked_override
from .onnx_rewrite import (
    computes_shapes,
    fold_with_onnxruntime,
    graph_inputs,
    normalize_constants,
    sum_to_adds,
    walk_nodes,
    with_static_inputs,
)


def import_onnx(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    path = Path(path)
    model, sha = _read_model(path)
    _check_supported_ops(model, path)
    _check_inference_only(model, path)
    inputs = _static_inputs(model, path, input_shapes or {})
    model = with_static_inputs(model, inputs)
    import_passes = []
    if normalize_constants(model):
        import_passes.append("onnx-normalize-constants")
    if sum_to_adds(model):
        import_passes.append("onnx-sum-to-adds")
    if computes_shapes(model):
        folded = fold_with_onnxruntime(model)
        if folded is not None:
            model = folded
            import_passes.append("onnxruntime-basic-fold")
    _check_dtypes(path, inputs, "input")  # before the (slow) conversion
    mod = _to_relax(model, path, inputs, chosen=set(input_shapes or {}))
    outputs = _output_specs(model, mod)
    _check_dtypes(path, outputs, "output")
    return ImportedModel(
        name=_model_name(path),
        source=path.resolve(),
        source_sha256=sha,
        mod=mod,
        inputs=inputs,
        outputs=outputs,
        import_passes=import_passes,
    )


def _dtype_name(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):  # UNDEFINED, STRING and types numpy lacks
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)


def _check_dtypes(path: Path, specs: list[TensorSpec], role: str) -> None:
    """Element types the deploy side can hand over as numpy arrays; sub-byte ones (int4,
    float4) have no numpy dtype, so an artifact taking them could never be called."""
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise ModelImportError(
                f"{path}: {role} '{spec.name}' has element type {spec.dtype}, which the loader cannot pass "
                f"(supported: {', '.join(sorted(DTYPES))}); change the model's {role} to int8/uint8/float32 "
                f"and convert inside the graph"
            )


def _model_name(path: Path) -> str:
    stem = path.stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "model"


# Protobuf's own limit: larger models keep their weights in external data files.
MAX_MODEL_BYTES = 2 << 30


def _read_model(path: Path) -> tuple[onnx.ModelProto, str]:
    data = _read_bounded(path)
    try:
        model = onnx.load_from_string(data)
    except Exception:
        model = None
    if model is None or not model.opset_import:
        raise ModelImportError(
            f"{path}: not an ONNX model (could not parse a graph from it); "
            f"export one with torch.onnx.export, tf2onnx or keras2onnx"
        )
    if len(model.graph.node) == 0:
        raise ModelImportError(
            f"{path}: its graph '{model.graph.name}' has no nodes, so there is nothing to compile; "
            f"export the model with its layers (an ONNX file that only passes its inputs through needs no compiler)"
        )
    _check_opset(model, path)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise ModelImportError(f"{path}: its external weight files cannot be read: {e}") from None
    _check_model(model, path, external)
    return model, hashlib.sha256(data).hexdigest()


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing (before reading) anything that is not a regular file of a
    size protobuf can parse: /dev/zero or a FIFO would be read forever."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelImportError(f"{path}: no such file") from None
    except OSError as e:
        raise ModelImportError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelImportError(f"{path}: is a folder, expected an .onnx model file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelImportError(f"{path}: not a regular file (a device or a pipe); give the .onnx file itself")
    if info.st_size > MAX_MODEL_BYTES:
        raise ModelImportError(
            f"{path}: {info.st_size / 2**30:.1f} GiB, more than the 2 GiB an ONNX file can hold; save the "
            f"weights as external data (onnx.save_model(model, path, save_as_external_data=True))"
        )
    if info.st_size == 0:
        raise ModelImportError(f"{path}: the file is empty, expected an ONNX model")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_MODEL_BYTES + 1)
    except OSError as e:
        raise ModelImportError(f"{path}: cannot read it ({e.strerror})") from None


def importer_max_opset() -> int:
    """The highest ONNX opset TVM's importer has a converter version for."""
    from .._tvm import onnx_convert_map

    versions = [
        int(name[len("_impl_v"):])
        for converter in onnx_convert_map().values()
        for name in dir(converter)
        if name.startswith("_impl_v") and name[len("_impl_v"):].isdigit()
    ]
    return max(versions)


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    ceiling = importer_max_opset()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > ceiling:
            raise ModelImportError(
                f"{path}: ONNX opset {entry.version} is newer than the highest TVM's importer knows ({ceiling}); "
                f"export with opset_version={ceiling} or lower"
            )


def _check_model(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """ONNX's full check (graph structure, SSA, types, shape inference): what ONNX Runtime
    refuses, refused here, naming the node the checker names."""
    writers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:  # ONNX's own message names the tensor, not the nodes
        for name in (o for o in node.output if o):
            if name in writers:
                first = writers[name]
                raise ModelImportError(
                    f"{path}: tensor '{name}' is written by two nodes, '{first.name or first.op_type}' "
                    f"({first.op_type}) and '{node.name or node.op_type}' ({node.op_type}); each tensor needs one writer"
                )
            writers[name] = node
    problem = _checker_problem(str(path) if external else model)  # external data: read from the path
    if problem and _SHAPELESS in problem and _shapeless_values(model) and not external:
        # Inputs and outputs declared without a shape are valid for ONNX Runtime; the checker
        # insists on one and stops there. The rest of the graph is checked on a copy with
        # inferred shapes; what still has none gets it from --input-shape (_static_inputs
        # says so) or, for outputs, from TVM's own inference.
        problem = _checker_problem(onnx.shape_inference.infer_shapes(model))
        problem = None if problem and _SHAPELESS in problem else problem
    if problem:
        raise ModelImportError(f"{path}: not a valid ONNX model: {problem[:400]}; fix the exporter or the graph")


_SHAPELESS = "Field 'shape' of 'type' is required but missing"


def _checker_problem(model) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return " ".join(str(e).split())
    return None


def _shapeless_values(model: onnx.ModelProto) -> list[str]:
    return [
        v.name for v in (*model.graph.input, *model.graph.output)
        if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
    ]


def _check_supported_ops(model: onnx.ModelProto, path: Path) -> None:
    from .._tvm import ONNX_DIRECTLY_HANDLED_OPS, onnx_convert_map

    supported = set(onnx_convert_map()) | ONNX_DIRECTLY_HANDLED_OPS
    missing = [n for n in walk_nodes(model.graph) if n.op_type not in supported]
    if missing:
        listed = ", ".join(
            f"{n.op_type} (node '{n.name or '<unnamed>'}'" + (f", domain {n.domain}" if n.domain else "") + ")"
            for n in missing
        )
        kinds = sorted({n.op_type for n in missing})
        raise ModelImportError(
            f"{path}: {len(missing)} node(s) use operators TVM's ONNX importer does not support "
            f"({', '.join(kinds)}): {listed}. Replace them in the exporter (e.g. a different "
            f"opset or an equivalent op), or file an issue with the model attached"
        )


def _check_inference_only(model: onnx.ModelProto, path: Path) -> None:
    """BatchNormalization in training mode normalizes with the batch's statistics and
    updates the running ones; TVM's importer would silently use the running statistics."""
    training = []
    for n in walk_nodes(model.graph):
        if n.op_type != "BatchNormalization":
            continue
        attrs = {a.name: a.i for a in n.attribute if a.name in ("training_mode", "is_test")}
        # Opsets < 9 mark inference with is_test=1 and may still list the statistics outputs.
        if attrs.get("training_mode", 0) or (len([o for o in n.output if o]) > 1 and not attrs.get("is_test", 0)):
            training.append(f"'{n.name or '<unnamed>'}'")
    if training:
        raise ModelImportError(
            f"{path}: BatchNormalization node(s) {', '.join(training)} are in training mode (batch statistics, "
            f"running-statistics outputs); export the model for inference (model.eval() before torch.onnx.export, "
            f"training=False in Keras)"
        )


def _static_inputs(model: onnx.ModelProto, path: Path, overrides: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    declared_inputs = graph_inputs(model)
    names = [i.name for i in declared_inputs]
    for name in overrides:
        if name not in names:
            raise ModelImportError(
                f"{path}: --input-shape names '{name}', which is not an input of the model "
                f"(inputs: {', '.join(names)})"
            )
    specs, problems = [], []
    for inp in declared_inputs:
        tensor_type = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise ModelImportError(f"{path}: input '{inp.name}' is not a tensor (sequence/map inputs are unsupported)")
        dtype = _dtype_name(tensor_type.elem_type)
        # A fixed dimension may be 0 (an empty tensor): that is static, not symbolic.
        declared = [
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or "?")
            for d in tensor_type.shape.dim
        ]
        shown = f"[{', '.join(map(str, declared))}]"
        if inp.name in overrides:
            known = declared if tensor_type.HasField("shape") else None
            shape = checked_override(path, inp.name, overrides[inp.name], known)
        elif not tensor_type.HasField("shape"):
            problems.append(f"'{inp.name}' has no declared shape")
            continue
        elif any(not isinstance(d, int) for d in declared):
            symbolic = [str(d) for d in declared if not isinstance(d, int)]
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in declared)
            problems.append(
                f"'{inp.name}' has symbolic dimension(s) {', '.join(symbolic)} in {shown}: "
                f"pass --input-shape {inp.name}={example}"
            )
            continue
        else:
            shape = tuple(declared)
        specs.append(TensorSpec(inp.name, shape, dtype))
    if problems:
        raise ModelImportError(f"{path}: input shapes must be static: " + "; ".join(problems))
    return specs


def _to_relax(model: onnx.ModelProto, path: Path, inputs: list[TensorSpec], chosen: set[str] = frozenset()):
    """chosen: the inputs whose shapes the user gave (--input-shape), named when the import fails."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            # The importer warns once per IR-v3 weight ("in initializer but not in graph input").
            warnings.simplefilter("ignore")
            mod = from_onnx(
                model,
                shape_dict={s.name: list(s.shape) for s in inputs},
                dtype_dict={s.name: s.dtype for s in inputs},
            )
    except Exception as e:
        raise ModelImportError(f"{path}: TVM's ONNX importer failed: {summarize_exception(e)}{_chosen_shapes(inputs, chosen)}") from e
    params = mod["main"].params
    if len(params) != len(inputs):
        raise ModelImportError(
            f"{path}: the imported graph takes {len(params)} inputs, the ONNX model declares "
            f"{len(inputs)}; this model needs a fix in the importer"
        )
    return relax.transform.Normalize()(mod)


def _output_specs(model: onnx.ModelProto, mod) -> list[TensorSpec]:
    from tvm import relax

    # TVM 0.27 renamed StructInfo to "type": Function.ret_ty, relax.TupleType.
    ret = mod["main"].ret_ty
    infos = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    names = [o.name for o in model.graph.output]
    if len(names) != len(infos):
        names = [f"output_{i}" for i in range(len(infos))]
    specs = []
    for name, info in zip(names, infos):
        # A static dimension is an IntImm (has .value); a symbolic one (data-dependent
        # output size) is a Var and is recorded as -1.
        if info.shape is not None:
            shape = tuple(int(d.value) if hasattr(d, "value") else -1 for d in info.shape.values)
        else:  # only the rank is known (a data-dependent output, e.g. Slice with starts as inputs)
            shape = (-1,) * max(int(getattr(info, "ndim", 0)), 0)
        specs.append(TensorSpec(name, shape, str(info.dtype)))
    return specs


def _chosen_shapes(inputs: list[TensorSpec], chosen: set[str]) -> str:
    """The shapes given with --input-shape, since dimensions inputs share must agree."""
    given = [s for s in inputs if s.name in chosen]
    if not given:
        return ""
    shapes = ", ".join(f"{s.name} [{', '.join(map(str, s.shape))}]" for s in given)
    return f"; imported with {shapes}: dimensions the inputs share (batch, sequence length) must agree in --input-shape"
