"""The layering rule (README, Architecture): a module imports only from its own
layer or the ones below it. Function-level imports count too. And the sandbox,
which runs in a freshly unshared child, imports nothing heavy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "acbuild"

# Lowest first. A module's layer is the first prefix that matches its name.
LAYERS = [
    ("errors", ["acbuild.errors", "acbuild.atomic", "acbuild.dirs", "acbuild.__init__", "acbuild"]),
    ("values", ["acbuild.aci.types"]),
    ("plan", ["acbuild.plan"]),
    ("parse", ["acbuild.parse", "acbuild.compile"]),
    ("aci", ["acbuild.aci"]),
    ("sign", ["acbuild.gpg", "acbuild.sign", "acbuild.trust", "acbuild.verify", "acbuild.config"]),
    ("engine", ["acbuild.engine"]),
    ("cli", ["acbuild.cli", "acbuild.__main__"]),
]
HEAVY = {"lark", "yaml", "gnupg", "pyroute2"}


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer; add it to LAYERS and the README"
    return best[0]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found.append((name.removesuffix(".__init__") if name != "acbuild.__init__" else "acbuild.__init__", path))
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if is_package(node.module):  # `from acbuild.aci import types`: the module named
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
    return names


def is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


@pytest.mark.parametrize("name, path", modules(), ids=[m for m, _ in modules()])
def test_module_imports_only_from_its_layer_or_below(name, path):
    mine = layer_of(name)
    for imported in imports(path):
        if not imported.startswith("acbuild") or is_package(imported):
            continue
        assert layer_of(imported) <= mine, f"{name} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})"


def test_sandbox_imports_nothing_heavy():
    for module in ("engine/sandbox.py", "engine/users.py", "engine/paths.py"):
        heavy = {i.split(".")[0] for i in imports(PACKAGE / module)} & HEAVY
        assert not heavy, f"{module} imports {heavy}"
