"""PyTorch -> Relax through torch.export: an nn.Module, an ExportedProgram, or a .pt2 file.

An nn.Module is exported (eval mode) with `torch.export.export` on the example inputs;
a .pt2 file is what `torch.export.save` wrote. The program is decomposed to core ATen
once, every node is checked against TVM's ExportedProgram importer (all unsupported ops
reported at once, before anything slow runs), dynamic dimensions (torch.export.Dim) must
be given by `input_shapes`, and the importer binds the weights and buffers as constants,
so BatchNorm folding, pruning, int8 and tuning see the same graph as from ONNX.

torch is optional (the `torch` extra) and imported only here.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

from ...errors import ModelImportError, summarize_exception
from ...runtime.manifest import TensorSpec
from .model import ImportedModel, checked_override

FRONTEND = "tvm.relax.frontend.torch.from_exported_program"
INSTALL_HINT = "pip install 'tvmdeploy[torch]' (PyTorch CPU build: torch==2.13.0)"


def require_torch(what: str):
    try:
        import torch
    except ImportError:
        raise ModelImportError(f"{what}: PyTorch is not installed; install tvmdeploy's torch extra: {INSTALL_HINT}") from None
    return torch


def is_torch_model(model) -> bool:
    """An nn.Module or ExportedProgram (without importing torch: a caller that has one has torch)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


