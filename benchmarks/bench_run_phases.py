"""Where one sandboxed RUN spends its time: each part timed inside the processes that do it.

    .venv/bin/python benchmarks/bench_run_phases.py [CALLS] [none|host]

Runs `/bin/true` in a busybox rootfs CALLS times (default 30) with a build's persistent
scratch dir and prints, per part, the median over the calls: the parent's planning and
clean-up, the forks (init, and rootless the helper: child side), unshare (all namespaces
at once; the network namespace is the difference between `none` and `host`), each kind
of set-up step (the root overlay, /proc, /dev, /sys, tmpfs mounts, masks, pivot_root,
lo up), init's hardening calls (capabilities, seccomp load), the posix_spawn of the
command (the call, in init) and the time from that spawn to
run_sandboxed's return (the command, then the kernel tearing the namespaces down).
Each part is wrapped by a timer that writes to a pipe (the children are forks, so the
wrappers are theirs too); the wrapping itself costs microseconds. A report, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from acbuild.engine.execute import hardening, mount_ops, sandbox, sandbox_process
from acbuild.engine.execute.sandbox import SandboxSpec, run_sandboxed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import make_rootfs  # noqa: E402

READ, WRITE = os.pipe()
os.set_blocking(READ, False)


def note(name: str, start: int) -> None:
    os.write(WRITE, f"{name}\t{(time.perf_counter_ns() - start) / 1e6:.4f}\n".encode())


def timed(owner, attr: str, name: str) -> None:
    fn = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            note(name, start)
    setattr(owner, attr, wrapper)


def instrument() -> None:
    for cls in (mount_ops.MakePrivate, mount_ops.MountRoot, mount_ops.MountFs, mount_ops.MountBind,
                mount_ops.MaskPath, mount_ops.ReadOnlyPath, mount_ops.MountSys, mount_ops.Symlink,
                mount_ops.PivotRoot, mount_ops.SetHostname, mount_ops.LoopbackUp):
        def execute(self, run=cls.execute, cls=cls):
            start = time.perf_counter_ns()
            try:
                return run(self)
            finally:
                note(f"init: {cls.__name__}" + (f" {self.fstype}" if cls is mount_ops.MountFs else ""), start)
        cls.execute = execute
    for attr in ("drop_capabilities", "lock_down", "make_undumpable"):
        timed(hardening, attr, f"init: hardening.{attr}")
    close = hardening.close_inherited
    hardening.close_inherited = lambda keep: close(set(keep) | {WRITE})  # keep the timing pipe
    timed(hardening, "close_inherited", "helper and init: close_inherited")
    timed(sandbox_process, "unshare", "unshare (parent, init or helper)")
    for attr in ("plan_setup", "make_placeholders", "remove_placeholders", "release_overlay_work", "_resolve_ids"):
        timed(sandbox, attr, f"parent: {attr}")
    fork, spawn = os.fork, os.posix_spawn

    def timed_fork():
        start = time.perf_counter_ns()
        pid = fork()
        if pid == 0:
            note("forks (child side: init, rootless the helper too)", start)
        return pid

    def marked_spawn(*args, **kwargs):
        start = time.perf_counter_ns()
        os.write(WRITE, f"spawn-at\t{start}\n".encode())
        try:
            return spawn(*args, **kwargs)
        finally:
            note("init: posix_spawn", start)
    os.fork, os.posix_spawn = timed_fork, marked_spawn


def drain() -> str:
    data = b""
    try:
        while chunk := os.read(READ, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return data.decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("calls", nargs="?", type=int, default=30, help="sandboxed runs (default 30)")
    ap.add_argument("network", nargs="?", choices=("none", "host"), default="none")
    args = ap.parse_args()
    calls, network = args.calls, args.network
    instrument()
    top = Path(tempfile.mkdtemp(prefix="acbuild-bench-"))
    try:
        spec = SandboxSpec(make_rootfs(top), ("/bin/true",), (), network=network, scratch=top / "scratch")
        run_sandboxed(spec)  # warm up
        drain()
        parts: dict[str, list[float]] = {}
        totals = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            run_sandboxed(spec)
            end = time.perf_counter_ns()
            totals.append((end - start) / 1e6)
            this: dict[str, float] = {}
            for line in drain().splitlines():
                name, value = line.split("\t")
                if name == "spawn-at":
                    this["spawn -> returned (command, namespace teardown)"] = (end - int(value)) / 1e6
                else:
                    this[name] = this.get(name, 0.0) + float(value)
            for name, value in this.items():
                parts.setdefault(name, []).append(value)
        load = os.getloadavg()
        print(f"/bin/true, network {network}, {calls} calls, {'root' if os.geteuid() == 0 else 'rootless'}, "
              f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}: median {statistics.median(totals):.2f} ms per run")
        for name, values in sorted(parts.items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"  {name:50} {statistics.median(values):7.3f} ms")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
