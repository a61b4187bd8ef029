"""The step cache: a snapshot of the work dir after each step, by step key (engine.stepkeys).

Layout under CACHE (cache_root(), --cache-dir or $ACBUILD_CACHE_DIR):

    lock                          flock: shared while a build runs, exclusive for prune
    steps/KEY/manifest            the image manifest after the step
    steps/KEY/tree.json           the work dir (rootfs/, deps...) after the step, as data:
                                  every entry's path, type, mode, owner, mtime, link target
    steps/KEY/files/N             its regular files, hard links numbered as tree.json says
    steps/KEY/meta.json           written last: the completeness marker
    images/KEY-COMPRESSION.aci    the written image of a final step, and .json beside it

Directories and symlinks are data in tree.json, not recreated on disk, because creating
them is the slow part of a snapshot (a symlink or mkdir costs 10-15 times a hard link
here, and busybox alone brings 400 symlinks): storing after a step is one walk, one
JSON file and a link per regular file; restoring rebuilds the tree. A step that only
changes the manifest (LABEL, ENV...) stores no tree; its meta names the entry whose
tree it shares ("tree"). meta.json holds the sha256 of tree.json, and every linked file
must still have the size, mode, owner and mtime tree.json recorded, so a damaged
snapshot is found by stat alone and never used.

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
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from acbuild import placeholders
from acbuild.atomic import write_atomic
from acbuild.dirs import private_dir
from acbuild.files import flock, link_or_copy, lstat_tree, remove_tree, walk

SCRATCH = {"ovl-work", "ovl-probe", "out-stage", "manifest"}  # never part of a snapshot
_VERSION = 2  # 2: snapshots as tree.json + files/
FORMAT_VERSION = _VERSION  # what meta.json's "version" says (engine.cache.share checks imports)


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

    def locked(self, exclusive: bool = False):
        """Shared while a build runs, exclusive for prune."""
        return flock(self.root / "lock", exclusive)

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
            _materialize(self.steps / tree["key"], workdir, tree)
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
        private_dir(self.root)  # cached rootfs trees: setuid binaries and all
        self.steps.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.steps))
        try:
            (tmp / "manifest").write_bytes(manifest)
            meta = {"version": _VERSION, "key": key, "created": time.time(), "tree": tree or key,
                    "manifest": hashlib.sha256(manifest).hexdigest(), "size": len(manifest), "files": 0}
            if tree is None:
                listing, meta["files"], new_bytes = _snapshot(workdir, tmp)
                meta["listing"] = listing
                meta["size"] += new_bytes
            # No fsync: the entry appears by the rename of its directory, and a restore
            # checks everything against meta.json, so a torn entry is found, not used.
            (tmp / "meta.json").write_bytes(json.dumps(meta, sort_keys=True).encode())
            return self._install(tmp, self.steps / key, replace)
        except OSError:
            _rmtree(tmp)
            return False

    def install(self, tmp: Path, key: str) -> bool:
        """Rename a complete entry made in `tmp` (a directory under steps/) into place
        as `key`; False when the key exists already (tmp is then removed)."""
        return self._install(tmp, self.steps / key, False)

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
        from acbuild.aci.writer import encoder

        base = self.images / f"{key}-{encoder(compression)}"  # the deflate engine too: its bytes differ
        return base.with_suffix(".aci"), base.with_suffix(".json")

    def _images_locked(self, exclusive: bool):
        """The image and its .json change together under this lock."""
        return flock(self.images / ".lock", exclusive)

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


# -- snapshots ---------------------------------------------------------------------
# A tree.json record: [path, type, mode, uid, gid, mtime_ns, size, extra, rdev, xattrs]
# with type one of d (directory), f (regular file), l (symlink), c/b/p (devices, fifo);
# extra is the file number under files/ (f) or the link target (l); xattrs (directories
# only: overlayfs opaque markers) is a list of [name, hex value]. Parents come first.

_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}


def _snapshot(workdir: Path, entry: Path) -> tuple[str, int, int]:
    """Record workdir in entry (tree.json + files/). Returns (sha256 of tree.json,
    entries, bytes of files not already shared with another snapshot)."""
    files_dir = entry / "files"
    files_dir.mkdir()
    records: list[list] = []
    numbers: dict[tuple[int, int], int] = {}  # (dev, ino) -> file number: hard links stay one inode
    new_bytes = 0

    def record(path: str, rel: str, st: os.stat_result) -> None:
        nonlocal new_bytes
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return  # sockets are never part of an image
        extra: int | str = ""
        if kind == "f":
            inode = (st.st_dev, st.st_ino)
            if inode not in numbers:
                numbers[inode] = len(numbers)
                os.link(path, files_dir / str(numbers[inode]))
                if st.st_nlink == 1:
                    new_bytes += st.st_size
            extra = numbers[inode]
        elif kind == "l":
            extra = os.readlink(path)
        xattrs = _xattrs(path) if kind == "d" else []
        size = st.st_size if kind == "f" else 0
        records.append([rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, size, extra, st.st_rdev, xattrs])

    record(os.fspath(workdir), "", os.lstat(workdir))
    # Depth first, names sorted, on an explicit stack (no recursion limit on depth).
    for path, rel, st, _ in walk(os.fspath(workdir), prune=lambda rel, _st: rel in SCRATCH):
        record(path, "/" + rel, st)
    data = json.dumps(records, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    (entry / "tree.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest(), len(records) - 1, new_bytes


def _materialize(entry: Path, workdir: Path, meta: dict) -> None:
    """Rebuild the work dir recorded in entry at workdir (which must not exist).
    Raises Damaged when tree.json or a linked file is not what meta recorded."""
    data = (entry / "tree.json").read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["listing"]:
        raise Damaged(meta["key"])
    records = json.loads(data.decode("utf-8", "surrogateescape"))
    if len(records) - 1 != meta["files"]:
        raise Damaged(meta["key"])
    directories = []
    for rel, kind, mode, uid, gid, mtime_ns, size, extra, rdev, xattrs in records:
        target = os.fspath(workdir) + rel
        owner_mode_time = (uid, gid, mode, mtime_ns)
        if kind == "d":
            os.mkdir(target)
            for name, value in xattrs:
                os.setxattr(target, name, bytes.fromhex(value), follow_symlinks=False)
            directories.append((target, owner_mode_time))
        elif kind == "f":
            source = entry / "files" / str(extra)
            got = os.lstat(source)
            if (got.st_size, stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid, got.st_mtime_ns) != (size, mode, uid, gid, mtime_ns):
                raise Damaged(meta["key"])
            os.link(source, target)
        elif kind == "l":
            os.symlink(extra, target)
            _set_meta(target, *owner_mode_time, symlink=True)
        else:
            if not placeholders.make_node(target, mode | _TYPE[kind], rdev):
                raise Damaged(meta["key"])  # cannot be restored here
            _set_meta(target, *owner_mode_time)
    for target, owner_mode_time in reversed(directories):  # children first: creating them moved the mtimes
        _set_meta(target, *owner_mode_time)


_TYPE = {kind: fmt for fmt, kind in _KINDS.items()}


def _xattrs(path: str) -> list[list[str]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return sorted([name, os.getxattr(path, name, follow_symlinks=False).hex()] for name in names)


def _set_meta(path: str, uid: int, gid: int, mode: int, mtime_ns: int, *, symlink: bool = False) -> None:
    if os.geteuid() == 0 or uid != os.geteuid() or gid != os.getegid():
        os.chown(path, uid, gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, stat.S_IMODE(mode))
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


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

    for path, st in lstat_tree(os.fspath(rootfs)):
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, [st]).append(path)
    copied = 0
    dir_times: dict[str, int] = {}  # the directories touched keep their mtimes: the tree must not change
    for st, *paths in groups.values():
        if len(paths) >= st.st_nlink:
            continue  # hard links among the rootfs's own files only
        for path in paths:
            parent = os.path.dirname(path)
            dir_times.setdefault(parent, os.lstat(parent).st_mtime_ns)
        first = paths[0]
        tmp = first + ".acbuild-unshare"
        shutil.copyfile(first, tmp, follow_symlinks=False)
        _copy_xattrs(first, tmp)
        _set_meta(tmp, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)
        os.replace(tmp, first)
        for other in paths[1:]:
            os.link(first, other + ".acbuild-unshare")
            os.replace(other + ".acbuild-unshare", other)
        copied += 1
    for parent, mtime_ns in dir_times.items():
        os.utime(parent, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return copied


def _image_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True).encode())


def _rmtree(path: Path) -> None:
    if os.path.lexists(path):
        remove_tree(path)
