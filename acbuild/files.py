"""File-tree utilities every layer may use: walking and removing a tree whatever
its depth and whatever modes a build left in it, linking a file where possible
(copying where not), copying a tree as a root `cp -a` would, special files
included, and an flock held for a with-block (the step cache and the image store)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild import placeholders
from acbuild.errors import NotFoundError, UsageError


def remove_tree_at(parent_fd: int, name: str) -> None:
    """Remove the directory `name` in `parent_fd` and everything below it: no
    recursion (no depth limit), names relative to one directory fd that moves
    down and back up with ".." (no PATH_MAX, one descriptor), never following a
    symlink. Directories that RUN or overlayfs left unwritable or unreadable
    (0555, 0000) are opened up first. Best effort, as rmtree with an error
    handler: what cannot be removed (a busy mount point) stays, the rest goes."""
    try:
        fd = _open_writable(parent_fd, name)
    except OSError:
        return
    frames = [(name, _clear(fd))]  # (directory name, its subdirectories still to remove)
    try:
        while frames:
            pending = frames[-1][1]
            if pending:
                child = pending.pop()
                try:
                    below = _open_writable(fd, child)
                except OSError:
                    continue
                os.close(fd)
                fd = below
                frames.append((child, _clear(fd)))
                continue
            done = frames.pop()[0]
            if frames:
                up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = up
                _ignore_errors(os.rmdir, done, dir_fd=fd)
            else:
                os.close(fd)
                fd = -1
                _ignore_errors(os.rmdir, done, dir_fd=parent_fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _ignore_errors(func, *args, **kwargs) -> None:
    try:
        func(*args, **kwargs)
    except OSError:
        pass


def _open_writable(parent_fd: int, name: str) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except PermissionError:
        os.chmod(name, stat.S_IRWXU, dir_fd=parent_fd, follow_symlinks=False)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        _ignore_errors(os.fchmod, fd, mode | stat.S_IRWXU)
    return fd


def _clear(fd: int) -> list[str]:
    """Unlink every non-directory in `fd`; the names of its subdirectories."""
    subdirs = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                else:
                    _ignore_errors(os.unlink, entry.name, dir_fd=fd)
    except OSError:
        pass
    return subdirs


def remove_tree(path: Path | str | None) -> None:
    """Remove `path` (a directory tree, a file or nothing) whatever its depth or
    the modes a build left in it; best effort, as remove_tree_at."""
    if path is None:
        return
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _ignore_errors(os.unlink, path)
        return
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree_at(pfd, name)
    finally:
        os.close(pfd)


def trash(path: Path) -> None:
    """Move `path` aside atomically (a concurrent reader sees it whole or not at all),
    then remove it."""
    aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, aside)
    except OSError:
        return
    remove_tree(aside)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link from `dst` to `src`; a copy where links cannot cross (another
    filesystem, a link count at its limit, or a filesystem that refuses links)."""
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(src, dst)


def walk(top: str, *, sort_key=None, prune=None, post_order: bool = False):
    """Every entry below the directory `top`, depth first, each directory's
    entries sorted by `sort_key(DirEntry)` (default: the name): yields
    (path, rel, lstat, leaving) where rel is "/"-joined below top and leaving is
    True for the second visit of a directory (only with post_order). An explicit
    stack, not recursion: a context or rootfs thousands of levels deep is fine.
    `prune(rel, lstat)` -> True leaves an entry (and what is below it) out."""
    key = sort_key or (lambda e: e.name)

    def children(path: str, rel: str):
        with os.scandir(path) as it:
            entries = sorted(it, key=key)
        prefix = rel + "/" if rel else ""
        return iter([(e.path, prefix + e.name, e) for e in entries])

    stack = [(None, children(top, ""))]
    while stack:
        leaving, it = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            if post_order and leaving is not None:
                yield (*leaving, True)
            continue
        path, rel, entry = item
        st = entry.stat(follow_symlinks=False)
        if prune is not None and prune(rel, st):
            continue
        yield path, rel, st, False
        if stat.S_ISDIR(st.st_mode):
            stack.append(((path, rel, st), children(path, rel)))


def tree_bytes(top: str | os.PathLike) -> int:
    """The bytes of the regular files below `top`, each inode once: the total that
    a progress meter's ETA needs (an lstat per entry; only computed for a terminal
    or JSON, never for plain output)."""
    total, linked = 0, set()
    for _path, _rel, st, _ in walk(os.fspath(top)):
        if not stat.S_ISREG(st.st_mode):
            continue
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in linked:
                continue
            linked.add((st.st_dev, st.st_ino))
        total += st.st_size
    return total


def read_user_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named (a config, a passphrase file): a
    missing one is NotFoundError, an unreadable or undecodable one a UsageError,
    each naming `what` and the path."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise NotFoundError(f"{what} {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"read {what} {path}: {e}") from e


def copy_tree(src: Path, dest: Path, *, owner: Callable[[str, os.stat_result], tuple[int, int] | None],
              skip: Callable[[Path], bool] = lambda _path: False) -> list[str]:
    """`cp -a src dest` (dest must not exist): modes, times, hard links and the
    owners `owner(path, lstat)` gives (None: leave the copier's). Device nodes and fifos are recreated as what they are and
    never opened (reading /dev/full never ends), device nodes as placeholders where
    mknod is not allowed (acbuild.placeholders); sockets cannot be copied and are
    left out, and so are devices on a file system without user xattrs. Returns those
    left out, as paths relative to src. `skip(path)` prunes entries of src. Walks
    on an explicit stack: any depth."""
    left_out: list[str] = []
    links: dict[tuple[int, int], str] = {}

    def meta(path: str, st: os.stat_result, source: str, *, symlink: bool = False) -> None:
        ids = owner(source, st)
        if ids is not None:
            os.chown(path, *ids, follow_symlinks=False)
        if not symlink:
            os.chmod(path, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    top = os.fspath(src)
    os.mkdir(dest, 0o700)
    dirs = [(os.fspath(dest), os.stat(src), top)]
    for source, rel, st, _ in walk(top, prune=lambda rel, _st: skip(Path(top, rel))):
        target, mode = os.path.join(dest, rel), st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(target, 0o700)
            dirs.append((target, st, source))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), target)
            meta(target, st, source, symlink=True)
        elif stat.S_ISSOCK(mode):
            left_out.append(rel)
        elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            os.link(links[st.st_dev, st.st_ino], target)
        else:
            if stat.S_ISREG(mode):
                shutil.copyfile(source, target, follow_symlinks=False)
                placeholders.copy_mark(source, target, st)
            elif not placeholders.make_node(target, stat.S_IFMT(mode) | 0o600, st.st_rdev):
                left_out.append(rel)  # a device node, fifo: made, not read
                continue
            meta(target, st, source)
            if st.st_nlink > 1:
                links[st.st_dev, st.st_ino] = target
    for target, st, source in reversed(dirs):  # children first: filling a directory moved its mtime
        meta(target, st, source)
    return left_out


def lstat_tree(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of every entry below `root`, depth first, never following a symlink."""
    for path, _rel, st, _leaving in walk(root):
        yield path, st


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


@contextmanager
def flock(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold flock on `path` (created, with its directory) for the with-block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
