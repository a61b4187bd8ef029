"""Files that appear whole or not at all: temp file beside the target, fsync,
rename, fsync of the directory. Raises OSError; callers wrap it in their own
error with context (`raise ImageError(f"write {path}: {e.strerror}") from e`).
The temp file is removed on any exception, Ctrl-C included."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_beside(final: Path, data: bytes, mode: int = 0o644) -> Path:
    """`data` in a fsynced temp file in final's directory (for a later rename)."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically."""
    path = Path(path)
    tmp = temp_beside(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
