"""The seccomp program is built once and kept in the cache dir (acbuild.engine.execute.
hardening): a later process loads it without importing libseccomp's binding, gets the
same instructions, and rebuilds a damaged copy. Real binding, real files; each check
runs in a fresh interpreter, as every acbuild command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys, ctypes
from acbuild.engine.execute import hardening
hardening.prepare()
buf, prog = hardening._program
print(json.dumps({"binding_imported": "seccomp" in sys.modules, "len": prog.len,
                  "program": ctypes.string_at(buf, prog.len * 8).hex()}))
"""


def prepare_in_a_fresh_process(cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True,
                         env=dict(os.environ, ACBUILD_CACHE_DIR=str(cache)))
    return json.loads(out.stdout)


def test_the_program_is_built_once_and_reused(tmp_path):
    first = prepare_in_a_fresh_process(tmp_path)
    assert first["binding_imported"] and first["len"] > 300  # an allow-list of ~370 syscalls
    cached = list((tmp_path / "seccomp").glob("*.bpf"))
    assert len(cached) == 1 and cached[0].stat().st_size == first["len"] * 8
    assert (tmp_path / "seccomp").stat().st_mode & 0o077 == 0
    second = prepare_in_a_fresh_process(tmp_path)
    assert not second["binding_imported"] and second["program"] == first["program"]


def test_a_damaged_cached_program_is_rebuilt(tmp_path):
    first = prepare_in_a_fresh_process(tmp_path)
    (cached,) = (tmp_path / "seccomp").glob("*.bpf")
    cached.write_bytes(cached.read_bytes()[:13])  # not whole instructions
    again = prepare_in_a_fresh_process(tmp_path)
    assert again["binding_imported"] and again["program"] == first["program"]
    assert cached.stat().st_size == first["len"] * 8


def test_a_cached_program_others_could_have_written_is_not_trusted(tmp_path):
    first = prepare_in_a_fresh_process(tmp_path)
    (cached,) = (tmp_path / "seccomp").glob("*.bpf")
    cached.chmod(0o666)
    again = prepare_in_a_fresh_process(tmp_path)
    assert again["binding_imported"] and again["program"] == first["program"]
    assert cached.stat().st_mode & 0o777 == 0o600  # replaced by a fresh one
