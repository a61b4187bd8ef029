#!/usr/bin/env python3
"""Write benchmark: `acbuild pack` beside `actool build` and `tar | pigz -6` on the same layout.

Generates the synthetic "medium" rootfs (20,000 files, 200 MB, deterministic)
with ../shared/bench/make_rootfs.py, then in the same run times, alternating, N
runs each: `actool build --overwrite DIR out.aci`, `acbuild pack --overwrite DIR
out.aci` (gzip, acbuild through its real CLI) and `tar -C DIR -cf - . | pigz -6`
(the 2-core gzip floor with zlib). Prints the medians (wall and CPU), the ratios
acbuild/actool and acbuild/pigz, acbuild's peak RSS and the load before and after.
Targets (issue 15): <= 0.42x actool, <= 1.15x tar|pigz, peak RSS < 100 MiB. Not a
test: timings never decide pass/fail.

    python benchmarks/bench_write.py [--profile medium] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import ACBUILD, REPO, arguments, generate, load, timed  # noqa: E402  (benchmarks/ is on sys.path)


def find_actool() -> str:
    path = os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")])
    tool = os.environ.get("ACTOOL") or shutil.which("actool", path=path)
    if not tool:
        sys.exit("actool not found (run `make system-deps` or set ACTOOL)")
    return tool


def main() -> None:
    a = arguments(__doc__.split("\n")[0])
    actool = find_actool()
    if not shutil.which("pigz"):
        sys.exit("pigz not found (apt-get install pigz)")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    try:
        if not layout.exists():
            generate(a.rootfs_script, a.profile, layout, "--aci-layout", "example.com/bench")
        cmds = {
            "actool": ([actool, "build", "--overwrite", str(layout), str(work / "actool.aci")], False),
            "acbuild": ([*ACBUILD, "pack", "--overwrite", str(layout), str(work / "acbuild.aci")], False),
            "pigz": ([f"tar -C {layout} -cf - . | pigz -6 > {work / 'pigz.tar.gz'}"], True),
        }
        timed(cmds["acbuild"][0])  # warm-up: page cache, .pyc files
        before = load()
        runs: dict[str, list] = {k: [] for k in cmds}
        for i in range(a.runs):
            for name, (cmd, shell) in cmds.items():
                runs[name].append(timed(cmd, shell=shell))
            print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1].wall:.2f} s" for k, v in runs.items()), flush=True)
        med = {k: statistics.median(r.wall for r in v) for k, v in runs.items()}
        cpu = {k: statistics.median(r.cpu for r in v) for k, v in runs.items()}
        sizes = {"actool": work / "actool.aci", "acbuild": work / "acbuild.aci", "pigz": work / "pigz.tar.gz"}
        print(f"profile {a.profile}, gzip, {a.runs} runs (medians); before: {before}; after: {load()}")
        for k, label in (("actool", "actool build"), ("acbuild", "acbuild pack"), ("pigz", "tar | pigz -6")):
            print(f"{label:14} {med[k]:6.2f} s  CPU {cpu[k]:6.2f} s  ({sizes[k].stat().st_size / 1e6:.1f} MB)")
        print(f"ratio acbuild/actool {med['acbuild'] / med['actool']:.2f} (target <= 0.42), "
              f"acbuild/pigz {med['acbuild'] / med['pigz']:.2f} (target <= 1.15)")
        print(f"acbuild peak RSS {max(r.rss_mib for r in runs['acbuild']):.1f} MiB (target < 100 MiB)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
