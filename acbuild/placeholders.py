"""Device nodes on a disk that cannot hold them.

In a user namespace mknod of a device fails, so a device node of an image is kept
as an empty regular file with the node's mode, owner and mtime, carrying the xattr
user.acbuild.device = b"c 1 3" (type, major, minor). The xattr lives on the inode:
it travels with hard links, the step cache's snapshots (hard links) and overlay
copy-up, and is gone when a RUN removes or replaces the file. The writer
(acbuild.aci.writer) emits such a file as the device it stands for, and
files.copy_tree copies the mark; nothing else needs to know.
"""

from __future__ import annotations

import os
import stat

XATTR = "user.acbuild.device"
_KINDS = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}


def make_node(name: str, mode: int, rdev: int, *, dir_fd: int | None = None) -> bool:
    """mknod, or where that is not allowed for a device, its placeholder. Returns
    False when neither can be made (the file system keeps no user xattrs)."""
    try:
        os.mknod(name, mode, rdev, dir_fd=dir_fd)
        return True
    except PermissionError:
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise
    kind = "c" if stat.S_ISCHR(mode) else "b"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.setxattr(fd, XATTR, f"{kind} {os.major(rdev)} {os.minor(rdev)}".encode())
    except OSError:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        return False
    os.close(fd)
    return True


def device_of(path: str | int, st: os.stat_result) -> tuple[int, int] | None:
    """(S_IFCHR or S_IFBLK, rdev) when `path` (a name or an fd) with lstat `st` is a
    placeholder, else None. Only empty regular files can be one."""
    if st.st_size or not stat.S_ISREG(st.st_mode):
        return None
    try:
        value = os.getxattr(path, XATTR, follow_symlinks=False) if isinstance(path, str) else os.getxattr(path, XATTR)
    except OSError:
        return None
    try:
        kind, major, minor = value.decode().split()
        return _KINDS[kind], os.makedev(int(major), int(minor))
    except (ValueError, KeyError):
        return None


def copy_mark(source: str, target: str) -> None:
    """Give the copy `target` of the empty regular file `source` its mark, if it has one."""
    try:
        value = os.getxattr(source, XATTR, follow_symlinks=False)
    except OSError:
        return
    os.setxattr(target, XATTR, value, follow_symlinks=False)
