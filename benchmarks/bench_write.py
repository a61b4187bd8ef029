#!/usr/bin/env python3
"""Write benchmark: `acbuild pack` against `actool build` on the same layout.

Generates the synthetic "medium" rootfs (20,000 files, 200 MB, deterministic)
with ../shared/bench/make_rootfs.py, then in the same run times
`actool build --overwrite DIR out.aci` and `acbuild pack --overwrite DIR out.aci`
(both gzip, acbuild through its real CLI in a subprocess), alternating, N runs
each. Prints the medians, the ratio acbuild/actool and acbuild's peak RSS.
Targets (issue 2): ratio <= 1.0, peak RSS < 100 MiB. Not a test: timings
never decide pass/fail.

    python benchmarks/bench_write.py [--profile medium] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, arguments, generate  # noqa: E402  (benchmarks/ is on sys.path)


def find_actool() -> str:
    path = os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")])
    tool = os.environ.get("ACTOOL") or shutil.which("actool", path=path)
    if not tool:
        sys.exit("actool not found (run `make system-deps` or set ACTOOL)")
    return tool


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    t0 = time.perf_counter()
    quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]  # the printed image ID
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss


def main() -> None:
    a = arguments(__doc__.split("\n")[0])

    actool = find_actool()
    acbuild = [sys.executable, "-m", "acbuild"]
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    try:
        if not layout.exists():
            generate(a.rootfs_script, a.profile, layout, "--aci-layout", "example.com/bench")
        results: dict[str, list[float]] = {"actool": [], "acbuild": []}
        rss: list[int] = []
        for i in range(a.runs):
            wall, _ = timed([actool, "build", "--overwrite", str(layout), str(work / "actool.aci")])
            results["actool"].append(wall)
            wall, peak = timed([*acbuild, "pack", "--overwrite", str(layout), str(work / "acbuild.aci")])
            results["acbuild"].append(wall)
            rss.append(peak)
            print(f"run {i + 1}: actool {results['actool'][-1]:.2f} s, acbuild {wall:.2f} s, "
                  f"acbuild peak RSS {peak / 1024:.1f} MiB", flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        sizes = {k: (work / f"{k}.aci").stat().st_size for k in results}
        print(f"profile {a.profile}, gzip, {a.runs} runs, {os.cpu_count()} CPUs")
        print(f"actool build  median {med['actool']:.2f} s  ({sizes['actool'] / 1e6:.1f} MB)")
        print(f"acbuild pack  median {med['acbuild']:.2f} s  ({sizes['acbuild'] / 1e6:.1f} MB)")
        print(f"ratio acbuild/actool {med['acbuild'] / med['actool']:.2f}  (target <= 1.0)")
        print(f"acbuild peak RSS {max(rss) / 1024:.1f} MiB  (target < 100 MiB)")
        print(f"load average {os.getloadavg()[0]:.2f} (other work on the machine skews timings)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
