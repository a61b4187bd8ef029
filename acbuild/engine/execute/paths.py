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
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(40, "Too many levels of symbolic links", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
