"""Device nodes on a disk that cannot hold them.

In a user namespace mknod of a device fails, so a device node of an image is kept
as an empty regular file with the node's mode, owner and mtime, carrying the xattr
user.acbuild.device = b"c 1 3 MAC" (type, major, minor, and an HMAC of those under
a key only this user's acbuild reads: $XDG_CACHE_HOME/acbuild/placeholder.key,
never inside a sandbox). The xattr lives on the inode: it travels with hard links
and overlay copy-up, and is gone when a RUN removes or replaces the file. The
writer (acbuild.aci.writer) emits a placeholder as the device it stands for; the
step cache records it as that device; files.copy_tree copies the mark.

Anyone who can write a file can set a user xattr, so a mark without the right MAC
(a RUN step forging /dev/sda, a host tree carrying one) is not a placeholder: it
is written as the empty file it is, as root would see it. Replaying a real mark
onto another file only repeats a device the image already has.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from acbuild.dirs import cache_root, private_dir

XATTR = "user.acbuild.device"
KEY_FILE = "placeholder.key"
_KINDS = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
MAX_MAJOR, MAX_MINOR = 0xFFF, 0xFFFFF  # what Linux's dev_t holds


def _key_path() -> Path:
    return cache_root() / KEY_FILE


_known_key: bytes | None = None


def _key(create: bool) -> bytes | None:
    """The user's key; made on first use (a link, so racing makers agree on one)."""
    global _known_key
    if _known_key is None:
        _known_key = _read_or_make_key(create)
    return _known_key


def _read_or_make_key(create: bool) -> bytes | None:
    path = _key_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    private_dir(path.parent)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another acbuild made it first: use that one
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def _mac(key: bytes, text: str) -> str:
    import hashlib  # here, not at the top: every command imports this module, few make a mark
    import hmac

    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def make_node(name: str, mode: int, rdev: int, *, dir_fd: int | None = None) -> bool:
    """mknod, or where that is not allowed for a device, its placeholder. Returns
    False when neither can be made (the file system keeps no user xattrs)."""
    try:
        os.mknod(name, mode, rdev, dir_fd=dir_fd)
        return True
    except PermissionError:
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise
    text = f"{'c' if stat.S_ISCHR(mode) else 'b'} {os.major(rdev)} {os.minor(rdev)}"
    mark = f"{text} {_mac(_key(create=True), text)}".encode()  # type: ignore[arg-type]
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.setxattr(fd, XATTR, mark)
    except OSError as e:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    os.close(fd)
    return True


def device_of(path: str, st: os.stat_result) -> tuple[int, int] | None:
    """(S_IFCHR or S_IFBLK, rdev) when `path` with lstat `st` is a placeholder this
    user's acbuild made, else None. Only empty regular files can be one."""
    if st.st_size or not stat.S_ISREG(st.st_mode):
        return None
    try:
        value = os.getxattr(path, XATTR, follow_symlinks=False).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    fields = value.split(" ")
    key = _key(create=False)
    if len(fields) != 4 or key is None or fields[0] not in _KINDS:
        return None
    text = " ".join(fields[:3])
    import hmac

    if not hmac.compare_digest(fields[3], _mac(key, text)):
        return None
    try:
        major, minor = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if not (0 <= major <= MAX_MAJOR and 0 <= minor <= MAX_MINOR):
        return None
    return _KINDS[fields[0]], os.makedev(major, minor)


def copy_mark(source: str, target: str, st: os.stat_result) -> None:
    """Give the copy `target` of the regular file `source` (lstat `st`) its mark, if it
    is a placeholder's: only an empty file can be one."""
    if st.st_size:
        return
    try:
        value = os.getxattr(source, XATTR, follow_symlinks=False)
    except OSError:
        return
    os.setxattr(target, XATTR, value, follow_symlinks=False)
