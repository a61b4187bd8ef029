"""The sandbox's processes: the helper that unshares the namespaces (and, rootless, writes
the id maps), init (PID 1: runs the mount plan, reaps, relays signals) and the command
(drops privileges, execs); and the parent's side, which forks the helper and waits.
Import-light: everything here but `fork_and_wait` runs in a forked child."""

from __future__ import annotations

import os
import signal
import sys
from typing import IO, Callable, Union

from acbuild.engine.execute import hardening
from acbuild.engine.execute.mount_ops import SetupOp, trace
from acbuild.engine.execute.mount_plan import MountPlan
from acbuild.engine.execute.sandbox_spec import DEFAULT_PATH, SandboxSpec
from acbuild.engine.execute.syscalls import (
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS, PR_SET_NAME,
    PR_SET_PDEATHSIG, prctl, unshare)
from acbuild.errors import BuildError

INIT_NAME = b"acbuild-init"


Stream = Union[int, IO, None]


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _stream_fds(stdio: tuple[Stream, Stream, Stream]) -> list[int | None]:
    return [s if s is None or isinstance(s, int) else s.fileno() for s in stdio]


def _report_and_exit(fd: int, reason: str) -> None:
    try:
        os.write(fd, reason.encode(errors="replace")[:4000])
    finally:
        os._exit(127)


def _on_signals(signals: tuple[int, ...], act: Callable[[int], None]) -> Callable[[], None]:
    """Install `act` for `signals`; return a function that restores the old handlers."""
    old = {s: signal.signal(s, lambda sig, _frame: act(sig)) for s in signals}

    def restore() -> None:
        for s, handler in old.items():
            signal.signal(s, handler)
    return restore


class _Forward:
    """Send a signal to a child that may not exist yet: remember it until it does."""

    def __init__(self, kill_with: int | None = None):
        self.pid: int | None = None
        self.pending: list[int] = []
        self.kill_with = kill_with

    def __call__(self, sig: int) -> None:
        self.pending.append(sig)
        if self.pid is not None:
            try:
                os.kill(self.pid, self.kill_with or sig)
            except ProcessLookupError:
                pass

    def started(self, pid: int) -> None:
        self.pid = pid
        for sig in self.pending:
            self(sig)


# Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: the
# command gets the default of these (init's handled signals reset to it at exec anyway).
_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ)


def _start_command(spec: SandboxSpec, ids: tuple[int, int, tuple[int, ...]] | None,
                   stdio: tuple[Stream, Stream, Stream], errfd: int) -> int:
    """Give init the command's descriptors, limits and ids, then posix_spawn it (PID 2).

    Init is prepared, not a forked child: posix_spawn (vfork-like) copies no page table
    and takes no copy-on-write fault, where a fork of this interpreter and the Python run
    in it before exec were a third of a RUN's time. Init needs nothing the command may not
    have: after this it only waits, reaps and forwards signals (as the command's user,
    undumpable, so the command can neither trace it nor read its memory)."""
    what = "set up the command"
    try:
        for n, fd in enumerate(_stream_fds(stdio)):
            if fd is not None and fd != n:
                os.dup2(fd, n)  # the copy is inheritable
            else:
                os.set_inheritable(n, True)
        what = "harden"  # errfd (close-on-exec) stays open to report a failed exec
        hardening.close_inherited({0, 1, 2, errfd})
        hardening.drop_capabilities()
        root_user = ids is None or ids[0] == 0
        hardening.lock_down(no_new_privileges=root_user or not spec.allow_setuid)
        if ids is not None:  # root: really switch; rootless: only 0 is mapped, nothing to do
            uid, gid, groups = ids
            what = f"set user {uid}:{gid}"
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # an id change clears it
        hardening.make_undumpable()  # after the id change too, which resets it
        os.umask(0o022)  # as in a container: the caller's umask must not shape the image
        what = f"chdir {spec.cwd}"
        os.chdir(spec.cwd)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        what = f"exec {spec.argv[0]}"
        return _spawn(list(spec.argv), env)
    except BaseException as e:
        _report_and_exit(errfd, f"{what}: {getattr(e, 'strerror', None) or e}")


