#!/usr/bin/env python3
"""Start-up benchmark: `acbuild --help` and an interactive metadata verb
(`acbuild label add` inside a `begin` session), beside `actool help`, repeated
like hyperfine (warm-up run, then N timed runs each, alternating).

Prints the median and minimum of each, the ratio to actool, the targets (issue 15:
--help < 60 ms, label add < 80 ms) and the load. Not a test: timings never decide
pass/fail (tests/test_startup_imports.py checks what is imported instead).

    python benchmarks/bench_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run. On a shared machine the CPU
    time is the steadier figure: wall time includes waiting for a CPU."""
    t0 = time.perf_counter()
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
    pid = os.posix_spawn(cmd[0], cmd, env, file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    acbuild = shutil.which("acbuild", path=str(Path(sys.executable).parent)) or "acbuild"
    actool = os.environ.get("ACTOOL") or shutil.which(
        "actool", path=os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")]))
    work = Path(tempfile.mkdtemp(prefix="acbuild-bench-startup-"))
    # .pyc files as a user has them: without them every run compiles every module
    # (PYTHONDONTWRITEBYTECODE, set in some CI and sandbox shells, would hide that).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        subprocess.run([acbuild, "--work-path", str(work / "session"), "begin"], check=True, env=env)
        cases = {
            "acbuild --help": [acbuild, "--help"],
            "acbuild label add k v": [acbuild, "--work-path", str(work / "session"), "label", "add", "k", "v"],
            "acbuild --version": [acbuild, "--version"],
        }
        if actool:
            cases["actool help"] = [actool, "help"]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        load0 = os.getloadavg()[0]
        for cmd in cases.values():  # warm-up: page cache, .pyc files
            timed(cmd, env)
        for _ in range(a.runs):
            for name, cmd in cases.items():
                times[name].append(timed(cmd, env))
        targets = {"acbuild --help": 0.060, "acbuild label add k v": 0.080}
        peer = statistics.median(w for w, _ in times["actool help"]) if actool else None
        print(f"{a.runs} runs each (alternating), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} (before: {load0:.2f})")
        for name, runs in times.items():
            walls = [w for w, _ in runs]
            med = statistics.median(walls)
            cpu = statistics.median(c for _, c in runs)
            line = f"{name:24} median {med * 1000:6.1f} ms  min {min(walls) * 1000:6.1f} ms  CPU {cpu * 1000:6.1f} ms"
            if peer and name.startswith("acbuild"):
                line += f"  ratio to actool {med / peer:5.1f}"
            if name in targets:
                line += f"  (target < {targets[name] * 1000:.0f} ms)"
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
