"""File-tree utilities every layer may use: removing a tree whatever modes a
build left in it, linking a file where possible (copying where not), and copying
a tree as a root `cp -a` would, special files included."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def remove_tree(path: Path | None) -> None:
    """rmtree that also removes what RUN or overlayfs left unwritable or unreadable
    (chmod 0555 dirs, overlayfs work dirs of mode 000)."""
    if path is None:
        return

    def make_writable_and_retry(func, failed, _exc):
        try:
            parent = os.path.dirname(failed)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
                shutil.rmtree(failed, onerror=make_writable_and_retry)
            else:
                func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link from `dst` to `src`; a copy where links cannot cross (another
    filesystem, a link count at its limit, or a filesystem that refuses links)."""
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(src, dst)


def copy_tree(src: Path, dest: Path, *, owners: bool, skip: Callable[[Path], bool] = lambda _path: False) -> list[str]:
    """`cp -a src dest` (dest must not exist): modes, times, hard links and, when
    `owners`, owners kept. Device nodes and fifos are recreated as what they are and
    never opened (reading /dev/full never ends); sockets cannot be copied and are
    left out, and so are device nodes that cannot be made (not root). Returns those
    left out, as paths relative to src. `skip(path)` prunes entries of src."""
    left_out: list[str] = []
    links: dict[tuple[int, int], str] = {}

    def meta(path: str, st: os.stat_result, *, symlink: bool = False) -> None:
        if owners:
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not symlink:
            os.chmod(path, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy(source: str, target: str, rel: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            with os.scandir(source) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if not skip(Path(entry.path)):
                    copy(entry.path, os.path.join(target, entry.name), os.path.join(rel, entry.name),
                         entry.stat(follow_symlinks=False))
            meta(target, st)  # after the children, which changed its mtime
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), target)
            meta(target, st, symlink=True)
        elif stat.S_ISSOCK(mode):
            left_out.append(rel)
        elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            os.link(links[st.st_dev, st.st_ino], target)
        else:
            if stat.S_ISREG(mode):
                shutil.copyfile(source, target, follow_symlinks=False)
            else:  # character or block device, fifo: made, not read
                try:
                    os.mknod(target, stat.S_IFMT(mode) | 0o600, st.st_rdev)
                except PermissionError:
                    left_out.append(rel)
                    return
            meta(target, st)
            if st.st_nlink > 1:
                links[st.st_dev, st.st_ino] = target

    copy(os.fspath(src), os.fspath(dest), ".", os.stat(src))
    return [os.path.normpath(rel) for rel in left_out]


def lstat_tree(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of every entry below `root`, depth first, never following a symlink."""
    with os.scandir(root) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            yield entry.path, st
            if stat.S_ISDIR(st.st_mode):
                yield from lstat_tree(entry.path)


_CLOCK_REALTIME_COARSE = 5  # Linux's clock for file times (Python's time module does not name it)


def file_clock_ns() -> int:
    """Now, by the clock the kernel stamps file times with: anything written after
    this call has an mtime at or after it (time.time_ns() may be ahead of it)."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def stamp_written_since(root: Path, since_ns: int, mtime: int) -> None:
    """Give every entry under `root` (itself included) whose mtime is `since_ns` or
    later the mtime `mtime`, never following symlinks: what a step wrote carries
    SOURCE_DATE_EPOCH even when that lies ahead of the wall clock, where clamping
    (min(mtime, epoch)) would keep the time of the build."""
    for path, st in lstat_tree(os.fspath(root)):
        if st.st_mtime_ns >= since_ns:  # a child's utime leaves its directory's mtime alone
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    if os.lstat(root).st_mtime_ns >= since_ns:
        os.utime(root, (mtime, mtime), follow_symlinks=False)
