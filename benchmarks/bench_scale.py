#!/usr/bin/env python3
"""Scaling benchmark: acbuild's write (`acbuild pack`), cold build (an ACIfile that
COPYs the tree) and no-op rebuild on the small (2,000 files, 20 MB), medium (20,000,
200 MB) and large (100,000, 1 GB) trees of ../shared/bench/make_rootfs.py.

Prints, per profile, the medians of N runs (wall and CPU) and the peak RSS, then
each step's growth against linear: (time ratio) / (size ratio), per byte and per
file (the two grow together in these profiles: 10x small -> medium, 5x medium ->
large). Targets (issue 15): peak RSS < 100 MiB; within 1.3x of linear. The peers
are in bench_write.py and bench_cache.py (--profile large). Not a test.

    python benchmarks/bench_scale.py [--profiles small,medium,large] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path

from common import ACBUILD, arguments, generate, load, timed  # noqa: E402  (benchmarks/ is on sys.path)

SIZES = {"small": (2000, 20e6), "medium": (20000, 200e6), "large": (100000, 1000e6)}  # make_rootfs.py's


def measure(script: str, profile: str, work: Path, runs: int) -> dict[str, tuple[float, float, float]]:
    """{what: (median wall, median CPU, peak RSS MiB)} for one profile."""
    layout, ctx, cache = work / profile / "layout", work / profile / "ctx", work / profile / "cache"
    if not layout.exists():
        generate(script, profile, layout, "--aci-layout", "example.com/bench")
    if not ctx.exists():
        ctx.mkdir(parents=True)
        shutil.copytree(layout / "rootfs", ctx / "tree", symlinks=True, copy_function=os.link)  # hard links: no 2nd copy
        (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/bench\nCOPY tree/ /data/\n")
    pack = [*ACBUILD, "pack", "--overwrite", str(layout), str(work / profile / "pack.aci")]
    build = [*ACBUILD, "build", "-q", "--cache-dir", str(cache), "-f", str(ctx / "ACIfile"), "-o", str(work / profile / "out.aci")]
    got: dict[str, list] = {"write": [], "cold build": [], "no-op rebuild": []}
    for _ in range(runs):
        got["write"].append(timed(pack))
        shutil.rmtree(cache, ignore_errors=True)
        got["cold build"].append(timed(build))
        got["no-op rebuild"].append(timed(build))
    shutil.rmtree(cache, ignore_errors=True)
    return {k: (statistics.median(r.wall for r in v), statistics.median(r.cpu for r in v), max(r.rss_mib for r in v))
            for k, v in got.items()}


def main() -> None:
    a = arguments(__doc__.split("\n")[0], extra=lambda ap: ap.add_argument(
        "--profiles", default="small,medium,large", help="comma-separated, smallest first"))
    profiles = a.profiles.split(",")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="acbuild-bench-scale-"))
    try:
        print(f"before: {load()}", flush=True)
        results = {}
        for profile in profiles:
            results[profile] = measure(a.rootfs_script, profile, work, a.runs)
            for what, (wall, cpu, rss) in results[profile].items():
                print(f"{profile:7} {what:14} {wall:7.2f} s  CPU {cpu:6.2f} s  peak RSS {rss:6.1f} MiB", flush=True)
        print(f"{a.runs} runs (medians); after: {load()}")
        for prev, cur in zip(profiles, profiles[1:]):
            files = SIZES[cur][0] / SIZES[prev][0]
            size = SIZES[cur][1] / SIZES[prev][1]
            for what in results[cur]:
                grew = results[cur][what][0] / results[prev][what][0]
                print(f"{prev} -> {cur} {what:14} x{grew:5.1f} for x{size:.0f} bytes, x{files:.0f} files: "
                      f"{grew / size:.2f} of linear per byte, {grew / files:.2f} per file (target <= 1.3)")
        print(f"peak RSS {max(r[2] for p in results.values() for r in p.values()):.1f} MiB (target < 100 MiB)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