def import_torch(model, example_inputs=None, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    """model: a torch.nn.Module (needs example_inputs), a torch.export.ExportedProgram,
    or the path of a .pt2 file written by torch.export.save."""
    passes: list[str] = []
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        torch = require_torch(str(path))
        program, sha = _load_pt2(torch, path)
        where, name, source = str(path), _safe_name(path.stem), path.resolve()
    else:
        torch = require_torch("a PyTorch model")
        if isinstance(model, torch.export.ExportedProgram):
            program = model
            where = name = "exported_program"
        elif isinstance(model, torch.nn.Module):
            where = type(model).__name__
            name = _safe_name(where)
            program = _export(torch, model, example_inputs, where)
            passes.append("torch-export(eval)")
        else:
            raise ModelImportError(f"{type(model).__name__}: not a model tvmdeploy can import (a path, torch.nn.Module or ExportedProgram)")
        source = f"<{where}: in-memory {type(model).__module__}.{type(model).__qualname__}>"
        sha = _program_sha256(torch, program)
    if example_inputs is not None and not isinstance(model, torch.nn.Module):
        raise ModelImportError(
            f"{where}: example_inputs are for exporting an nn.Module; an exported program has its own "
            f"(give dynamic dimensions with input_shapes / --input-shape)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = program.run_decompositions()
    except Exception as e:
        raise ModelImportError(f"{where}: torch.export could not decompose the program to core ATen: {_torch_message(e)}") from None
    passes.append("torch-core-aten-decompositions")
    _check_inference_only(program, where)
    _check_supported_ops(program, where)
    inputs, bindings = _static_inputs(torch, program, where, input_shapes or {})
    mod = _to_relax(program, where, inputs, bindings)
    if bindings:
        passes.append("bind-dynamic-dims(" + ", ".join(f"{k}={v}" for k, v in sorted(bindings.items())) + ")")
    passes.append("torch-weights-as-constants")
    return ImportedModel(
        name=name,
        source=source,
        source_sha256=sha,
        mod=mod,
        inputs=inputs,
        outputs=_output_specs(mod),
        import_passes=passes,
        source_format="pytorch",
        frontend=FRONTEND,
        versions={"torch": torch.__version__.split("+")[0]},
    )


def _safe_name(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "model"


def _load_pt2(torch, path: Path):
    if not path.exists():
        raise ModelImportError(f"{path}: no such file")
    if path.is_dir():
        raise ModelImportError(f"{path}: is a folder, expected a .pt2 file written by torch.export.save")
    data = path.read_bytes()
    if not data:
        raise ModelImportError(f"{path}: the file is empty, expected a .pt2 file written by torch.export.save")
    hint = "save one with torch.export.save(torch.export.export(model.eval(), example_inputs), 'model.pt2')"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise ModelImportError(
            f"{path}: not a torch.export program ({summarize_exception(e, 160)}); {hint}"
        ) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise ModelImportError(f"{path}: holds a {type(program).__name__}, not an ExportedProgram; {hint}")
    return program, hashlib.sha256(data).hexdigest()


def _program_sha256(torch, program) -> str:
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(program, buffer)
    except Exception:  # an unserializable program: hash its graph and weights instead
        h = hashlib.sha256(str(program.graph).encode())
        for _, t in sorted(program.state_dict.items()):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _export(torch, module, example_inputs, where: str):
    if example_inputs is None:
        raise ModelImportError(
            f"{where}: compiling a torch.nn.Module needs example_inputs (a tensor or tuple of tensors "
            f"of the shapes to compile for), or pass a torch.export.ExportedProgram"
        )
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    args = tuple(torch.from_numpy(x) if type(x).__module__ == "numpy" else x for x in example_inputs)
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args)
    except Exception as e:
        raise ModelImportError(
            f"{where}: torch.export.export failed ({_torch_message(e, 300)}); make the model exportable "
            f"(see torch.export's message) or export it yourself and pass the ExportedProgram"
        ) from None


def _check_inference_only(program, where: str) -> None:
    """A program exported in training mode updates buffers (BatchNorm's running statistics)
    and normalizes with batch statistics: not the model users deploy."""
    mutated = sorted(set(dict(program.graph_signature.buffers_to_mutate).values()))
    if mutated:
        shown = ", ".join(mutated[:4]) + (f" and {len(mutated) - 4} more" if len(mutated) > 4 else "")
        raise ModelImportError(
            f"{where}: the program updates buffers ({shown}): it was exported in training mode; "
            f"export the model in eval mode (torch.export.export(model.eval(), example_inputs))"
        )


def _check_supported_ops(program, where: str) -> None:
    from .._tvm import torch_convert_map

    supported = torch_convert_map()
    missing = [
        n for n in program.graph.nodes
        if n.op == "call_function" and getattr(n.target, "__name__", str(n.target)) not in supported
    ]
    if missing:
        def op_name(n):
            return str(n.target) if hasattr(n.target, "_schema") else getattr(n.target, "__name__", str(n.target))

        listed = ", ".join(f"{op_name(n)} (node '{n.name}')" for n in missing)
        kinds = sorted({op_name(n) for n in missing})
        raise ModelImportError(
            f"{where}: {len(missing)} node(s) use ATen operators TVM's PyTorch importer does not support "
            f"({', '.join(kinds)}): {listed}. Rewrite them in the model with supported operations, or file "
            f"an issue with the model attached"
        )


def _static_inputs(torch, program, where: str, overrides: dict[str, tuple[int, ...]]):
    """The user inputs with static shapes, and {symbol: value} for the dynamic dimensions."""
    from torch.export.graph_signature import InputKind

    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in overrides:
        if name not in names:
            raise ModelImportError(
                f"{where}: --input-shape names '{name}', which is not an input of the program (inputs: {', '.join(names)})"
            )
    ranges = {str(k): v for k, v in program.range_constraints.items()}
    specs, bindings, problems = [], {}, []
    for name in names:
        value = placeholders[name].meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise ModelImportError(f"{where}: input '{name}' is not a tensor ({type(value).__name__}); only tensor inputs are supported")
        declared = [d if isinstance(d, int) else str(d) for d in value.shape]
        dtype = str(value.dtype).replace("torch.", "")
        shown = f"[{', '.join(map(str, declared))}]"
        if name in overrides:
            shape = checked_override(where, name, overrides[name], declared, "program")
            for got, want in zip(shape, declared):
                if isinstance(want, int):
                    continue
                if want in bindings and bindings[want] != got:
                    raise ModelImportError(
                        f"{where}: dynamic dimension {want} is given as {bindings[want]} and as {got}; "
                        f"inputs that share it must agree"
                    )
                bounds = ranges.get(want)
                if bounds is not None:
                    # torch.export reports [2, inf] for a plain Dim (it specializes 0 and 1), and the
                    # program is valid for 1 too: only a bound the user set is enforced.
                    low = int(bounds.lower) if _finite(bounds.lower) else 0
                    high = int(bounds.upper) if _finite(bounds.upper) else None
                    if (low > 2 and got < low) or (high is not None and got > high):
                        raise ModelImportError(
                            f"{where}: --input-shape {name}={','.join(map(str, shape))}: dimension {want} must lie in "
                            f"[{low}, {high if high is not None else 'inf'}] (its torch.export.Dim range)"
                        )
                bindings[want] = got
        elif any(not isinstance(d, int) for d in declared):
            symbolic = [d for d in declared if not isinstance(d, int)]
            example = ",".join(str(d) if isinstance(d, int) else "1" for d in declared)
            problems.append(
                f"'{name}' has dynamic dimension(s) {', '.join(symbolic)} (torch.export.Dim) in {shown}: "
                f"pass --input-shape {name}={example}"
            )
            continue
        else:
            shape = tuple(declared)
        specs.append(TensorSpec(name, shape, dtype))
    if problems:
        raise ModelImportError(f"{where}: input shapes must be static: " + "; ".join(problems))
    return specs, bindings


def _finite(bound) -> bool:
    try:
        return bool(bound.is_finite) and abs(int(bound)) < 2**62
    except Exception:
        return False


def _to_relax(program, where: str, inputs: list[TensorSpec], bindings: dict[str, int]):
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(
                program, keep_params_as_input=False, unwrap_unit_return_tuple=True, run_ep_decomposition=False
            )
    except Exception as e:
        raise ModelImportError(f"{where}: TVM's PyTorch importer failed: {summarize_exception(e)}") from None
    func = mod["main"]
    for key in ("tir_var_lower_bound", "tir_var_upper_bound"):
        if func.attrs is not None and key in func.attrs:
            func = func.without_attr(key)
    mod["main"] = func
    if bindings:
        mod = relax.transform.BindSymbolicVars(dict(bindings), "main")(mod)
    mod = relax.transform.Normalize()(mod)
    params = mod["main"].params
    if len(params) != len(inputs):
        raise ModelImportError(
            f"{where}: the imported graph takes {len(params)} inputs, the program has {len(inputs)} user inputs; "
            f"this model needs a fix in the importer"
        )
    for param, spec in zip(params, inputs):
        if any(not hasattr(d, "value") for d in param.ty.shape.values):
            raise ModelImportError(
                f"{where}: input '{spec.name}' is still dynamic after binding {bindings}: pass --input-shape {spec.name}=..."
            )
    return mod


def _output_specs(mod) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty
    infos = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, info in enumerate(infos):
        if not isinstance(info, relax.TensorType):
            raise ModelImportError(f"output {i} of the program is not a tensor ({info}); return tensors from forward()")
        dims = info.shape.values if info.shape is not None else []
        specs.append(TensorSpec(f"output_{i}", tuple(int(d.value) if hasattr(d, "value") else -1 for d in dims), str(info.dtype)))
    return specs


def _torch_message(e: BaseException, limit: int = 500) -> str:
    """torch's own error in one line: its first line says what failed (TVM's errors end
    with it instead); the lines after are the graph node, the user's stack and hints
    ("Use tlparse to see full graph")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}"[:limit] if lines else summarize_exception(e, limit)
