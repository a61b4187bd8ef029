"""The sandbox's set-up steps: small objects that can say what they do (`--debug` prints
the list) and then do it, in init, inside the new mount namespace. Import-light: they run
in the forked child."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Protocol

from acbuild.engine.execute.syscalls import (
    AF_INET, IFF_UP, MNT_DETACH, MS_BIND, MS_MOVE, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
    MS_PRIVATE, MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, SIOCGIFFLAGS, SIOCSIFFLAGS, SOCK_DGRAM, mount,
    pivot_root, sethostname, socket_fd, umount2)
from acbuild.records import dataclass

# Flags a remount inside a user namespace must keep (the kernel locks them): statvfs
# ST_* bit -> mount MS_* bit.
_LOCKED = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
           os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}


def trace(on: bool, text: str) -> None:
    if on:
        os.write(2, f"sandbox: {text}\n".encode())


class SetupOp(Protocol):
    def describe(self) -> str: ...
    def execute(self) -> None: ...


def ensure_mount_point(path: Path, kind: str) -> None:
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
    """Make every mount private, so nothing mounted here reaches the host."""

    def describe(self) -> str:
        return "make all mounts private (nothing propagates back to the host)"

    def execute(self) -> None:
        mount(None, "/", None, MS_REC | MS_PRIVATE)


@dataclass(frozen=True)
class MountBind:
    """Bind a host path onto a path of the root."""

    source: Path
    target: Path
    read_only: bool = False
    recursive: bool = True

    def describe(self) -> str:
        return f"bind {self.source} on {self.target}" + (" read-only" if self.read_only else "")

    def execute(self) -> None:
        ensure_mount_point(self.target, "dir" if os.path.isdir(self.source) else "file")
        mount(self.source, self.target, None, MS_BIND | (MS_REC if self.recursive else 0))
        if self.read_only:
            _remount_read_only(self.target)


@dataclass(frozen=True)
class MountFs:
    """Mount a kernel filesystem (proc, tmpfs, devpts, mqueue, ...)."""

    fstype: str
    target: Path
    flags: int = MS_NOSUID | MS_NODEV
    data: str = ""

    def describe(self) -> str:
        ro = " read-only" if self.flags & MS_RDONLY else ""
        return f"mount {self.fstype} on {self.target}" + (f" ({self.data})" if self.data else "") + ro

    def execute(self) -> None:
        ensure_mount_point(self.target, "dir")
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
    bind_mount_points: tuple[Path, ...] = ()  # mount points the overlay's lower dir provides

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
        for point in self.bind_mount_points:  # the parent removes them after the run
            ensure_mount_point(point, "dir")
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
    """Make a path of the root read-only, where it exists."""

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
        ensure_mount_point(self.target, "dir")
        try:
            mount("sysfs", self.target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except PermissionError:
            MountBind(Path("/sys"), self.target, read_only=True).execute()


@dataclass(frozen=True)
class Symlink:
    """Make a symlink in the root (/dev/fd, /dev/stdin, ...)."""

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
    """Set the UTS namespace's host name."""

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
        fd = socket_fd(AF_INET, SOCK_DGRAM)
        try:
            req = fcntl.ioctl(fd, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
            flags = struct.unpack("16sH14x", req)[1]
            fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
        finally:
            os.close(fd)
