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

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import ACBUILD, ENV, REPO, load, timed  # noqa: E402  (benchmarks/ is on sys.path)

TARGETS = {"acbuild --help": 0.060, "acbuild label add k v": 0.080}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    actool = os.environ.get("ACTOOL") or shutil.which(
        "actool", path=os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")]))
    work = Path(tempfile.mkdtemp(prefix="acbuild-bench-startup-"))
    session = ["--work-path", str(work / "session")]
    try:
        subprocess.run([*ACBUILD, *session, "begin"], check=True, env=ENV)
        cases = {
            "acbuild --help": [*ACBUILD, "--help"],
            "acbuild label add k v": [*ACBUILD, *session, "label", "add", "k", "v"],
            "acbuild --version": [*ACBUILD, "--version"],
            "python -c pass": [ACBUILD[0], "-c", "pass"],
        }
        if actool:
            cases["actool help"] = [actool, "help"]
        for cmd in cases.values():  # warm-up: page cache, .pyc files
            timed(cmd)
        before = load()
        runs: dict[str, list] = {name: [] for name in cases}
        for _ in range(a.runs):
            for name, cmd in cases.items():
                runs[name].append(timed(cmd))
        print(f"{a.runs} runs each (alternating, medians); before: {before}; after: {load()}")
        peer = statistics.median(r.wall for r in runs["actool help"]) if actool else None
        for name, rs in runs.items():
            wall = statistics.median(r.wall for r in rs)
            line = (f"{name:24} {wall * 1000:6.1f} ms  min {min(r.wall for r in rs) * 1000:6.1f} ms  "
                    f"CPU {statistics.median(r.cpu for r in rs) * 1000:6.1f} ms")
            if peer and name.startswith("acbuild"):
                line += f"  {wall / peer:5.1f}x actool"
            if name in TARGETS:
                line += f"  (target < {TARGETS[name] * 1000:.0f} ms)"
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
