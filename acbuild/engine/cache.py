"""The step cache: a snapshot of the work dir after each step, by step key (engine.stepkeys).

Layout under CACHE (cache_root(), --cache-dir or $ACBUILD_CACHE_DIR):

    lock                          flock: shared while a build runs, exclusive for prune
    steps/KEY/manifest            the image manifest after the step
    steps/KEY/state/              the work dir (rootfs/, deps...) after the step: regular
                                  files are hard links, everything else is recreated
    steps/KEY/meta.json           written last: the completeness marker
    images/KEY-COMPRESSION.aci    the written image of a final step, and .json beside it

A step that only changes the manifest (LABEL, ENV...) stores no state/; its meta names
the entry whose state/ it shares ("tree"). meta.json holds a listing digest of
(path, type, mode, uid, gid, size, mtime, link target) over state/, checked while
restoring, so a damaged snapshot is found by stat alone and never used.

Contract: entries are built in a temp dir and renamed into place (atomic; when another
build got there first, ours is dropped); a damaged entry is moved aside and deleted,
and the step runs again. Snapshots share inodes with work dirs: whoever writes into a
restored or stored work dir must break the sharing first (COPY always makes new files;
build.py calls `unshare_files` before a RUN). The cached image is trusted when its
(size, mtime_ns, inode) are those recorded; ctime is not used, since linking the image
to an output changes it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCRATCH = {"ovl-work", "ovl-probe", "out-stage", "manifest"}  # never part of a snapshot
_VERSION = 1


class Damaged(Exception):
    """A cache entry is incomplete or does not match its listing."""


@dataclass(frozen=True)
class EntryInfo:
    key: str
    kind: str  # "tree" or "manifest"
    size: int
    files: int
    created: float
    last_used: float


class StepCache:
    def __init__(self, root: Path):
        self.root = root
        self.steps = root / "steps"
        self.images = root / "images"

    # -- locking ------------------------------------------------------------------

    @contextmanager
    def locked(self, exclusive: bool = False) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- lookup and restore ----------------------------------------------------------

    def meta(self, key: str) -> dict | None:
        try:
            data = json.loads((self.steps / key / "meta.json").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != _VERSION or data.get("key") != key:
            return None
        return data

    def has(self, key: str) -> bool:
        data = self.meta(key)
        return data is not None and (data["tree"] == key or self.meta(data["tree"]) is not None)

    def restore(self, key: str, workdir: Path) -> bytes:
        """Recreate the work dir of entry `key` in `workdir` (which must not exist);
        returns the manifest bytes. Raises Damaged (after discarding the entry and
        removing `workdir`) when the entry is incomplete or does not match its listing."""
        data = self.meta(key)
        try:
            if data is None:
                raise Damaged(key)
            tree = self.meta(data["tree"]) if data["tree"] != key else data
            if tree is None:
                raise Damaged(data["tree"])
            manifest = (self.steps / key / "manifest").read_bytes()
            if hashlib.sha256(manifest).hexdigest() != data["manifest"]:
                raise Damaged(key)
            listing = hashlib.sha256()
            files = _clone(self.steps / tree["key"] / "state", workdir, listing)
            if listing.hexdigest() != tree["listing"] or files != tree["files"]:
                raise Damaged(tree["key"])
        except (Damaged, OSError, KeyError, TypeError) as err:
            _rmtree(workdir)
            bad = err.args[0] if isinstance(err, Damaged) else key
            self.discard(bad)
            raise Damaged(bad) from err
        (workdir / "manifest").write_bytes(manifest)
        self.touch(key)
        return manifest

    def touch(self, key: str) -> None:
        """Record a use (the entry directory's mtime; `prune` drops the least recent)."""
        try:
            os.utime(self.steps / key)
        except OSError:
            pass

    # -- storing ---------------------------------------------------------------------

    def store(self, key: str, workdir: Path, manifest: bytes, tree: str | None, *, replace: bool = False) -> bool:
        """Save the work dir after a step as entry `key`. `tree` names an existing entry
        whose state/ is identical (a manifest-only step), or None to snapshot workdir.
        Returns False when the entry could not be made (the build goes on)."""
        self.steps.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.steps))
        try:
            (tmp / "manifest").write_bytes(manifest)
            meta = {"version": _VERSION, "key": key, "created": time.time(), "tree": tree or key,
                    "manifest": hashlib.sha256(manifest).hexdigest(), "size": len(manifest), "files": 0}
            if tree is None:
                listing = hashlib.sha256()
                counter = [0]
                meta["files"] = _clone(workdir, tmp / "state", listing, link_from_source=True, new_bytes=counter)
                meta["listing"] = listing.hexdigest()
                meta["size"] += counter[0]
            _write_json(tmp / "meta.json", meta)
            return self._install(tmp, self.steps / key, replace)
        except OSError:
            _rmtree(tmp)
            return False

    def _install(self, tmp: Path, final: Path, replace: bool) -> bool:
        if replace and final.exists():
            self._trash(final)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _rmtree(tmp)  # another build stored the same key first: keep theirs
            return False
        return True

    def discard(self, key: str) -> None:
        if key and os.path.lexists(self.steps / key):
            self._trash(self.steps / key)

    def _trash(self, path: Path) -> None:
        """Move aside atomically (a concurrent reader sees the entry or nothing), then delete."""
        aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, aside)
        except OSError:
            return
        _rmtree(aside)

    # -- final images ---------------------------------------------------------------

    def _image_paths(self, key: str, compression: str) -> tuple[Path, Path]:
        base = self.images / f"{key}-{compression}"
        return base.with_suffix(".aci"), base.with_suffix(".json")

    @contextmanager
    def _images_locked(self, exclusive: bool) -> Iterator[None]:
        """The image and its .json change together under this lock."""
        self.images.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.images / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def image(self, key: str, compression: str) -> tuple[Path, str, dict] | None:
        """(cached .aci, image ID, {name, labels}) when present and unchanged since stored."""
        aci, info = self._image_paths(key, compression)
        if not info.exists():
            return None
        with self._images_locked(exclusive=False):
            try:
                data = json.loads(info.read_bytes())
                st = os.stat(aci)
            except (OSError, ValueError):
                return None
        if not isinstance(data, dict) or "about" not in data or "image_id" not in data:
            return None
        if [st.st_size, st.st_mtime_ns, st.st_ino] != data.get("stat"):
            return None  # altered since: the build writes (and stores) it again
        return aci, data["image_id"], data["about"]

    def store_image(self, key: str, compression: str, written: Path, image_id: str, about: dict) -> None:
        """Keep the written image (a hard link, else a copy) for the next unchanged build."""
        aci, info = self._image_paths(key, compression)
        tmp = self.images / f".new-{os.getpid()}-{time.monotonic_ns()}.aci"
        try:
            with self._images_locked(exclusive=True):
                link_or_copy(written, tmp)
                os.replace(tmp, aci)
                st = os.stat(aci)
                _write_json(info, {"image_id": image_id, "about": about, "stat": [st.st_size, st.st_mtime_ns, st.st_ino]})
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def drop_image(self, key: str, compression: str) -> None:
        for path in self._image_paths(key, compression):
            path.unlink(missing_ok=True)

    # -- listing and pruning -----------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        out = []
        try:
            names = os.listdir(self.steps)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith("."):
                continue
            data = self.meta(name)
            try:
                used = os.stat(self.steps / name).st_mtime
            except OSError:
                continue
            if data is None:
                out.append(EntryInfo(name, "damaged", 0, 0, used, used))
                continue
            size = data["size"] + sum(_image_size(p) for p in self.images.glob(f"{name}-*.aci"))
            kind = "tree" if data["tree"] == name else "manifest"
            out.append(EntryInfo(name, kind, size, data["files"], data["created"], used))
        return sorted(out, key=lambda e: e.last_used)

    def prune(self, keep_bytes: int | None) -> tuple[int, int]:
        """Remove least recently used entries until the rest fit in keep_bytes (None or
        0: remove all). Caller holds the exclusive lock. Returns (entries, bytes) removed."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed = freed = 0
        for entry in entries:  # oldest use first
            if keep_bytes and total <= keep_bytes and entry.kind != "damaged":
                break
            self.discard(entry.key)
            for aci in self.images.glob(f"{entry.key}-*.aci"):
                aci.unlink(missing_ok=True)
                aci.with_suffix(".json").unlink(missing_ok=True)
            total -= entry.size
            removed += 1
            freed += entry.size
        for leftover in (self.steps.glob(".*") if self.steps.exists() else ()):  # interrupted builds
            _rmtree(leftover)
        return removed, freed


# -- tree cloning ---------------------------------------------------------------------


def _clone(src: Path, dst: Path, listing, *, link_from_source: bool = False, new_bytes: list | None = None) -> int:
    """Recreate src at dst: regular files hard-linked, directories, symlinks and special
    files recreated with owner, mode, mtime (and directory xattrs, for overlayfs opaque
    markers). Feeds the listing digest; returns the number of entries. At the top level
    the work dir's scratch entries are skipped."""
    count = 0

    def walk(s: str, d: str, rel: str, top: bool) -> None:
        nonlocal count
        os.mkdir(d)
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if top and e.name in SCRATCH:
                continue
            st = e.stat(follow_symlinks=False)
            name = f"{rel}/{e.name}"
            target = os.path.join(d, e.name)
            kind = stat.S_IFMT(st.st_mode)
            link = ""
            count += 1
            if kind == stat.S_IFDIR:
                walk(e.path, target, name, False)
            elif kind == stat.S_IFREG:
                if new_bytes is not None and st.st_nlink == 1:
                    new_bytes[0] += st.st_size
                os.link(e.path, target)
            elif kind == stat.S_IFLNK:
                link = os.readlink(e.path)
                os.symlink(link, target)
                _set_meta(target, st, symlink=True)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                os.mknod(target, st.st_mode, st.st_rdev)
                _set_meta(target, st)
            else:
                count -= 1
                continue  # sockets are never part of an image
            listing.update(f"{name}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size if kind == stat.S_IFREG else 0}"
                           f"\0{st.st_mtime_ns if kind != stat.S_IFDIR else 0}\0{link}\0{st.st_rdev}\n"
                           .encode("utf-8", "surrogateescape"))
        st = os.lstat(s)
        _copy_xattrs(s, d)
        _set_meta(d, st)
        listing.update(f"{rel}/\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    walk(os.fspath(src), os.fspath(dst), "", True)
    return count


def _set_meta(path: str, st: os.stat_result, *, symlink: bool = False) -> None:
    if os.geteuid() == 0 or st.st_uid != os.geteuid() or st.st_gid != os.getegid():
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)


