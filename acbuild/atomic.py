"""Files that appear whole or not at all: temp file beside the target, fsync,
rename, fsync of the directory. Raises OSError; callers wrap it in their own
error with context (`raise ImageError(f"write {path}: {e.strerror}") from e`).
The temp file is removed on any exception, Ctrl-C included, and holds an flock
until it is renamed (acbuild.temps), so one left by a SIGKILL is removed later."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild.temps import locked_temp_file


@contextmanager
def temp_beside(final: Path, data: bytes, mode: int = 0o644) -> Iterator[Path]:
    """`data` in a fsynced temp file in final's directory, to rename inside the block;
    locked while the block runs, and removed at its end if it is still there."""
    fd, tmp = locked_temp_file(Path(final))
    try:
        with os.fdopen(os.dup(fd), "wb") as f:  # the dup shares the lock; fd keeps it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.fchmod(fd, mode)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically."""
    path = Path(path)
    with temp_beside(path, data, mode) as tmp:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
