"""File-tree utilities every layer may use: removing a tree whatever modes a
build left in it, and linking a file where possible (copying where not)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
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
