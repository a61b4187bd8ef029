"""Paths inside a rootfs, resolved as a chroot would: symlinks are followed
within the rootfs, and `..` or an absolute link target never leads out of it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_MAX_LINKS = 40


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """Host path for `path` (absolute inside root), following symlinks inside root.

    Missing components are fine (they are returned as plain joins), so this also
    serves for paths about to be created. With follow_last=False a final symlink
    is returned itself, not its target."""

    def entry(done: list[str], part: str):
        candidate = root.joinpath(*done, part)
        try:
            return os.lstat(candidate), candidate
        except FileNotFoundError:
            return None, candidate

    return root.joinpath(*walk_path(path, entry, follow_last=follow_last))


def walk_path(path: str, entry, *, follow_last: bool = True, error=None) -> list[str]:
    """The components `path` resolves to as a chroot resolves it: `..` stops at the
    root, a symlink's target is followed from its directory (an absolute one from
    the root). `entry(done, part)` gives (lstat or None, host path to readlink) for
    `part` below the components `done`; it may create what it looks at. Raises
    `error` (default OSError ELOOP) after 40 links."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        st, host = entry(resolved, part)
        if st is not None and stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise error or OSError(40, "Too many levels of symbolic links", path)
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return resolved
