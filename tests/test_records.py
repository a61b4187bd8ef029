"""acbuild.records: dataclasses' generated methods cached beside the .pyc, and never stale.

Each test runs a fresh interpreter on a private copy of the acbuild package (so its
__pycache__ starts empty) and asks acbuild.records what it compiled and what it found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
import acbuild.plan as plan, acbuild.records as records
label = plan.Label(items=(("a", "b"),))
try:
    label.items = ()
    frozen = False
except Exception as err:
    frozen = type(err).__name__
print(json.dumps({"missed": {k: m.missed for k, m in records._modules.items()},
                  "entries": {k: len(m.code) for k, m in records._modules.items()},
                  "equal": label == plan.Label(items=(("a", "b"),)), "frozen": frozen,
                  "hash": hash(label) == hash(plan.Label(items=(("a", "b"),)))}))
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "acbuild", tmp_path / "acbuild", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def probe(top: Path, *, write: bool = True, code: str = PROBE) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = str(top)
    out = subprocess.run([sys.executable, "-c", code], cwd=top, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cache_file(top: Path) -> Path:
    return top / "acbuild" / "__pycache__" / f"plan.{sys.implementation.cache_tag}.pyc.dataclasses"


def test_second_run_compiles_nothing(package: Path):
    first = probe(package)
    assert first["missed"]["acbuild.plan"] is True and first["entries"]["acbuild.plan"] == 0
    assert cache_file(package).is_file()
    second = probe(package)
    assert second["missed"] == {name: False for name in second["missed"]}
    assert second["entries"]["acbuild.plan"] > 50  # 27 classes, 4-6 methods each (shared texts once)
    for run in (first, second):
        assert run["equal"] and run["hash"] and run["frozen"] == "FrozenInstanceError"


def test_a_changed_class_is_compiled_again(package: Path):
    probe(package)
    plan = package / "acbuild" / "plan.py"
    source = plan.read_text()
    # Label gets a new field with a default: the cached __init__ (one field) must not answer for it.
    marker = "class Label(Instruction):\n"
    assert marker in source
    head, tail = source.split(marker, 1)
    first_field_end = tail.index("\n", tail.index("items: ")) + 1
    plan.write_text(head + marker + tail[:first_field_end] + "    extra: str = 'new'\n" + tail[first_field_end:])
    code = PROBE.replace("print(", "assert plan.Label(items=(('a', 'b'),)).extra == 'new'\nprint(")
    changed = probe(package, code=code)
    assert changed["missed"]["acbuild.plan"] is True
    assert probe(package, code=code)["missed"]["acbuild.plan"] is False


@pytest.mark.parametrize("damage", [b"", b"garbage", "magic+junk", "truncated"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(package: Path, damage):
    import importlib.util

    probe(package)
    path = cache_file(package)
    whole = path.read_bytes()
    if damage == "magic+junk":
        damage = importlib.util.MAGIC_NUMBER + b"\x00junk"
    elif damage == "truncated":
        damage = whole[: len(whole) // 2]
    path.write_bytes(damage)
    run = probe(package)
    assert run["missed"]["acbuild.plan"] is True and run["equal"] and run["frozen"] == "FrozenInstanceError"
    assert path.read_bytes() == whole  # the same texts compile to the same code


def test_nothing_is_written_without_bytecode_writing(package: Path):
    probe(package, write=False)
    assert not list((package / "acbuild").rglob("*.dataclasses"))


def test_only_acbuild_modules_are_cached(package: Path):
    (package / "other.py").write_text("from acbuild.records import dataclass\n\n@dataclass(frozen=True)\n"
                                      "class Thing:\n    a: int = 1\n")
    code = ("import json, other, acbuild.records as r\n"
            "print(json.dumps({'modules': sorted(r._modules), 'a': other.Thing().a}))")
    assert probe(package, code=code) == {"modules": [], "a": 1}