def _spawn(argv: list[str], env: dict[str, str]) -> int:
    """posix_spawn argv[0], searched in env's PATH as os.execvpe searches it."""
    name = argv[0]
    dirs = [""] if os.path.dirname(name) else os.get_exec_path(env)
    first: OSError | None = None  # the first error other than "not there", as execvpe reports
    last: OSError | None = None
    for d in dirs:
        try:
            return os.posix_spawn(os.path.join(d, name), argv, env, setsigdef=_DEFAULT_SIGNALS)
        except (FileNotFoundError, NotADirectoryError) as e:
            last = e
        except OSError as e:
            first = first or e
    raise first or last or FileNotFoundError(2, "No such file or directory")


def _init(spec: SandboxSpec, steps: list[SetupOp], ids, stdio, errfd: int, debug: bool) -> None:
    """PID 1 of the new PID namespace: set up, start the command, reap, relay (never returns)."""
    forward = _Forward()
    _on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT), forward)
    step: SetupOp | None = None
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_NAME, INIT_NAME)
        for step in steps:
            trace(debug, step.describe())
            step.execute()
        step = None
        cmd = _start_command(spec, ids, stdio, errfd)
        forward.started(cmd)
        os.close(errfd)
        while True:  # reap everything; the command's end is the sandbox's end
            pid, status = os.waitpid(-1, 0)
            if pid == cmd:
                os._exit(_exit_code(status))
    except BaseException as e:
        what = step.describe() if step is not None else "start the command"
        _report_and_exit(errfd, f"{what}: {getattr(e, 'strerror', None) or e}")


def _helper(spec: SandboxSpec, plan: MountPlan, ids, stdio, errfd: int, debug: bool,
            rootless: bool, parent: int) -> None:
    """Unshare, map ids, start init, relay its status (never returns)."""
    kill_init = _Forward(kill_with=signal.SIGKILL)  # SIGKILL to PID 1 ends the whole namespace
    _on_signals((signal.SIGINT, signal.SIGTERM), kill_init)
    what = "unshare namespaces"
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(137)
        # whatever the engine (or whoever started it) holds open stays out of the sandbox
        hardening.close_inherited({0, 1, 2, errfd, *(fd for fd in _stream_fds(stdio) if fd is not None)})
        uid, gid = os.geteuid(), os.getegid()
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
        flags |= CLONE_NEWNET if spec.network == "none" else 0
        flags |= CLONE_NEWUSER if rootless else 0
        unshare(flags)
        if rootless:  # the invoking user is root inside; nothing else is mapped
            what = "write uid/gid maps"
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        what = "fork init"
        init = os.fork()
        if init == 0:
            _init(spec, plan.steps, ids, stdio, errfd, debug)
        kill_init.started(init)
        os.close(errfd)
        _, status = os.waitpid(init, 0)
        os._exit(_exit_code(status))
    except BaseException as e:
        _report_and_exit(errfd, f"{what}: {getattr(e, 'strerror', None) or e}")



def fork_and_wait(spec, plan, ids, stdio, debug, rootless) -> int:
    rfd, wfd = os.pipe()  # both close-on-exec (PEP 446): exec success closes the writer
    forward = _Forward()
    try:
        restore = _on_signals((signal.SIGINT, signal.SIGTERM), forward)
    except ValueError:  # not the main thread: signals are the main thread's business
        def restore() -> None:
            pass
    try:
        for f in (sys.stdout, sys.stderr):
            f.flush()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(rfd)
            os.close(wfd)
            raise BuildError(f"RUN: fork: {e.strerror}") from e
        if pid == 0:
            os.close(rfd)
            _helper(spec, plan, ids, stdio, wfd, debug, rootless, parent)
        os.close(wfd)
        forward.started(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        restore()
    with os.fdopen(rfd, "rb") as r:
        reason = r.read().decode(errors="replace").strip()
    if forward.pending:
        raise KeyboardInterrupt
    if reason:
        raise BuildError(f"RUN: {reason}")
    return _exit_code(status)
