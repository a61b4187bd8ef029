"""What the benchmarks share: their command line, the synthetic tree, timing a
child process (wall, CPU, peak RSS) and the machine's load.

The tree comes from ../shared/bench/make_rootfs.py (beside the repository), so
figures compare across tools and machines."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# acbuild through its real CLI, with .pyc files written as a user's install has them
# (PYTHONDONTWRITEBYTECODE, set in some sandboxes, would make every run compile every module).
ACBUILD = [sys.executable, "-m", "acbuild"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def arguments(description: str, *, profile: str = "medium", extra=None) -> argparse.Namespace:
    """The shared options; extra(parser) adds a benchmark's own."""
    ap = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(ap)
    ap.add_argument("--profile", default=profile, help=f"make_rootfs.py profile (default: {profile})")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rootfs-script", default=str(REPO.parent / "shared/bench/make_rootfs.py"),
                    help="the generator (default: ../shared/bench/make_rootfs.py beside the repo)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    return ap.parse_args()


def generate(script: str, profile: str, dest: Path, *extra: str) -> None:
    """The deterministic synthetic tree (extra: e.g. --aci-layout NAME)."""
    print(f"generating {profile} tree in {dest} ...", flush=True)
    subprocess.run([sys.executable, script, profile, str(dest), *extra, "--no-digest"], check=True,
                   stdout=subprocess.DEVNULL)


class Run:
    """One child process: wall and CPU (user + system) seconds, peak RSS in MiB."""

    def __init__(self, wall: float, cpu: float, rss_mib: float):
        self.wall, self.cpu, self.rss_mib = wall, cpu, rss_mib


def timed(cmd: list[str], *, shell: bool = False) -> Run:
    """Run cmd (stdout to /dev/null); exit on failure. With shell, cmd[0] is a sh -c
    script (a pipeline: its CPU time and RSS are its children's)."""
    argv = ["/bin/sh", "-c", cmd[0]] if shell else cmd
    with tempfile.TemporaryFile() as err:  # stderr (progress lines) shown only on failure
        t0 = time.perf_counter()
        quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        pid = os.posix_spawnp(argv[0], argv, ENV, file_actions=quiet)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            sys.exit(f"failed: {' '.join(argv)}\n{err.read().decode(errors='replace')}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def load() -> str:
    """The load averages (1, 5, 15 min) on this many CPUs, and how fast this machine
    starts Python: other work skews wall times, and machines differ (the same VM has
    started `python -c pass` in 21 ms one day and 55 ms another)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs; {python_start()}"


def python_start() -> str:
    """The venv's `python -c pass` (what bench_startup.py compares with): the machine's
    speed for a start-up-bound command, median of 5."""
    times = sorted(timed([sys.executable, "-c", "pass"]).wall for _ in range(5))
    return f"python start {times[2] * 1000:.1f} ms"