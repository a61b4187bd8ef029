"""Per-RUN overhead of `acbuild build`, beside buildah, and an interactive `acbuild run`.

    .venv/bin/python benchmarks/bench_build_run.py [REPEATS]

- acbuild build: an ACIfile of 20 `RUN true` steps on a busybox base (a local .aci),
  minus the same file with no RUN, divided by 20; median over REPEATS (default 5) builds.
- buildah bud --isolation chroot --storage-driver vfs of the equivalent Dockerfile
  (FROM scratch, COPY busybox, 20x RUN ["/bin/busybox","true"]), the same way; skipped
  when buildah is not installed. A temporary --root/--runroot, removed afterwards.
- acbuild run -- true in an interactive session begun from the same base: the whole
  command (interpreter start included), median over 10 calls; with --go-acbuild BINARY,
  Go acbuild's `run --engine chroot -- true` the same way, in a session of its own
  begun from the same .aci (its chroot engine: no namespaces, no hardening). Build the
  binary from containers/build (it vendors its dependencies) with Debian's golang-go:
  `GOPATH=DIR GO111MODULE=off go build -o BINARY github.com/containers/build/acbuild`
  in DIR/src/github.com/containers/build; the script links `acbuild-chroot` to it
  (the chroot engine re-executes itself by that name, as Go acbuild's build script sets up).

Targets (issue 15): under 15 ms per RUN in a build, under 90 ms per interactive run.
Prints the load and this machine's Python start time before and after (benchmarks/common.py).
A report, not a test: timings never decide pass/fail.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load  # noqa: E402

RUNS = 20
ACBUILD = [sys.executable, "-m", "acbuild"]


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    # buildah 1.28's vendored runc re-execs itself from a sealed memfd copy, which fails here
    # with EBUSY ("Close_Fd sealing memfd copy"); this variable makes it skip that copy.
    env = {**(env or os.environ), "_LIBCONTAINER_CLONED_BINARY": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have .pyc caches; compiling costs ~100 ms a call
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def per_run(build_with: list[str], build_without: list[str], repeats: int, cwd: Path | None = None) -> float:
    """Median of (time with RUNs - time without) / RUNS, in seconds."""
    timed(build_with, cwd)  # warm caches
    samples = []
    for _ in range(repeats):
        samples.append((timed(build_with, cwd) - timed(build_without, cwd)) / RUNS)
    return statistics.median(samples)


def acbuild_build(top: Path, repeats: int) -> float:
    ctx = top / "acbuild"
    ctx.mkdir()
    shutil.copy2("/bin/busybox", ctx / "busybox")
    (ctx / "Base").write_text('FROM scratch\nNAME example.com/busybox\nCOPY --chmod=0755 busybox /bin/busybox\n'
                              'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
    timed([*ACBUILD, "build", "-q", "--cache-dir", str(top / "cache"), "-f", str(ctx / "Base"), "-o", str(top / "base.aci")])
    head = f"FROM {top / 'base.aci'}\nNAME example.com/bench\n"
    (ctx / "With").write_text(head + "RUN true\n" * RUNS)
    (ctx / "Without").write_text(head)
    # every step really runs (--no-cache); the cache it still fills lives in `top`
    build = [*ACBUILD, "build", "-q", "--no-cache", "--cache-dir", str(top / "cache")]
    return per_run([*build, "-f", str(ctx / "With"), "-o", str(top / "with.aci")],
                   [*build, "-f", str(ctx / "Without"), "-o", str(top / "without.aci")], repeats)


def buildah_build(top: Path, repeats: int) -> float | None:
    buildah = shutil.which("buildah")
    if buildah is None:
        return None
    ctx = top / "buildah"
    ctx.mkdir()
    shutil.copy2("/bin/busybox", ctx / "busybox")
    head = "FROM scratch\nCOPY busybox /bin/busybox\n"
    (ctx / "With").write_text(head + 'RUN ["/bin/busybox", "true"]\n' * RUNS)
    (ctx / "Without").write_text(head)
    store = top / "buildah-store"
    base = [buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs",
            "bud", "--isolation", "chroot", "--layers=false", "-q"]
    try:
        return per_run([*base, "-f", str(ctx / "With"), str(ctx)], [*base, "-f", str(ctx / "Without"), str(ctx)],
                       repeats)
    finally:
        subprocess.run([buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"),
                        "--storage-driver", "vfs", "rm", "--all"], capture_output=True)
        subprocess.run([buildah, "--root", str(store / "root"), "--runroot", str(store / "runroot"),
                        "--storage-driver", "vfs", "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)


def interactive_run(top: Path) -> float | None:
    work = top / "session"
    work.mkdir()
    begin = subprocess.run([*ACBUILD, "--work-path", str(work), "begin", str(top / "base.aci")],
                           capture_output=True, text=True)
    if begin.returncode != 0:
        print(f"interactive: acbuild begin failed: {begin.stderr.strip().splitlines()[-1:]}")
        return None
    try:
        run = [*ACBUILD, "--work-path", str(work), "run", "--", "true"]
        timed(run)
        return statistics.median(timed(run) for _ in range(10))
    finally:
        subprocess.run([*ACBUILD, "--work-path", str(work), "end"], capture_output=True)


def go_interactive_run(top: Path, binary: Path) -> float:
    """Go acbuild's chroot-engine `run -- true` in its own session on the same base."""
    bindir = top / "go-bin"
    bindir.mkdir()
    os.symlink(binary.resolve(), bindir / "acbuild")
    os.symlink("acbuild", bindir / "acbuild-chroot")
    work = top / "go-session"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    go = [str(bindir / "acbuild"), "--work-path", str(work)]
    subprocess.run([*go, "begin", str(top / "base.aci")], check=True, capture_output=True, env=env)
    run = [*go, "run", "--engine", "chroot", "--", "/bin/true"]
    try:
        timed(run, env=env)
        return statistics.median(timed(run, env=env) for _ in range(10))
    finally:
        subprocess.run([*go, "end"], capture_output=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("repeats", nargs="?", type=int, default=5, help="builds of each tool (default 5)")
    ap.add_argument("--go-acbuild", type=Path, metavar="BINARY",
                    help="a Go acbuild binary (containers/build, built with golang-go: see this script's docstring): "
                         "the interactive run's peer, its chroot engine")
    args = ap.parse_args()
    repeats = args.repeats
    top = Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    print(f"before: {load()}", flush=True)
    try:
        ours = acbuild_build(top, repeats)
        print(f"acbuild build:  {ours * 1000:7.1f} ms per RUN (median of {repeats}; target < 15 ms)"
              + (" [rootless]" if os.geteuid() else ""))
        theirs = buildah_build(top, max(3, repeats // 2))
        if theirs is None:
            print("buildah bud:    not installed (apt-get install buildah)")
        else:
            print(f"buildah bud:    {theirs * 1000:7.1f} ms per RUN (--isolation chroot, vfs)")
            print(f"ratio:          acbuild takes {ours / theirs:.2f}x buildah's time per RUN")
        inter = interactive_run(top)
        if inter is not None:
            print(f"acbuild run:    {inter * 1000:7.1f} ms per interactive `acbuild run -- true` "
                  "(whole command, median of 10; target < 90 ms)")
        if args.go_acbuild is not None:
            go = go_interactive_run(top, args.go_acbuild)
            print(f"Go acbuild run: {go * 1000:7.1f} ms per `acbuild run --engine chroot -- true` (no isolation)"
                  + (f"; ratio {inter / go:.2f}" if inter is not None else ""))
        print(f"after: {load()}")
    finally:
        subprocess.run(["rm", "-rf", str(top)])


if __name__ == "__main__":
    main()
