"""RUN on a real Debian base, and launch of that image: what steps-as-snapshots cost.

The base is Debian bookworm minbase made by mmdebstrap, the tarball tests/debian.py
caches ($ACBUILD_TEST_CACHE, else /var/cache/acbuild-tests; `pytest tests/test_rootless.py`
or any test using the debian_rootfs fixture makes it), packed here as an .aci.

Rows (medians of --runs runs; the load average is printed before and after):
  per RUN        10 RUNs in one build, every RUN a cache miss (a fresh nonce per run)
                 after a cached FROM: from the first RUN's start to the next step's, / 10
  cache growth   steps/ bytes (each inode once) added by one RUN writing 1 MiB, / 1 MiB
  launch         `acbuild launch` of the image printing `id`: first (empty cache dir, on
                 a disk left quiet: synced, no I/O for 2 s) and after (its rendered tree
                 reused); beside the first, GNU tar extracting the same rootfs on the same
                 quiet disk just before it: the disk's floor for creating its 8,700 entries
  peers          buildah bud --layers (overlay storage, chroot isolation) per RUN on the
                 same rootfs, when buildah is installed; --before PYTHONPATH runs the same
                 acbuild rows with another checkout (e.g. /work/main) for the old figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS_PER_BUILD = 10
CHANGED = 1 << 20


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def debian_tar() -> Path:
    cache = Path(os.environ.get("ACBUILD_TEST_CACHE") or "/var/cache/acbuild-tests")
    found = sorted(glob.glob(str(cache / "debian-bookworm-minbase-*.tar")))
    if not found:
        sys.exit(f"no Debian minbase tarball in {cache}: run a test using the debian_rootfs fixture first "
                 "(e.g. .venv/bin/python -m pytest tests/test_rootless.py -k debian)")
    return Path(found[-1])


class Acbuild:
    def __init__(self, pythonpath: str | None):
        self.env = {**os.environ}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have .pyc caches
        if pythonpath:
            self.env["PYTHONPATH"] = pythonpath

    def __call__(self, *args, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True,
                              env=self.env)
        elapsed = time.perf_counter() - start
        if check and proc.returncode != 0:
            sys.exit(f"acbuild {' '.join(map(str, args))} failed:\n{proc.stderr}")
        return elapsed, proc


def make_image(acbuild: Acbuild, top: Path, tar: Path) -> Path:
    layout = top / "layout"
    (layout / "rootfs").mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tar), "-C", str(layout / "rootfs")], check=True)
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/debian-minbase",
                "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
                "app": {"exec": ["/usr/bin/id"], "user": "0", "group": "0"}}
    (layout / "manifest").write_text(json.dumps(manifest))
    image = top / "debian.aci"
    acbuild("pack", layout, image)
    return image


def unique_bytes(root: Path) -> int:
    seen, total = set(), 0
    for path in root.rglob("*"):
        st = path.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def per_run(acbuild: Acbuild, top: Path, image: Path, runs: int) -> float:
    """Wall time from the start of the first RUN to the start of the step after the last,
    / RUNS_PER_BUILD: each RUN's set-up, command (`true`), fold and cache store, but not
    the FROM's restore nor the image write (whose fsync swings by seconds on a shared disk).
    Taken from `--progress json` step events, stamped as they arrive."""
    cache = top / "cache"
    head = f"FROM {image}\nNAME example.com/bench\n"
    (top / "ACIfile").write_text(head)
    acbuild("build", "-q", "--compression", "none", "--cache-dir", cache, "-f", top / "ACIfile", "-o", top / "out.aci")
    samples = []
    for n in range(runs):
        nonce = f"{time.time_ns()}-{n}"
        (top / "ACIfile").write_text(head + "".join(f"RUN true {nonce}-{i}\n" for i in range(RUNS_PER_BUILD))
                                     + "LABEL done=yes\n")
        proc = subprocess.Popen([sys.executable, "-m", "acbuild", "build", "--progress", "json", "--compression", "none",
                                 "--cache-dir", str(cache), "-f", str(top / "ACIfile"), "-o", str(top / "out.aci")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=acbuild.env)
        started = {}
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line).get("event") == "step":
                started[json.loads(line)["number"]] = time.perf_counter()
        if proc.wait() != 0:
            sys.exit("the per-RUN build failed")
        first, after = 3, 3 + RUNS_PER_BUILD  # FROM, NAME, then the RUNs, then the LABEL
        samples.append((started[after] - started[first]) / RUNS_PER_BUILD)
    return statistics.median(samples)


def cache_growth(acbuild: Acbuild, top: Path, image: Path, runs: int) -> float:
    cache = top / "cache"
    ratios = []
    for n in range(runs):
        nonce = time.time_ns()
        (top / "ACIfile").write_text(f"FROM {image}\nNAME example.com/bench\n"
                                     f"RUN head -c {CHANGED} /dev/urandom > /opt/changed-{nonce}\n")
        before = unique_bytes(cache / "steps")
        acbuild("build", "-q", "--compression", "none", "--cache-dir", cache, "-f", top / "ACIfile", "-o", top / "g.aci")
        ratios.append((unique_bytes(cache / "steps") - before) / CHANGED)
    return statistics.median(ratios)


def launch_times(acbuild: Acbuild, top: Path, image: Path, runs: int, tar: Path) -> tuple[float, float, float]:
    """Medians of the first launch, of the launches after it, and of GNU tar extracting
    the same rootfs on the same quiet disk just before each first launch (the floor: the
    kernel creating 8,700 entries)."""
    first, after, untar = [], [], []
    keeps_trees = "--cache-dir" in acbuild("launch", "--help")[1].stdout  # an acbuild before rendered trees: no
    for n in range(runs):
        cache = top / f"launch-cache-{n}"
        argv = ["launch", "--insecure-skip-verify", *(["--cache-dir", cache] if keeps_trees else []), image]
        # The disk as a first launch finds it on an idle machine: the earlier rows' and
        # runs' writes flushed and the disk quiet, and no tree removed just before (each
        # is kept to the end): creating 8,700 files right after removing as many, or
        # while 180 MB are written back or discarded, took 2-3x as long here.
        waited = settle_disk()
        (top / f"untar-{n}").mkdir()
        start = time.perf_counter()
        subprocess.run(["tar", "-xf", str(tar), "-C", str(top / f"untar-{n}")], check=True)
        untar.append(time.perf_counter() - start)
        waited += settle_disk()
        t, proc = acbuild(*argv)
        print(f"  first launch {n + 1}: {t:.2f} s; tar -x of its rootfs just before {untar[-1]:.2f} s "
              f"(the disk quiet before each: {waited:.1f} s waited)", flush=True)
        assert "uid=0(root)" in proc.stdout, proc.stdout
        first.append(t)
        after.append(statistics.median(acbuild(*argv)[0] for _ in range(3)))
    for n in range(runs):
        shutil.rmtree(top / f"launch-cache-{n}", ignore_errors=True)
        shutil.rmtree(top / f"untar-{n}", ignore_errors=True)
    return statistics.median(first), statistics.median(after), statistics.median(untar)


def settle_disk(quiet: float = 2.0, limit: float = 60.0) -> float:
    """sync, then wait until no disk has completed a read, write or discard for
    `quiet` seconds (at most `limit`); returns the seconds waited."""
    def counters() -> list[str]:
        with open("/proc/diskstats") as f:
            return [" ".join(line.split()[3:]) for line in f]  # per device: every I/O counter

    start = time.monotonic()
    os.sync()
    last, since = counters(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < limit:
        time.sleep(0.25)
        now = counters()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - start


def buildah_per_run(top: Path, tar: Path, runs: int) -> float | None:
    buildah = shutil.which("buildah")
    if buildah is None:
        return None
    env = {**os.environ, "_LIBCONTAINER_CLONED_BINARY": "1"}  # see bench_build_run.py
    store = top / "buildah-store"
    base = [buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "overlay"]

    def run(*args: str) -> float:
        start = time.perf_counter()
        proc = subprocess.run([*base, *args], capture_output=True, text=True, env=env, cwd=top)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-300:])
        return time.perf_counter() - start

    try:
        (top / "bctx").mkdir()
        shutil.copy(tar, top / "bctx/rootfs.tar")
        (top / "bctx/Base").write_text("FROM scratch\nADD rootfs.tar /\n")
        run("bud", "--isolation", "chroot", "--layers", "-q", "-t", "debian-base", "-f", str(top / "bctx/Base"),
            str(top / "bctx"))
        samples = []
        for n in range(runs):
            nonce = f"{time.time_ns()}-{n}"
            (top / "bctx/With").write_text("FROM debian-base\n" + "".join(f"RUN true {nonce}-{i}\n"
                                                                          for i in range(RUNS_PER_BUILD)))
            (top / "bctx/Without").write_text(f"FROM debian-base\nLABEL nonce={nonce}\n")
            with_runs = run("bud", "--isolation", "chroot", "--layers", "-q", "-f", str(top / "bctx/With"), str(top / "bctx"))
            without = run("bud", "--isolation", "chroot", "--layers", "-q", "-f", str(top / "bctx/Without"), str(top / "bctx"))
            samples.append((with_runs - without) / RUNS_PER_BUILD)
        return statistics.median(samples)
    except RuntimeError as err:
        print(f"buildah: failed ({err})")
        return None
    finally:
        subprocess.run([*base, "rm", "--all"], capture_output=True, env=env)
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True, env=env)
        shutil.rmtree(store, ignore_errors=True)


def rows(label: str, acbuild: Acbuild, top: Path, tar: Path, runs: int, launch: bool) -> None:
    top.mkdir()
    image = make_image(acbuild, top, tar)
    print(f"{label} per RUN on the Debian base: {per_run(acbuild, top, image, runs) * 1000:7.1f} ms "
          f"(median of {runs}; target < 150 ms beyond the command)", flush=True)
    print(f"{label} cache growth per RUN changing 1 MiB: {cache_growth(acbuild, top, image, runs):.2f}x "
          f"(median of {runs}; target <= 2x)", flush=True)
    if launch:
        first, after, untar = launch_times(acbuild, top, image, runs, tar)
        print(f"{label} launch printing id: first {first:.2f} s, after {after:.2f} s "
              f"(medians of {runs}; targets < 2 s, < 0.3 s); `tar -x` of the rootfs {untar:.2f} s: "
              f"first launch / tar {first / untar:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", metavar="PYTHONPATH", help="also measure another acbuild checkout (e.g. /work/main)")
    ap.add_argument("--no-buildah", action="store_true")
    ap.add_argument("--no-launch", action="store_true")
    ap.add_argument("--skip-new", action="store_true", help="only the --before and peer rows")
    args = ap.parse_args()
    tar = debian_tar()
    top = Path(tempfile.mkdtemp(prefix="acbuild-bench-snapshots-"))
    print(f"start: {load()}", flush=True)
    try:
        if not args.skip_new:
            rows("acbuild:", Acbuild(None), top / "new", tar, args.runs, not args.no_launch)
        if args.before:
            rows(f"before ({args.before}):", Acbuild(args.before), top / "old", tar, args.runs, not args.no_launch)
        if not args.no_buildah:
            theirs = buildah_per_run(top, tar, args.runs)
            if theirs is not None:
                print(f"buildah bud --layers (overlay, chroot) per RUN: {theirs * 1000:7.1f} ms (median of {args.runs})")
    finally:
        shutil.rmtree(top, ignore_errors=True)
        print(f"end: {load()}", flush=True)


if __name__ == "__main__":
    main()
