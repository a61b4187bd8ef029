"""RUN as a snapshot: the rootfs is the read-only lower layer of an overlay, the command
writes into a fresh, empty upper dir, and afterwards the upper dir is folded into the
rootfs by renames. A RUN then costs what it changes: the rootfs's files are never written
in place, so they may stay hard links shared with the step cache (no private copies
before a RUN), and the changed paths are the step's layer, all the cache stores.

Folding follows overlayfs's rules: a whiteout (char device 0:0, or an empty file with an
*.overlay.whiteout xattr) deletes the path, an opaque dir replaces the rootfs's dir whole,
any other dir merges, anything else replaces. With DEPENDENCY in overlay mode the
whiteouts and opaque markers are kept in the rootfs, where they hide the dependencies'
files (engine.deps.overlay); without it they are dropped. overlayfs's other bookkeeping
xattrs (origin, impure...) are removed: they must reach neither the cache nor a later
step. Where overlayfs cannot be mounted (engine.deps.overlay.overlay_works), RUN writes
into the rootfs as before, after `unshare_files` gave it private copies.

COPY, ADD and WORKDIR write into the rootfs directly (always new files, never into a
shared inode); their layer is what changed at and below their destination
(`recording_under`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild.engine.deps.overlay import is_opaque, is_whiteout
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.files import remove_tree, walk
from acbuild.records import dataclass, field

UPPER = "layer"  # the upper dir, in the work dir beside rootfs/ (never part of a snapshot)
_MARKERS = ("overlay.opaque", "overlay.whiteout")


@dataclass
class Layer:
    """What one step changed in the rootfs: "/a/b" paths, "" for the root itself."""

    changed: set[str] = field(default_factory=set)  # written: their state now is the layer
    deleted: set[str] = field(default_factory=set)  # gone before anything of `changed` was made

    def ordered(self) -> tuple[list[str], list[str]]:
        """(deleted, changed), parents before children."""
        def key(path: str) -> str:
            # The order of path.split("/") lists, as one string: "\0" sorts before any
            # character a name can hold (100,000 lists of parts cost ~30 MiB).
            return path.replace("/", "\0")
        return sorted(self.deleted, key=key), sorted(self.changed, key=key)


@contextmanager
def recording_under(rootfs: Path, image_path: str) -> Iterator[Layer]:
    """For a step that writes only at and below one image path (COPY, ADD, WORKDIR): the
    yielded layer is filled, when the block ends, with the difference of that path's
    subtree before and after it (each entry's type, mode, owner, size, mtime, inode and
    link target), plus the dirs on the way there. Costs a walk of that subtree only."""
    resolved = [resolve_in_root(rootfs, image_path, follow_last=last) for last in (True, False)]
    root = os.fspath(rootfs)
    rels = ["/" + os.path.relpath(p, root) if p != rootfs else "" for p in resolved]
    before = dict(_each_state(root, rels))
    layer = Layer()
    yield layer
    # Compared as the walk goes (no second table of the whole subtree): what is left
    # of `before` then is what was deleted.
    layer.changed = {path for path, state in _each_state(root, rels) if before.pop(path, None) != state}
    layer.deleted = set(before)
    for rel in rels:
        parts = rel.split("/")
        layer.changed.update("/".join(parts[:n]) for n in range(1, len(parts)) if os.path.lexists(root + "/".join(parts[:n])))
    layer.changed.add("")


def _each_state(root: str, rels: list[str]):
    """(path, state) of rels[0] and its subtree and of the other (single) rels, each path once."""
    singles: set[str] = set()
    for rel in rels[1:]:
        st = _lstat(root + rel)
        if st is not None and rel not in singles:
            singles.add(rel)
            yield rel, _state(root + rel, st)
    top = rels[0]
    st = _lstat(root + top)
    if st is None:
        return
    if top not in singles:
        yield top, _state(root + top, st)
    if stat.S_ISDIR(st.st_mode):
        for path, child, cst, _ in walk(root + top):
            rel = f"{top}/{child}"
            if rel not in singles:
                yield rel, _state(path, cst)


def _state(path: str, st: os.stat_result) -> tuple:
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, target


def new_upper(rootfs: Path, upper: Path | None = None) -> Path:
    """An empty upper dir (default: beside `rootfs`) whose root has the rootfs root's
    owner, mode and mtime: overlayfs shows the upper root's attributes as "/"."""
    upper = upper or rootfs.parent / UPPER
    remove_tree(upper)  # a killed step's
    upper.mkdir(mode=0o700)
    st = os.lstat(rootfs)
    _copy_meta(st, os.fspath(upper))
    return upper


