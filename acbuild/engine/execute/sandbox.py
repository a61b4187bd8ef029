"""The namespace sandbox that RUN steps execute in.

Contract: `run_sandboxed(spec)` runs `spec.argv` with `spec.rootfs` as "/" in new mount,
PID, UTS, IPC and (unless network="host") network namespaces, plus a user namespace when
the caller is not root; it returns the command's exit status (128+N if signal N killed
it). Writes to the rootfs stay; everything mounted for the run lives in a private mount
namespace that dies with the run, and the mount points the run had to create in the
rootfs are removed again by the parent, on success, failure and Ctrl-C alike.

Process structure (chosen over "the command is PID 1", whose default signal dispositions
are ignored and which may not reap orphans):

    parent (engine) --fork--> helper: unshare(), uid/gid maps --fork--> init = PID 1:
        mounts, pivot_root, hostname, lo up --fork--> PID 2: drop ids, chdir, execve

The helper relays init's status and answers SIGINT/SIGTERM with SIGKILL to init, which
makes the kernel kill every process of the PID namespace. Init forwards signals to the
command, reaps orphans and exits with the command's status. No interpreter is started:
fork only, so a RUN costs a few milliseconds.

Hardening (acbuild.engine.execute.hardening, measured against runc's default spec and Docker's
default profile): "/" is an overlay over the rootfs, mounted nodev (and nosuid when the
spec asks), named in mountinfo by /proc/self/fd paths so no host path shows; /proc and
/sys carry runc's masked and read-only paths; /tmp, /run and /dev/shm are tmpfs of
`tmpfs_size`; the command gets no descriptor above 2, Docker's capability set less
CAP_MKNOD, the seccomp filter, and no_new_privs when the spec says it needs no setuid.
Init is undumpable, so the command cannot read the parent's memory it inherited.

Import-light on purpose (stdlib + ctypes): this module runs in the freshly forked child.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Protocol, Union

from acbuild.engine.execute import hardening
from acbuild.engine.execute.users import in_image, resolve_group, resolve_user
from acbuild.errors import BuildError
from acbuild.userns import OwnerError, check_process_ids, overlay_userxattr

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_NAME = b"acbuild-init"

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# Flags a remount inside a user namespace must keep (the kernel locks them): statvfs
# ST_* bit -> mount MS_* bit.
_LOCKED = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
           os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}

_libc = ctypes.CDLL(None, use_errno=True)


# --- syscalls: one-line wrappers that raise OSError with the errno ------------------------

def _check(ret: int, path: object = None) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), None if path is None else str(path))


def _b(s: object) -> bytes | None:
    return None if s is None else os.fsencode(str(s))


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def mount(source: object, target: object, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), target)


def umount2(target: object, flags: int) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), target)


def pivot_root(new_root: object, put_old: object) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {os.uname().machine}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))))


def prctl(option: int, arg: int | bytes) -> None:
    _check(_libc.prctl(ctypes.c_int(option), arg if isinstance(arg, bytes) else ctypes.c_ulong(arg), 0, 0, 0))


# --- what the caller asks for --------------------------------------------------------------

@dataclass(frozen=True)
class Bind:
    """A host path visible at `target` (absolute, inside the rootfs) during one run only."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class SandboxSpec:
    rootfs: Path  # the image's rootfs dir, written by the command
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    user: str = "0"  # name (the image's /etc/passwd) or number
    group: str = "0"  # name (the image's /etc/group) or number
    supplementary_gids: tuple[int, ...] = ()
    hostname: str = "acbuild"
    network: str = "none"  # "none": new netns, only lo up; "host": the host's network
    binds: tuple[Bind, ...] = ()
    resolv_conf: Path | None = None  # network="host": bound read-only at /etc/resolv.conf
    # Dependencies (engine.layers): read-only layers below the rootfs, highest first, merged
    # with overlayfs so the command sees them while its changes (and whiteouts) land in the
    # rootfs, the upper dir. overlay_work: an empty dir on the rootfs's filesystem.
    lower_layers: tuple[Path, ...] = ()
    overlay_work: Path | None = None
    # A separate upper dir (engine.execute.layer: RUN steps as snapshots, launch): the rootfs
    # itself becomes the top lower layer, read-only, and the command's changes (whiteouts
    # included) land in `upper`, an empty dir on the rootfs's filesystem; needs overlay_work.
    upper: Path | None = None
    # Without lower layers, "/" is still an overlay (mountinfo then names no host path), over
    # an empty lower dir; `scratch`: a dir of the caller's on the rootfs's filesystem where
    # those dirs stay between runs (None: made beside the rootfs and removed after the run).
    scratch: Path | None = None
    # Setuid: no_new_privileges for commands that need no setuid binary (RUN as root gains
    # nothing from one; launch sets it unless --allow-setuid); nosuid on the rootfs too.
    # False (launch, unless --allow-setuid): the rootfs is nosuid and the command runs with
    # no_new_privs. True (RUN: `USER app` steps call sudo and su): setuid works, and only a
    # command running as root gets no_new_privs, which costs it nothing.
    allow_setuid: bool = True
    tmpfs_size: int = hardening.DEFAULT_TMPFS_SIZE  # bytes, each of /tmp, /run and /dev/shm


