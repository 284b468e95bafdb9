"""The package's shape: no import cycle between its parts, and the deploy side stands alone.

Every `import` and `from ... import` in tvmdeploy (at module level and inside functions)
is an arrow from its module's part to the imported module's part. A part is a module or
folder one level below `tvmdeploy.compiler` (`compiler.tuning`, `compiler.passes`,
`compiler._tvm`, ...), or a top-level folder or module (`runtime`, `board`, `cli`, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tvmdeploy

PACKAGE = Path(tvmdeploy.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tvmdeploy")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("tvmdeploy"):
                submodules = {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
                known = {m for m in submodules if _known(m)}
                # `from . import _tvm` is an arrow to _tvm, not to the package around it.
                found |= known if known and node.module is None else {target} | known
    return found


def _part(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "tvmdeploy"
    if parts[0] == "compiler" and len(parts) > 1:
        return "compiler." + parts[1]  # a stage's module or package
    return parts[0]


def _known(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def part_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _part(_module_name(path))
        for target in filter(_known, _imports(path)):
            if _part(target) != source and _part(target) != "tvmdeploy":
                graph.setdefault(source, set()).add(_part(target))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_parts():
    graph = part_graph()
    assert {"runtime", "compiler.tuning", "compiler.passes", "compiler.pruning"} <= set(graph)  # the walk sees them
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_deploy_side_imports_nothing_from_the_compile_side():
    graph = part_graph()
    assert not {p for p in graph.get("runtime", ()) if p.startswith(("compiler", "board", "cli"))}


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