def unshare_files(rootfs: Path) -> int:
    """Give every regular file that shares its inode with something outside `rootfs`
    (a cache snapshot) a private copy, keeping hard links inside rootfs together.
    Needed before a RUN, which may write into any file. Returns the files copied."""
    groups: dict[int, list] = {}

    def walk(d: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    walk(e.path)
                elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    groups.setdefault(st.st_ino, [st]).append(e.path)

    walk(os.fspath(rootfs))
    copied = 0
    for st, *paths in groups.values():
        if len(paths) >= st.st_nlink:
            continue  # hard links among the rootfs's own files only
        first = paths[0]
        tmp = first + ".acbuild-unshare"
        shutil.copyfile(first, tmp, follow_symlinks=False)
        _copy_xattrs(first, tmp)
        _set_meta(tmp, st)
        os.replace(tmp, first)
        for other in paths[1:]:
            os.link(first, other + ".acbuild-unshare")
            os.replace(other + ".acbuild-unshare", other)
        copied += 1
    return copied


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(src, dst)


def _image_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _write_json(path: Path, data: dict) -> None:
    from acbuild.atomic import write_atomic

    write_atomic(path, json.dumps(data, sort_keys=True).encode())


def _rmtree(path: Path) -> None:
    from acbuild.engine.build import remove_tree

    if os.path.lexists(path):
        remove_tree(path)
