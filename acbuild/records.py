"""dataclasses, with the code they generate kept between runs as .pyc files keep a module's.

`@dataclass` writes a class's __init__, __repr__, __eq__, __hash__ (and, when frozen,
__setattr__ and __delattr__) as source text and compiles that text when the class is
made. The compiling is four fifths of a class's cost, 0.5-1.5 ms, and an interactive
command makes 60 classes: a third of `acbuild run`'s start-up. Python caches a module's
own code in __pycache__, but not this. So acbuild's modules take `dataclass` from here,
and the first use installs a compile cache in the dataclasses module: for each acbuild
module, the code objects compiled from each text, marshalled beside the module's .pyc
(`__pycache__/NAME.cpython-311.pyc.dataclasses`). A text not in the file (the module
changed, or another Python wrote it) is compiled as before and the file rewritten when
the process exits; a file that cannot be read is ignored and one that cannot be written
is not, as with .pyc files (nothing is written under PYTHONDONTWRITEBYTECODE).

Other packages' dataclasses, and any text dataclasses executes for other reasons, are
compiled as usual: the cache only ever answers for exactly the same source text.
"""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import importlib.util
import marshal
import os
import sys
from dataclasses import dataclass, field, fields, replace  # noqa: F401  (the names acbuild's modules use)
from types import CodeType

_MAGIC = importlib.util.MAGIC_NUMBER  # code objects are only valid for the bytecode that made them
_SUFFIX = ".dataclasses"


class _ModuleCode:
    """One module's cache file: its code objects by source text, and whether they changed."""

    def __init__(self, path: str):
        self.path = path
        self.code: dict[str, CodeType] = _read(path)
        self.used: dict[str, CodeType] = {}
        self.missed = False

    def compiled(self, source: str) -> CodeType:
        code = self.code.get(source)
        if code is None:
            code = compile(source, "<string>", "exec")  # what exec(source) would do
            self.missed = True
        self.used[source] = code
        return code

    def save(self) -> None:
        """Write what this process used (entries of a changed module fall away)."""
        if not self.missed or sys.dont_write_bytecode:
            return
        temp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as out:
                out.write(_MAGIC + marshal.dumps(self.used))
            os.replace(temp, self.path)
        except OSError:  # a read-only install: compile every time, as without this module
            try:
                os.unlink(temp)
            except OSError:
                pass


def _read(path: str) -> dict[str, CodeType]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    if not data.startswith(_MAGIC):
        return {}
    try:
        table = marshal.loads(data[len(_MAGIC):])
    except (EOFError, ValueError, TypeError):  # truncated or not ours
        return {}
    if not isinstance(table, dict) or not all(isinstance(c, CodeType) for c in table.values()):
        return {}
    return table


_modules: dict[str, _ModuleCode] = {}
_PROCESS = os.getpid()


def _module_code(namespace: dict | None) -> _ModuleCode | None:
    """The cache of the acbuild module whose globals these are, if it has a .pyc path."""
    if not namespace:
        return None
    name, cached = namespace.get("__name__"), namespace.get("__cached__")
    if not isinstance(name, str) or not name.startswith("acbuild.") or not isinstance(cached, str):
        return None
    module = _modules.get(name)
    if module is None:
        module = _modules[name] = _ModuleCode(cached + _SUFFIX)
    return module


def _exec(source, globals=None, locals=None, /):  # noqa: A002  (exec's own parameter names)
    """exec, answering an acbuild module's generated methods from the cache."""
    module = _module_code(globals) if isinstance(source, str) else None
    if module is not None:
        source = module.compiled(source)
    return builtins.exec(source, globals, locals)


def _save_all() -> None:
    if os.getpid() != _PROCESS:  # a forked child (a sandbox's helper) leaves it to the parent
        return
    for module in _modules.values():
        module.save()


# dataclasses calls the builtin exec by its global name: a module global of that name
# takes its place for dataclasses alone.
dataclasses.exec = _exec  # type: ignore[attr-defined]
atexit.register(_save_all)