# --- set-up steps: each can say what it does, then do it (debug prints the list) ----------

class SetupOp(Protocol):
    def describe(self) -> str: ...
    def execute(self) -> None: ...


def _ensure(path: Path, kind: str) -> None:
    """Create a missing mount point (only ever inside fresh mounts or placeholders)."""
    if os.path.lexists(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dir":
        path.mkdir()
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))


def _remount(target: Path, flags: int) -> None:
    """Add `flags` (MS_RDONLY, MS_NODEV...) to a bind mount, keeping the ones it has."""
    kept = os.statvfs(target).f_flag
    flags |= MS_BIND | MS_REMOUNT
    for st, ms in _LOCKED.items():
        if kept & st:
            flags |= ms
    mount(None, target, None, flags)


def _remount_read_only(target: Path) -> None:
    _remount(target, MS_RDONLY)


@dataclass(frozen=True)
class MakePrivate:
    def describe(self) -> str:
        return "make all mounts private (nothing propagates back to the host)"

    def execute(self) -> None:
        mount(None, "/", None, MS_REC | MS_PRIVATE)


@dataclass(frozen=True)
class MountBind:
    source: Path
    target: Path
    read_only: bool = False
    recursive: bool = True

    def describe(self) -> str:
        return f"bind {self.source} on {self.target}" + (" read-only" if self.read_only else "")

    def execute(self) -> None:
        _ensure(self.target, "dir" if os.path.isdir(self.source) else "file")
        mount(self.source, self.target, None, MS_BIND | (MS_REC if self.recursive else 0))
        if self.read_only:
            _remount_read_only(self.target)


@dataclass(frozen=True)
class MountFs:
    fstype: str
    target: Path
    flags: int = MS_NOSUID | MS_NODEV
    data: str = ""

    def describe(self) -> str:
        ro = " read-only" if self.flags & MS_RDONLY else ""
        return f"mount {self.fstype} on {self.target}" + (f" ({self.data})" if self.data else "") + ro

    def execute(self) -> None:
        _ensure(self.target, "dir")
        mount(self.fstype, self.target, self.fstype, self.flags, self.data or None)


@dataclass(frozen=True)
class MountOverlay:
    """overlayfs over the rootfs: `lower` read-only below, the rootfs itself as the upper dir.
    redirect_dir and metacopy stay off so every change is a whole file in the upper dir;
    userxattr (rootless) keeps opaque markers in user.overlay.* (trusted.* needs root).
    volatile: its unmount, when the sandbox ends, would otherwise syncfs the whole host
    filesystem (8-15 ms a RUN on a busy disk); nothing here needs it durable, the image
    writer fsyncs what it writes. It marks the work dir, which release_overlay_work clears."""

    lower: tuple[Path, ...]
    upper: Path
    work: Path
    userxattr: bool
    flags: int = MS_NODEV
    target: Path | None = None  # the mount point; None: the upper dir itself

    def options(self, dirs: list[str] | None = None, volatile: bool = True) -> str:
        """`dirs`: how to name lower..., upper, work (default: their paths)."""
        *lower, upper, work = dirs or [str(p) for p in (*self.lower, self.upper, self.work)]
        opts = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
        opts += ",userxattr" if self.userxattr else ",redirect_dir=off,metacopy=off,index=off"
        return opts + (",volatile" if volatile else "")

    def describe(self) -> str:
        return f"mount overlay on {self.target or self.upper} ({self.options()})"

    def execute(self) -> None:
        # Named by /proc/self/fd/N, which is what mountinfo then shows: no host path.
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p in (*self.lower, self.upper, self.work)]
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        try:
            try:
                mount("overlay", self.target or self.upper, "overlay", self.flags, self.options(names))
            except OSError as e:  # a kernel before 5.10 has no volatile
                if e.errno != errno.EINVAL:
                    raise
                mount("overlay", self.target or self.upper, "overlay", self.flags, self.options(names, volatile=False))
        finally:
            for fd in fds:
                os.close(fd)


