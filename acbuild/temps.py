"""Temp files and dirs that a later run can prove dead, and remove.

A SIGKILL leaves whatever was half-written. Each temp this module makes holds an flock for
as long as its maker lives (on the file itself, or on DIR/.lock), and the kernel drops the
lock when the maker dies, however it dies. So a temp whose lock can be taken has no
living writer: `remove_stale_*` takes it and removes the temp. No pid files (pids are
reused), no age guesses (a slow build is not a dead one).

Names: `.NAME.XXXXXXXX.tmp` beside the file NAME it becomes; PREFIX-XXXXXXXX dirs in the
temp dir. Only temps owned by the caller's euid are touched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild.files import remove_tree

LOCK = ".lock"


def _free(fd: int) -> bool:
    """Take the lock on `fd` if nobody holds it (then it stays ours until fd closes)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def locked_temp_file(final: Path) -> tuple[int, Path]:
    """A new temp file beside `final` (fd open for writing, flock held); stale temps of
    `final` left by dead writers go first."""
    remove_stale_files(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, Path(name)


def locked_temp_copy(source: Path, final: Path, *, link: bool) -> tuple[int, Path]:
    """`source`'s bytes in a temp beside `final`, as locked_temp_file: a hard link to it
    (`link`: made under a name no scan matches, locked, then renamed) or a copy."""
    if not link:
        fd, tmp = locked_temp_file(final)
        try:
            with open(source, "rb") as src:
                size, done = os.fstat(src.fileno()).st_size, 0
                while done < size:
                    done += os.sendfile(fd, src.fileno(), done, size - done)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return fd, tmp
    remove_stale_files(final)
    base = final.parent / f".{final.name}.{os.urandom(4).hex()}"
    staging, tmp = base.with_name(base.name + ".new"), base.with_name(base.name + ".tmp")
    os.link(source, staging)
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, tmp)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return fd, tmp


def remove_stale_files(final: Path) -> list[Path]:
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    prefix = f".{final.name}."
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid == os.geteuid() and _free(fd):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def locked_temp_dir(prefix: str) -> tuple[Path, int]:
    """A new 0700 dir PREFIX-XXXXXXXX in the temp dir, with its lock fd (close it after
    removing the dir); stale PREFIX dirs of dead runs go first."""
    remove_stale_dirs(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # locked before it is named LOCK: a scanner never finds it free while we live
    fd = os.open(path / (LOCK + ".new"), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(path / (LOCK + ".new"), path / LOCK)
    return path, fd


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """locked_temp_dir for a `with` block: removed at its end, whatever happens (RUN may
    leave 0555 dirs: remove_tree copes)."""
    path, lock = locked_temp_dir(prefix)
    try:
        yield path
    finally:
        remove_locked_dir(path, lock)


def remove_locked_dir(path: Path, lock: int) -> None:
    """Remove a locked_temp_dir and close its lock: the lock file goes last, so a run
    killed while removing (a rootfs takes a while) leaves a dir the next run knows is
    dead, never one without a lock."""
    try:
        with os.scandir(path) as it:
            entries = [e.path for e in it if e.name != LOCK]
        for entry in entries:
            remove_tree(Path(entry))
        os.unlink(path / LOCK)
        os.rmdir(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(lock)


def _open_lock(path: str) -> int:
    """The dir's lock file, or the one its maker had not yet renamed (killed between)."""
    for name in (LOCK, LOCK + ".new"):
        try:
            return os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(path)


def remove_stale_dirs(prefix: str) -> list[Path]:
    """Remove PREFIX* dirs in the temp dir whose lock is free. A dir without a lock file is
    left alone: it may be a run that has just made it (or an older acbuild's)."""
    removed = []
    top = Path(tempfile.gettempdir())
    try:
        entries = [e for e in os.scandir(top) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            fd = _open_lock(entry.path)
        except OSError:
            continue
        try:
            if _free(fd):
                remove_tree(Path(entry.path))
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed
