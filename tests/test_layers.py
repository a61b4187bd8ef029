"""The layering rule (README, Architecture): a module imports only from its own
layer or the ones below it, and no two modules import each other, directly or
round a longer loop, within a layer too. Function-level imports count. And the
sandbox, which runs in a freshly unshared child, imports nothing heavy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "acbuild"

# Lowest first. A module's layer is the longest prefix that matches its name.
# Rooms listed here before their code exists (net, oci, store, fetch, serve) keep
# the order the README draws.
LAYERS = [
    ("base", ["acbuild", "acbuild.__init__", "acbuild.errors", "acbuild.atomic", "acbuild.dirs",
              "acbuild.files", "acbuild.temps", "acbuild.config", "acbuild.limits",
              "acbuild.userns", "acbuild.placeholders", "acbuild.records"]),
    ("values", ["acbuild.aci.types"]),
    ("plan", ["acbuild.plan"]),
    ("frontend", ["acbuild.frontend"]),
    ("aci", ["acbuild.aci"]),
    ("trust", ["acbuild.trust"]),
    ("net", ["acbuild.net"]),
    ("oci", ["acbuild.oci"]),
    ("images", ["acbuild.store", "acbuild.fetch", "acbuild.serve"]),
    ("engine", ["acbuild.engine"]),
    ("cli", ["acbuild.cli", "acbuild.__main__"]),
]
HEAVY = {"lark", "yaml", "gnupg", "pyroute2"}
SANDBOX_CHILD = ("engine/execute/sandbox.py", "engine/execute/seccomp_profile.py", "engine/execute/sandbox_spec.py", "engine/execute/sandbox_process.py",
                 "engine/execute/mount_plan.py", "engine/execute/mount_ops.py", "engine/execute/syscalls.py",
                 "engine/execute/hardening.py", "engine/execute/users.py", "engine/execute/paths.py")


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer; add it to LAYERS and the README"
    return best[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name.removesuffix(".__init__") if name != "acbuild.__init__" else name


def modules() -> list[tuple[str, Path]]:
    return [(module_name(path), path) for path in sorted(PACKAGE.rglob("*.py"))]


def is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def is_module(module: str) -> bool:
    return is_package(module) or (PACKAGE.parent / (module.replace(".", "/") + ".py")).exists()


def imports(path: Path) -> set[str]:
    """acbuild modules (and packages) that `path` imports, relative imports resolved;
    `from PACKAGE import NAME` counts as importing PACKAGE.NAME when that is a module."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            members = {f"{base}.{alias.name}" for alias in node.names} if is_package(base) else set()
            names |= {m for m in members if is_module(m)} or {base}
    return {n for n in names if n.startswith("acbuild")}


GRAPH = {name: {i for i in imports(path) if i != name and not name.startswith(i + ".")}
         for name, path in modules()}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_module_imports_only_from_its_layer_or_below(name):
    mine = layer_of(name)
    for imported in GRAPH[name]:
        if is_package(imported) and imported not in GRAPH:
            continue
        assert layer_of(imported) <= mine, (
            f"{name} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return cycles


def test_no_import_cycles():
    assert import_cycles(GRAPH) == []


def test_the_cycle_check_can_fail():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_sandbox_imports_nothing_heavy():
    for module in SANDBOX_CHILD:
        heavy = {i.split(".")[0] for i in imports_all(PACKAGE / module)} & HEAVY
        assert not heavy, f"{module} imports {heavy}"


def imports_all(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