@dataclass(frozen=True)
class MountRoot:
    """The rootfs as a mount point for pivot_root: the overlay. Where there is no scratch
    dir (the rootfs's parent is not writable) or the rootfs's filesystem cannot be an
    overlay upper dir (overlayfs itself) and nothing lies below it, a bind mount instead,
    whose mountinfo entry does name the rootfs's host path."""

    root: Path
    flags: int
    overlay: MountOverlay | None
    may_bind: bool

    def describe(self) -> str:
        if self.overlay is None:
            return f"bind {self.root} on itself"
        return self.overlay.describe() + (" (or bind it on itself)" if self.may_bind else "")

    def execute(self) -> None:
        try:
            if self.overlay is not None:
                return self.overlay.execute()
        except OSError:
            if not self.may_bind:
                raise
        mount(self.root, self.root, None, MS_BIND | MS_REC)
        _remount(self.root, self.flags)


@dataclass(frozen=True)
class MaskPath:
    """runc's masked path: /dev/null over a file, an empty read-only tmpfs over a dir."""

    target: Path

    def describe(self) -> str:
        return f"mask {self.target}"

    def execute(self) -> None:
        if os.path.isdir(self.target):
            mount("tmpfs", self.target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
        elif os.path.exists(self.target):
            mount("/dev/null", self.target, None, MS_BIND)


@dataclass(frozen=True)
class ReadOnlyPath:
    target: Path

    def describe(self) -> str:
        return f"make {self.target} read-only"

    def execute(self) -> None:
        if os.path.exists(self.target):
            mount(self.target, self.target, None, MS_BIND | MS_REC)
            _remount_read_only(self.target)


@dataclass(frozen=True)
class MountSys:
    """Read-only /sys: a fresh sysfs, or a bind of the host's where the kernel refuses it
    (sysfs in a user namespace needs that namespace to own the network namespace)."""

    target: Path

    def describe(self) -> str:
        return f"mount sysfs on {self.target} read-only (or bind /sys where refused)"

    def execute(self) -> None:
        _ensure(self.target, "dir")
        try:
            mount("sysfs", self.target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except PermissionError:
            MountBind(Path("/sys"), self.target, read_only=True).execute()


@dataclass(frozen=True)
class Symlink:
    target: str
    path: Path

    def describe(self) -> str:
        return f"symlink {self.path} -> {self.target}"

    def execute(self) -> None:
        os.symlink(self.target, self.path)


@dataclass(frozen=True)
class PivotRoot:
    """Make `root` "/" and detach the host's tree. Where pivot_root cannot work (the
    host root is the initramfs rootfs, EINVAL) fall back to switch_root's way: move the
    mount onto "/" and chroot; the old tree stays hidden below it."""

    root: Path

    def describe(self) -> str:
        return f"pivot_root into {self.root}, detach the old root"

    def execute(self) -> None:
        os.chdir(self.root)
        try:
            pivot_root(".", ".")  # old root ends up stacked on ".": detach it
            umount2(".", MNT_DETACH)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            mount(".", "/", None, MS_MOVE)
            os.chroot(".")
        os.chdir("/")


@dataclass(frozen=True)
class SetHostname:
    name: str

    def describe(self) -> str:
        return f"set hostname {self.name!r}"

    def execute(self) -> None:
        sethostname(self.name)


@dataclass(frozen=True)
class LoopbackUp:
    """`ip link set lo up` as one SIOCSIFFLAGS ioctl: no binary, no pyroute2 import."""

    def describe(self) -> str:
        return "bring lo up in the new network namespace"

    def execute(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
            flags = struct.unpack("16sH14x", req)[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


# --- planning (parent side, no side effects) -----------------------------------------------

_FRESH = ("/proc", "/dev", "/sys", "/tmp", "/run")  # get a new mount every run


@dataclass
class _Plan:
    root: Path
    steps: list[SetupOp]
    placeholders: list[tuple[Path, str]]  # (host path, "dir" | "file") to create, in order
    fresh: list[str]  # in-image paths that get a new mount: what is below them is not on disk

    def at(self, inner_path: str, kind: str = "dir") -> Path:
        """The host path of a mount point; plan a placeholder if it is missing on disk."""
        inner = in_image(self.root, inner_path)
        if inner == "/":
            raise BuildError(f"RUN: cannot mount over the image's root ({inner_path})")
        if not any(inner == f or inner.startswith(f + "/") for f in self.fresh):
            parts = inner.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                p = self.root.joinpath(*parts[:i])
                if not os.path.lexists(p) and all(p != q for q, _ in self.placeholders):
                    self.placeholders.append((p, kind if i == len(parts) else "dir"))
        return self.root / inner.lstrip("/")


def plan_setup(spec: SandboxSpec, root: Path, rootless: bool, scratch: Path | None = None) -> _Plan:
    """`scratch`: an empty dir beside the rootfs, for the overlay's empty lower and work
    dirs when the spec has no lower layers."""
    plan = _Plan(root, [MakePrivate(), root_step(spec, root, rootless, scratch)], [], [])
    proc, dev, sys_, tmp, run = (plan.at(p) for p in _FRESH)
    plan.fresh.extend(in_image(root, p) for p in _FRESH)
    kernel_fs = (plan.fresh[0], plan.fresh[2])  # /proc and /sys: no binds inside them
    pts_gid = "" if rootless else ",gid=5"  # gid 5 (tty) is not mapped in a user namespace
    size = f"size={spec.tmpfs_size}"
    def under(mount_point: Path, fresh: str, paths: tuple[str, ...]) -> list[Path]:  # /proc/x -> proc/x
        return [mount_point / p.removeprefix(fresh + "/") for p in paths if p.startswith(fresh + "/")]
    plan.steps += [
        MountFs("proc", proc, MS_NOSUID | MS_NODEV | MS_NOEXEC),
        *map(MaskPath, under(proc, "/proc", hardening.MASKED_PATHS)),
        *map(ReadOnlyPath, under(proc, "/proc", hardening.READ_ONLY_PATHS)),
        MountFs("tmpfs", dev, MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=1m"),
        *(MountBind(Path("/dev", n), dev / n, recursive=False)
          for n in ("null", "zero", "full", "random", "urandom", "tty")),
        *(Symlink(t, dev / n) for n, t in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                           ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))),
        MountFs("devpts", dev / "pts", MS_NOSUID | MS_NOEXEC, f"newinstance,ptmxmode=0666,mode=620{pts_gid}"),
        Symlink("pts/ptmx", dev / "ptmx"),
        MountFs("tmpfs", dev / "shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,{size}"),
        MountSys(sys_),
        *map(MaskPath, under(sys_, "/sys", hardening.MASKED_PATHS)),
        MountFs("tmpfs", tmp, MS_NOSUID | MS_NODEV, f"mode=1777,{size}"),
        MountFs("tmpfs", run, MS_NOSUID | MS_NODEV, f"mode=755,{size}"),
    ]
    if spec.network == "host":
        for source, inner in ((spec.resolv_conf or Path("/etc/resolv.conf"), "/etc/resolv.conf"),
                              (Path("/etc/hosts"), "/etc/hosts")):
            if source.exists():
                plan.steps.append(MountBind(source, plan.at(inner, "file"), read_only=True))
    for b in spec.binds:
        inner = in_image(root, b.target) if b.target.startswith("/") else ""
        if not inner or any(inner == k or inner.startswith(k + "/") for k in kernel_fs):
            raise BuildError(f"RUN: bad mount target {b.target!r} (need an absolute path outside /proc and /sys)")
        if not b.source.exists():
            raise BuildError(f"RUN: mount source {b.source}: No such file or directory")
        kind = "dir" if b.source.is_dir() else "file"
        plan.steps.append(MountBind(b.source.resolve(), plan.at(b.target, kind), read_only=b.read_only))
        plan.fresh.append(inner)
    plan.steps.append(PivotRoot(root))
    plan.steps.append(SetHostname(spec.hostname))
    if spec.network == "none":
        plan.steps.append(LoopbackUp())
    return plan


def release_overlay_work(work: Path) -> None:
    """overlayfs leaves work/work at mode 0 (let its owner, rootless: the user, remove it)
    and, after a volatile mount, work/work/incompat/volatile/, on which it refuses to mount
    again: remove that."""
    incompat = work / "work/incompat"
    for d in (work / "work", incompat, incompat / "volatile") if os.geteuid() != 0 else ():  # root needs no x bit
        try:
            os.chmod(d, 0o700)
        except OSError:
            return
    for p in (incompat / "volatile/dirty", incompat / "volatile", incompat):
        try:
            os.unlink(p) if p.name == "dirty" else os.rmdir(p)
        except OSError:
            pass


def root_step(spec: SandboxSpec, root: Path, rootless: bool, scratch: Path | None) -> MountRoot:
    """The overlay that becomes "/": the spec's lower layers (DEPENDENCY) below the rootfs,
    or an empty dir from `scratch`; nodev, and nosuid unless setuid is allowed."""
    flags = MS_NODEV | (0 if spec.allow_setuid else MS_NOSUID)
    if spec.upper is not None:  # never a bind: the rootfs must not be written
        if spec.overlay_work is None:
            raise BuildError("RUN: a separate upper dir needs an overlay work dir")
        lower = (root, *(Path(p).resolve() for p in spec.lower_layers))
        overlay = MountOverlay(lower, Path(spec.upper).resolve(), Path(spec.overlay_work).resolve(), overlay_userxattr(),
                               flags, root)
        return MountRoot(root, flags, overlay, may_bind=False)
    if spec.lower_layers:
        if spec.overlay_work is None:
            raise BuildError("RUN: lower layers need an overlay work dir")
        lower, work = tuple(Path(p).resolve() for p in spec.lower_layers), Path(spec.overlay_work).resolve()
    elif scratch is not None:
        lower, work = (scratch / "lower",), scratch / "root-work"
    else:
        return MountRoot(root, flags, None, may_bind=True)
    return MountRoot(root, flags, MountOverlay(lower, root, work, overlay_userxattr(), flags),
                     may_bind=not spec.lower_layers)


def make_scratch(root: Path) -> Path | None:
    """Empty lower and work dirs for the overlay, on the rootfs's filesystem (removed by
    remove_scratch; one run at a time uses a rootfs, so one name per rootfs and process).
    None where the rootfs's parent is not ours to write."""
    scratch = root.parent / f".{root.name}.sandbox-{os.getpid()}"
    try:
        return ensure_scratch(scratch)
    except PermissionError:
        return None


def ensure_scratch(scratch: Path) -> Path:
    for d in (scratch, scratch / "lower", scratch / "root-work"):
        if not d.is_dir():
            d.mkdir(mode=0o700)
    return scratch


def remove_scratch(scratch: Path) -> None:
    for d in (scratch / "root-work/work", scratch / "root-work/index", scratch / "root-work", scratch / "lower", scratch):
        try:
            os.rmdir(d)
        except OSError:  # never made, or not ours to remove: the caller's dir goes with it
            pass


# --- running ---------------------------------------------------------------------------------

Stream = Union[int, IO, None]


def _debug(on: bool, text: str) -> None:
    if on:
        os.write(2, f"sandbox: {text}\n".encode())


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


def _exec_command(spec: SandboxSpec, ids: tuple[int, int, tuple[int, ...]] | None,
                  stdio: tuple[Stream, Stream, Stream], errfd: int) -> None:
    """PID 2: become the command (never returns)."""
    what = "set up the command"
    try:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_DFL)  # Python ignores SIGPIPE/SIGXFSZ; the command must not
        for n, fd in enumerate(_stream_fds(stdio)):
            if fd is not None and fd != n:
                os.dup2(fd, n)  # the copy is inheritable
            else:
                os.set_inheritable(n, True)
        what = "harden"  # errfd (close-on-exec) stays open to report a failed exec
        hardening.close_inherited({0, 1, 2, errfd})
        hardening.drop_capabilities()
        root_user = ids is None or ids[0] == 0
        hardening.lock_down(hardening.syscall_filter(), no_new_privileges=root_user or not spec.allow_setuid)
        if ids is not None:  # root: really switch; rootless: only 0 is mapped, nothing to do
            uid, gid, groups = ids
            what = f"set user {uid}:{gid}"
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
        os.umask(0o022)  # as in a container: the caller's umask must not shape the image
        what = f"chdir {spec.cwd}"
        os.chdir(spec.cwd)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        what = f"exec {spec.argv[0]}"
        os.execvpe(spec.argv[0], list(spec.argv), env)
    except BaseException as e:
        _report_and_exit(errfd, f"{what}: {getattr(e, 'strerror', None) or e}")


def _init(spec: SandboxSpec, steps: list[SetupOp], ids, stdio, errfd: int, debug: bool) -> None:
    """PID 1 of the new PID namespace: set up, start the command, reap, relay (never returns)."""
    forward = _Forward()
    _on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT), forward)
    step: SetupOp | None = None
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_NAME, INIT_NAME)
        for step in steps:
            _debug(debug, step.describe())
            step.execute()
        step = None
        hardening.make_undumpable()
        cmd = os.fork()
        if cmd == 0:
            _exec_command(spec, ids, stdio, errfd)
        forward.started(cmd)
        os.close(errfd)
        while True:  # reap everything; the command's end is the sandbox's end
            pid, status = os.waitpid(-1, 0)
            if pid == cmd:
                os._exit(_exit_code(status))
    except BaseException as e:
        what = step.describe() if step is not None else "start the command"
        _report_and_exit(errfd, f"{what}: {getattr(e, 'strerror', None) or e}")


