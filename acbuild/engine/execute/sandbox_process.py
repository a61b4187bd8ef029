"""The sandbox's processes: the helper that unshares the namespaces (rootless, writes the
id maps) where the parent cannot fork init itself; init (PID 1: runs the mount plan,
hardens itself, spawns the command, reaps, relays signals); the command; and the
parent's side, which forks and waits. As root in the host's user namespace the parent
forks init straight into a new PID namespace and init unshares the others: no helper.
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
    PR_SET_PDEATHSIG, prctl, setns, unshare)
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
    in it before exec were a fifth of a sandboxed run. Init needs nothing the command may not
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


def _namespaces(spec: SandboxSpec) -> int:
    """All but the PID namespace, which only a process's children enter."""
    return CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | (CLONE_NEWNET if spec.network == "none" else 0)


def _leave_engine(stdio, errfd: int, parent_alive) -> None:
    """First thing in the child the parent forked: die with the parent (and at once if it
    is gone already), and close whatever the engine (or whoever started it) holds open."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not parent_alive():
        os._exit(137)
    hardening.close_inherited({0, 1, 2, errfd, *(fd for fd in _stream_fds(stdio) if fd is not None)})


def _root_init(spec: SandboxSpec, plan: MountPlan, ids, stdio, errfd: int, debug: bool) -> None:
    """Forked straight by the parent: already PID 1 of a new PID namespace; unshare the
    rest, then be init."""
    try:
        # getppid() is 0 in the new PID namespace: the parent's end of errfd tells instead
        _leave_engine(stdio, errfd, lambda: _reader_open(errfd))
        unshare(_namespaces(spec))
    except BaseException as e:
        _report_and_exit(errfd, f"unshare namespaces: {getattr(e, 'strerror', None) or e}")
    _init(spec, plan.steps, ids, stdio, errfd, debug)


def _reader_open(fd: int) -> bool:
    import select

    poll = select.poll()
    poll.register(fd, 0)  # POLLERR, reported always: the pipe has no reader left
    return not any(revents & select.POLLERR for _, revents in poll.poll(0))


def _helper(spec: SandboxSpec, plan: MountPlan, ids, stdio, errfd: int, debug: bool,
            rootless: bool, parent: int) -> None:
    """Where the parent cannot fork init itself: unshare (rootless, a user namespace
    first), map ids, start init, relay its status (never returns)."""
    kill_init = _Forward(kill_with=signal.SIGKILL)  # SIGKILL to PID 1 ends the whole namespace
    _on_signals((signal.SIGINT, signal.SIGTERM), kill_init)
    what = "unshare namespaces"
    try:
        _leave_engine(stdio, errfd, lambda: os.getppid() == parent)
        uid, gid = os.geteuid(), os.getegid()
        unshare((CLONE_NEWUSER if rootless else 0) | CLONE_NEWPID | _namespaces(spec))
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


def _fork() -> int:
    try:
        return os.fork()
    except OSError as e:
        raise OSError(e.errno, f"fork: {e.strerror}") from e


_UNKNOWN = -2
_own_pid_namespace = _UNKNOWN  # an fd of this process's PID namespace to go back to, or -1


def _pid_namespace_to_return_to() -> int:
    """The fd, or -1 where setns may not bring this process back (acbuild in a user
    namespace of its own, whose PID namespace the host's user namespace owns): a setns to
    the namespace it is in makes the same permission check, without changing anything."""
    global _own_pid_namespace
    if _own_pid_namespace == _UNKNOWN:
        fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd, CLONE_NEWPID)
        except OSError:
            os.close(fd)
            fd = -1
        _own_pid_namespace = fd
    return _own_pid_namespace


def _fork_in_new_pid_namespace(own: int) -> int:
    """fork(), the child becoming PID 1 of a new PID namespace, then back to `own` for
    this process's later children. Saves the helper process (only a child enters a new
    PID namespace): a fork of the engine's interpreter, with its copy-on-write faults,
    and a process more to end, were a quarter of a sandboxed run."""
    try:
        unshare(CLONE_NEWPID)  # the namespace this process's next child starts
    except OSError as e:
        raise OSError(e.errno, f"unshare namespaces: {e.strerror}") from e
    try:
        return _fork()
    finally:
        if os.getpid() != 1:  # the parent
            setns(own, CLONE_NEWPID)


def fork_and_wait(spec, plan, ids, stdio, debug, rootless) -> int:
    rfd, wfd = os.pipe()  # both close-on-exec (PEP 446): exec success closes the writer
    own = -1 if rootless else _pid_namespace_to_return_to()
    # Forked straight, the child is init, and SIGKILL to PID 1 ends the whole namespace;
    # else the helper does that
    forward = _Forward(kill_with=signal.SIGKILL if own >= 0 else None)
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
            pid = _fork_in_new_pid_namespace(own) if own >= 0 else _fork()
        except OSError as e:
            os.close(rfd)
            os.close(wfd)
            raise BuildError(f"RUN: {e.strerror}") from e
        if pid == 0:
            os.close(rfd)
            if own < 0:
                _helper(spec, plan, ids, stdio, wfd, debug, rootless, parent)
            _root_init(spec, plan, ids, stdio, wfd, debug)
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
