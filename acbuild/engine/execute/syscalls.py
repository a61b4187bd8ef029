"""The Linux calls the sandbox needs that `os` lacks: one-line ctypes wrappers that raise
OSError with the errno, and their constants. Import-light: it runs in the forked child."""

from __future__ import annotations

import ctypes
import errno
import os

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 2, 2, 0o2000000
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, path: object = None) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), None if path is None else str(path))


def _b(s: object) -> bytes | None:
    return None if s is None else os.fsencode(str(s))


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def socket_fd(family: int, kind: int) -> int:
    """A socket as a bare fd (close-on-exec), for an ioctl: the socket module's import
    (its enums) costs an interactive RUN 10 ms."""
    fd = _libc.socket(ctypes.c_int(family), ctypes.c_int(kind | SOCK_CLOEXEC), ctypes.c_int(0))
    _check(fd)
    return fd


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