def discard_upper(upper: Path) -> None:
    remove_tree(upper)


def fold(upper: Path, rootfs: Path, *, keep_markers: bool, also_changed: tuple[str, ...] = ()) -> Layer:
    """Move `upper`'s entries into `rootfs` (overlayfs's rules, see the module doc) and
    remove `upper`. `also_changed`: rootfs paths the step touched outside the upper dir
    (the parents of mount points the sandbox made for it). Returns the layer."""
    layer = Layer()
    top, root = os.fspath(upper), os.fspath(rootfs)
    merged: list[tuple[str, str, os.stat_result]] = []  # rootfs dirs that took the upper dir's children
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(top + rel) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = f"{rel}/{name}"
            source, target = top + path, root + path
            st = os.lstat(source)
            have = _lstat(target)
            if is_whiteout(source, st):
                if have is not None:
                    _remove(target, have)
                    layer.deleted.add(path)
                if keep_markers:
                    os.rename(source, target)
                    layer.changed.add(path)
                continue
            if stat.S_ISDIR(st.st_mode) and have is not None and stat.S_ISDIR(have.st_mode) and not is_opaque(source):
                _strip_xattrs(source, keep_markers)
                merged.append((source, target, st))
                layer.changed.add(path)
                pending.append(path)
                continue
            if have is not None:
                _remove(target, have)
                layer.deleted.add(path)
            _strip_tree(source, st, keep_markers, layer.changed, path)
            os.rename(source, target)
    for source, target, st in reversed(merged):  # children first: the renames moved their mtimes
        _copy_meta(st, target)
        _copy_xattrs(source, target)
    _copy_meta(os.lstat(top), root)
    layer.changed.add("")
    for path in also_changed:
        if os.path.lexists(root + path):
            layer.changed.add(path)
    remove_tree(upper)
    return layer


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)


def _strip_tree(path: str, st: os.stat_result, keep_markers: bool, changed: set[str], rel: str) -> None:
    """Strip the overlay xattrs of `path` and everything below it; note each as changed."""
    _strip_xattrs(path, keep_markers)
    changed.add(rel)
    if not stat.S_ISDIR(st.st_mode):
        return
    pending = [(path, rel)]
    while pending:
        d, drel = pending.pop()
        with os.scandir(d) as it:
            for e in it:
                _strip_xattrs(e.path, keep_markers)
                changed.add(f"{drel}/{e.name}")
                if e.is_dir(follow_symlinks=False):
                    pending.append((e.path, f"{drel}/{e.name}"))


def _overlay_xattrs(path: str) -> list[str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return [n for n in names if n.startswith(("trusted.overlay.", "user.overlay."))]


def _strip_xattrs(path: str, keep_markers: bool) -> None:
    for name in _overlay_xattrs(path):
        if keep_markers and name.endswith(_MARKERS):
            continue
        try:
            os.removexattr(path, name, follow_symlinks=False)
        except OSError:
            pass


def _copy_xattrs(source: str, target: str) -> None:
    """A merged dir keeps what the upper dir says of markers (a kept opaque marker)."""
    for name in os.listxattr(source, follow_symlinks=False):
        try:
            os.setxattr(target, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass


def _copy_meta(st: os.stat_result, target: str) -> None:
    have = os.lstat(target)
    if (have.st_uid, have.st_gid) != (st.st_uid, st.st_gid):
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    if stat.S_IMODE(have.st_mode) != stat.S_IMODE(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
