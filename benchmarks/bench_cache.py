#!/usr/bin/env python3
"""Build benchmark: cold build and no-op rebuild of an ACIfile that COPYs the
synthetic "medium" tree (20,000 files, 200 MB, ../shared/bench/make_rootfs.py), beside
`buildah bud --layers` (chroot isolation, vfs storage, temp --root/--runroot) on the
equivalent Dockerfile, alternating, N runs of each (a cold run starts from an empty
step cache / an empty buildah store).

    FROM scratch / NAME example.com/bench / COPY tree/ /data/

Also times a rebuild after touching every file's mtime (the stat cache then says
"maybe changed": every file is hashed again, the steps still hit). Prints medians
(wall and CPU), ratios, acbuild's peak RSS and the load. Targets (issue 15): cold
build <= 0.7x buildah's, no-op rebuild < 0.2 s, peak RSS < 100 MiB. Not a test:
timings never decide pass/fail.

    python benchmarks/bench_cache.py [--profile medium] [--runs 3] [--keep DIR] [--no-buildah]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import ACBUILD, Run, arguments, generate, load, timed  # noqa: E402  (benchmarks/ is on sys.path)


def median(runs: list[Run], what: str = "wall") -> float:
    return statistics.median(getattr(r, what) for r in runs)


def buildah_commands(ctx: Path, work: Path) -> tuple[list[str], list[str], Path] | None:
    buildah = shutil.which("buildah")
    if buildah is None:
        return None
    store = work / "buildah-store"
    common = [buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs"]
    bud = [*common, "bud", "--layers", "--isolation", "chroot", "-q", "-f", str(ctx / "Dockerfile"), "-t", "bench", str(ctx)]
    return bud, common, store


def reset_buildah(common: list[str], store: Path) -> None:
    subprocess.run([*common, "rmi", "--all", "--force"], capture_output=True)
    shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    a = arguments(__doc__.split("\n")[0], extra=lambda ap: ap.add_argument(
        "--no-buildah", action="store_true", help="acbuild alone (e.g. for the large tree)"))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="acbuild-bench-cache-"))
    ctx = work / "ctx"
    try:
        if not (ctx / "tree").exists():
            ctx.mkdir(parents=True, exist_ok=True)
            generate(a.rootfs_script, a.profile, ctx / "tree")
        (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/bench\nCOPY tree/ /data/\n")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY tree/ /data/\n")
        cache = work / "cache"
        build = [*ACBUILD, "build", "-q", "--cache-dir", str(cache), "-f", str(ctx / "ACIfile"), "-o", str(work / "out.aci")]
        peer = None if a.no_buildah else buildah_commands(ctx, work)
        timed([*ACBUILD, "--version"])  # warm-up: .pyc files
        before = load()
        ours: dict[str, list[Run]] = {"cold": [], "no-op": []}
        theirs: dict[str, list[Run]] = {"cold": [], "cached": []}
        for i in range(a.runs):
            shutil.rmtree(cache, ignore_errors=True)
            ours["cold"].append(timed(build))
            ours["no-op"].append(timed(build))
            line = f"run {i + 1}: acbuild cold {ours['cold'][-1].wall:.2f} s, no-op {ours['no-op'][-1].wall:.2f} s"
            if peer:
                bud, common, store = peer
                reset_buildah(common, store)
                theirs["cold"].append(timed(bud))
                theirs["cached"].append(timed(bud))
                line += f"; buildah cold {theirs['cold'][-1].wall:.2f} s, cached {theirs['cached'][-1].wall:.2f} s"
            print(line, flush=True)
        if peer:
            reset_buildah(peer[1], peer[2])
        for n, path in enumerate(sorted((ctx / "tree").rglob("*"))):
            os.utime(path, (1_600_000_000 + n, 1_600_000_000 + n), follow_symlinks=False)
        touched = timed(build)
        after_touch = [timed(build) for _ in range(a.runs)]
        print(f"profile {a.profile}, {a.runs} runs (medians); before: {before}; after: {load()}")
        for name, runs in ours.items():
            print(f"acbuild {name:18} {median(runs):7.2f} s  CPU {median(runs, 'cpu'):6.2f} s  "
                  f"peak RSS {max(r.rss_mib for r in runs):6.1f} MiB")
        print(f"acbuild touched mtimes     {touched.wall:7.2f} s  CPU {touched.cpu:6.2f} s (one run)")
        print(f"acbuild no-op after touch  {median(after_touch):7.2f} s")
        if not peer:
            print("buildah not run (--no-buildah, or apt-get install buildah)")
            return
        for name, runs in theirs.items():
            print(f"buildah bud --layers {name:6} {median(runs):7.2f} s  CPU {median(runs, 'cpu'):6.2f} s")
        print(f"cold build: acbuild/buildah {median(ours['cold']) / median(theirs['cold']):.2f} (target <= 0.7); "
              f"no-op rebuild {median(ours['no-op']):.2f} s (target < 0.2 s), "
              f"1/{median(theirs['cached']) / median(ours['no-op']):.0f} of buildah's cached rebuild")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
