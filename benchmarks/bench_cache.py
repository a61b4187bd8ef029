#!/usr/bin/env python3
"""Step-cache benchmark: cold build and no-op rebuild of an ACIfile that COPYs the
synthetic "medium" tree (20,000 files, 200 MB, ../shared/bench/make_rootfs.py), beside
`buildah bud --layers` (chroot isolation, vfs storage, temp --root/--runroot) on the
equivalent Dockerfile when buildah is installed.

    FROM scratch / NAME example.com/bench / COPY tree/ /data/

Also times a rebuild after touching every file's mtime (the stat cache then says
"maybe changed": every file is hashed again, the steps still hit). Targets (issue 6):
no-op rebuild < 0.5 s and < 1/10 of buildah's cached rebuild. Not a test: timings
never decide pass/fail.

    python benchmarks/bench_cache.py [--profile medium] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import arguments, generate  # noqa: E402  (benchmarks/ is on sys.path)
ACBUILD = [sys.executable, "-m", "acbuild"]


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return wall


def bench_acbuild(ctx: Path, work: Path, runs: int) -> dict[str, float]:
    build = [*ACBUILD, "build", "-q", "--cache-dir", str(work / "cache"), "-f", str(ctx / "ACIfile"), "-o", str(work / "out.aci")]
    shutil.rmtree(work / "cache", ignore_errors=True)
    out = {"cold": timed(build)}
    out["no-op"] = statistics.median(timed(build) for _ in range(runs))
    for n, path in enumerate(sorted((ctx / "tree").rglob("*"))):
        os.utime(path, (1_600_000_000 + n, 1_600_000_000 + n), follow_symlinks=False)
    out["touched"] = timed(build)
    out["no-op after touch"] = statistics.median(timed(build) for _ in range(runs))
    out["startup (--version)"] = statistics.median(timed([*ACBUILD, "--version"]) for _ in range(runs))
    return out


def bench_buildah(ctx: Path, work: Path, runs: int) -> dict[str, float] | None:
    buildah = shutil.which("buildah")
    if buildah is None:
        return None
    store = work / "buildah-store"
    common = [buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs"]
    bud = [*common, "bud", "--layers", "--isolation", "chroot", "-q", "-f", str(ctx / "Dockerfile"), "-t", "bench", str(ctx)]
    try:
        out = {"cold": timed(bud)}
        out["cached"] = statistics.median(timed(bud) for _ in range(runs))
        return out
    finally:
        subprocess.run([*common, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    a = arguments(__doc__.split("\n")[0])
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="acbuild-bench-cache-"))
    ctx = work / "ctx"
    try:
        if not (ctx / "tree").exists():
            ctx.mkdir(parents=True, exist_ok=True)
            generate(a.rootfs_script, a.profile, ctx / "tree")
        (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/bench\nCOPY tree/ /data/\n")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY tree/ /data/\n")
        ours = bench_acbuild(ctx, work, a.runs)
        theirs = bench_buildah(ctx, work, a.runs)
        print(f"profile {a.profile}, {a.runs} runs (medians), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        for name, secs in ours.items():
            print(f"acbuild {name:22} {secs:7.2f} s")
        if theirs is None:
            print("buildah not installed: no comparison (apt-get install buildah)")
            return
        for name, secs in theirs.items():
            print(f"buildah bud --layers {name:9} {secs:7.2f} s")
        print(f"no-op rebuild: {ours['no-op']:.2f} s (target < 0.5 s); "
              f"1/{theirs['cached'] / ours['no-op']:.0f} of buildah's cached rebuild (target < 1/10)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
