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
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ...errors import ModelImportError, summarize_exception
from ...runtime.manifest import TensorSpec
from .model import ImportedModel
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
    mod = _to_relax(model, path, inputs)
    outputs = _output_specs(model, mod)
    _check_whole_byte_dtypes(path, inputs, outputs)
    return ImportedModel(
        name=_model_name(path),
        source=path.resolve(),
        source_sha256=sha,
        mod=mod,
        inputs=inputs,
        outputs=outputs,
        import_passes=import_passes,
    )


def _model_name(path: Path) -> str:
    stem = path.stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "model"


def _read_model(path: Path) -> tuple[onnx.ModelProto, str]:
    if not path.exists():
        raise ModelImportError(f"{path}: no such file")
    if path.is_dir():
        raise ModelImportError(f"{path}: is a folder, expected an .onnx model file")
    data = path.read_bytes()
    if not data:
        raise ModelImportError(f"{path}: the file is empty, expected an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception:
        model = None
    if model is None or len(model.graph.node) == 0 or not model.opset_import:
        raise ModelImportError(
            f"{path}: not an ONNX model (could not parse a graph from it); "
            f"export one with torch.onnx.export, tf2onnx or keras2onnx"
        )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise ModelImportError(f"{path}: its external weight files cannot be read: {e}") from None
    return model, hashlib.sha256(data).hexdigest()


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


def _check_whole_byte_dtypes(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Sub-byte tensors (int4, uint2, float4...) cannot cross the artifact's boundary: TVM's
    runtime copies them byte-wise and fails ("TensorCopyFromBytes: size mismatch")."""
    import re

    packed = [f"{kind} '{s.name}' ({s.dtype})" for kind, specs in (("input", inputs), ("output", outputs))
              for s in specs if re.fullmatch(r"u?int[124]|float4(_\w+)?", s.dtype)]
    if packed:
        raise ModelImportError(
            f"{path}: {', '.join(packed)}: sub-byte types cannot be model inputs or outputs of an artifact; "
            f"cast them to int8/uint8/float in the model (inside it they are fine)"
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
        dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)))
        # A fixed dimension may be 0 (an empty tensor): that is static, not symbolic.
        declared = [
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or "?")
            for d in tensor_type.shape.dim
        ]
        shown = f"[{', '.join(map(str, declared))}]"
        if inp.name in overrides:
            shape = tuple(int(x) for x in overrides[inp.name])
            if tensor_type.HasField("shape") and len(shape) != len(declared):
                raise ModelImportError(
                    f"{path}: --input-shape for '{inp.name}' has {len(shape)} dimensions, "
                    f"the model declares {len(declared)}: {shown}"
                )
            for got, want in zip(shape, declared):
                if isinstance(want, int) and got != want:
                    raise ModelImportError(
                        f"{path}: --input-shape {inp.name}={','.join(map(str, shape))} contradicts "
                        f"the model's fixed shape {shown}"
                    )
            if any(x < 0 or (x == 0 and want != 0) for x, want in zip(shape, declared)):
                raise ModelImportError(f"{path}: --input-shape for '{inp.name}' must be positive integers")
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


def _to_relax(model: onnx.ModelProto, path: Path, inputs: list[TensorSpec]):
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
        raise ModelImportError(f"{path}: TVM's ONNX importer failed: {summarize_exception(e)}") from e
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