def _helper(spec: SandboxSpec, plan: _Plan, ids, stdio, errfd: int, debug: bool,
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


def _make_placeholders(plan: _Plan, debug: bool) -> list[tuple[Path, str]]:
    made: list[tuple[Path, str]] = []
    try:
        for path, kind in plan.placeholders:
            _debug(debug, f"create mount point {path} for this run ({kind})")
            _ensure(path, kind)
            made.append((path, kind))
    except OSError as e:
        _remove_placeholders(made, debug)
        raise BuildError(f"RUN: create mount point {e.filename}: {e.strerror}") from e
    return made


def _remove_placeholders(made: list[tuple[Path, str]], debug: bool) -> None:
    """Remove what we created, deepest first; keep anything the command put there."""
    for path, kind in reversed(made):
        try:
            if kind == "dir":
                os.rmdir(path)
            elif path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
                path.unlink()
            else:
                continue
            _debug(debug, f"removed mount point {path}")
        except OSError:
            pass  # not empty: the command wrote there, so it belongs to the image now


def _resolve_ids(spec: SandboxSpec, root: Path, rootless: bool):
    try:
        uid, _ = resolve_user(root, spec.user)
        gid = resolve_group(root, spec.group)
    except BuildError as e:
        raise BuildError(f"RUN: {e}") from e
    groups = tuple(sorted(set(spec.supplementary_gids)))
    try:  # the one rule for which ids a rootless build has (acbuild.userns)
        check_process_ids((uid, gid, *groups), f"RUN: cannot run as {spec.user or 0}:{spec.group or 0}")
    except OwnerError as e:
        raise BuildError(e.message) from None
    return None if rootless else (uid, gid, groups)


def run_sandboxed(spec: SandboxSpec, *, stdin: Stream = None, stdout: Stream = None,
                  stderr: Stream = None, debug: bool = False) -> int:
    """Run `spec` in a fresh sandbox; return its exit status (128+N when killed by N).

    Set-up or exec failures raise BuildError("RUN: <reason>"); SIGINT/SIGTERM received
    while waiting kill the whole sandbox and are re-raised as KeyboardInterrupt after
    clean-up. Not re-entrant per rootfs: one run at a time may use a given rootfs.
    """
    if not spec.argv:
        raise BuildError("RUN: empty command")
    if spec.network not in ("none", "host"):
        raise BuildError(f"RUN: unknown network mode {spec.network!r} (use none or host)")
    root = Path(spec.rootfs).resolve()
    if not root.is_dir():
        raise BuildError(f"RUN: rootfs {root} is not a directory")
    rootless = os.geteuid() != 0
    # users and groups come from the image's /etc/passwd, which may be in a lower layer
    layers = [r for r in (root, *map(Path, spec.lower_layers)) if os.path.lexists(r / "etc/passwd")]
    ids = _resolve_ids(spec, layers[0] if layers else root, rootless)
    hardening.prepare()  # the filter compiled here, once: the child only loads it
    made_scratch = not spec.lower_layers and spec.scratch is None and spec.upper is None
    scratch = make_scratch(root) if made_scratch else spec.scratch and ensure_scratch(Path(spec.scratch))
    try:
        try:
            plan = plan_setup(spec, root, rootless, scratch)
        except OSError as e:  # a symlink loop on the way to a mount point
            raise BuildError(f"RUN: resolve {e.filename} in the image: {e.strerror}") from e
        made = _make_placeholders(plan, debug)
        try:
            return _fork_and_wait(spec, plan, ids, (stdin, stdout, stderr), debug, rootless)
        finally:
            _remove_placeholders(made, debug)
    finally:
        if scratch is not None:
            release_overlay_work(scratch / "root-work")
        if made_scratch and scratch is not None:
            remove_scratch(scratch)
        if spec.overlay_work is not None:
            release_overlay_work(Path(spec.overlay_work))


def _fork_and_wait(spec, plan, ids, stdio, debug, rootless) -> int:
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
