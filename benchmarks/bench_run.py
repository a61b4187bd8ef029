"""Per-RUN overhead of the namespace sandbox, beside a bare chroot fork+exec.

    .venv/bin/python benchmarks/bench_run.py [CALLS]

Runs `/bin/true` in a busybox rootfs CALLS times (default 20) each way and prints the
median and worst wall time per call. Target: under 50 ms per sandboxed RUN. A report,
not a test: timings never decide pass/fail. As a non-root user it measures the rootless
sandbox (a user namespace too) and skips the chroot baseline, which needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from acbuild.engine.execute.sandbox import SandboxSpec, run_sandboxed


def make_rootfs(top: Path) -> Path:
    root = top / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "bin/true").symlink_to("busybox")
    return root


def chroot_true(root: Path) -> int:
    """What acbuild's old chroot engine did per step: no isolation at all."""
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot(root)
            os.chdir("/")
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def timed(fn: Callable[[], int], calls: int) -> list[float]:
    fn()  # warm up (page cache, first-use allocations)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        assert fn() == 0
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("calls", nargs="?", type=int, default=20, help="runs of /bin/true each way (default 20)")
    calls = ap.parse_args().calls
    with tempfile.TemporaryDirectory(prefix="acbuild-bench-") as top:
        root = make_rootfs(Path(top))
        rows = [
            ("sandbox, network none", lambda: run_sandboxed(SandboxSpec(root, ("/bin/true",), ()))),
            ("sandbox, network host", lambda: run_sandboxed(SandboxSpec(root, ("/bin/true",), (), network="host"))),
        ]
        if os.geteuid() == 0:  # chroot needs root
            rows.append(("chroot fork+exec (baseline)", lambda: chroot_true(root)))
        mode = "root" if os.geteuid() == 0 else "rootless"
        print(f"/bin/true, {calls} calls each, {mode}, kernel {os.uname().release}")
        for name, fn in rows:
            t = timed(fn, calls)
            print(f"  {name:30} median {statistics.median(t):6.1f} ms   max {max(t):6.1f} ms")


if __name__ == "__main__":
    main()
