"""Give every Relax function parameter a name that is a C identifier.

Model input names become the names of kernel parameters. ONNX allows any string
("gpu_0/data_0" in the ONNX model zoo's ResNet-50); TVM's importer only replaces dots,
and the CUDA codegen prints names as they are, so nvcc fails with "expected a ')'"
(LLVM codegen does not care). Only the names inside the module change: the artifact's
inputs keep their model names (the manifest maps them, the VM takes them in order).
"""

from __future__ import annotations

import re

from tvm import IRModule, relax
from tvm.ir.transform import PassContext
from tvm.relax.transform import function_pass

from .carry import carries_errors

_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


def is_identifier(name: str) -> bool:
    return bool(name) and not name[0].isdigit() and _NOT_IDENTIFIER.search(name) is None


def identifier(name: str, taken: set[str]) -> str:
    """`name` with every other character replaced by "_", not starting with a digit, unique."""
    base = _NOT_IDENTIFIER.sub("_", name) or "input"
    if base[0].isdigit():
        base = "_" + base
    candidate, n = base, 1
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


@function_pass(opt_level=0)
class IdentifierParamNames:
    @carries_errors
    def transform_function(self, func: relax.Function, mod: IRModule, ctx: PassContext) -> relax.Function:
        if all(is_identifier(p.name) for p in func.params):
            return func
        taken = {p.name for p in func.params if is_identifier(p.name)}
        renamed = {}
        for param in func.params:
            if not is_identifier(param.name):
                new_name = identifier(param.name, taken)
                taken.add(new_name)
                renamed[param] = relax.Var(new_name, param.ty)
        bound = func.bind_params(renamed)  # substitutes the new vars in the body
        params = [renamed.get(p, p) for p in func.params]
        return relax.Function(params, bound.body, func.ret_ty, func.is_pure, func.attrs, func.span)


__all__ = ["IdentifierParamNames", "identifier", "is_identifier"]
