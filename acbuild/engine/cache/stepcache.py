"""The step cache: a snapshot of the work dir after each step, by step key (engine.stepkeys).

Layout under CACHE (cache_root(), --cache-dir or $ACBUILD_CACHE_DIR):

    lock                          flock: shared while a build runs, exclusive for prune
    steps/KEY/manifest            the image manifest after the step
    steps/KEY/tree.json           the work dir (rootfs/, deps...) after the step, as data:
                                  every entry's path, type, mode, owner, mtime, link target;
                                  for a layer only what the step changed, deletions first
    steps/KEY/files/N             its regular files, hard links numbered as tree.json says
    steps/KEY/meta.json           written last: the completeness marker; a layer's meta names
                                  its "parent" entry and its "depth"
    images/KEY-COMPRESSION.aci    the written image of a final step, and .json beside it

Directories and symlinks are data in tree.json, not recreated on disk, because creating
them is the slow part of a snapshot (a symlink or mkdir costs 10-15 times a hard link
here, and busybox alone brings 400 symlinks): storing after a step is one walk, one
JSON file and a link per regular file; restoring rebuilds the tree. A step that only
changes the manifest (LABEL, ENV...) stores no tree; its meta names the entry whose
tree it shares ("tree"). A step that knows what it changed (engine.execute.layer: a RUN's
overlay upper dir, a COPY's destination) stores a layer on the entry before it; a restore
rebuilds the full snapshot at the bottom of the chain and replays the layers, and after
LAYER_DEPTH_LIMIT layers the next result is stored whole. meta.json holds the sha256 of
tree.json, and every linked file must still have the size, mode, owner and mtime
tree.json recorded, so a damaged snapshot is found by stat alone and never used; a
layer whose chain is broken is unusable (`has` is False) and listed as damaged.

Contract: entries are built in a temp dir and renamed into place (atomic; when another
build got there first, ours is dropped); a damaged entry is moved aside and deleted,
and the step runs again. Snapshots share inodes with work dirs: whoever writes into a
restored or stored work dir must break the sharing first (COPY always makes new files;
a RUN writes into an overlay upper dir, or, without overlayfs, calls `unshare_files`
first: Session.shares_inodes says when it must). The cached image is trusted when its
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
from pathlib import Path

from acbuild import placeholders
from acbuild.atomic import write_atomic
from acbuild.dirs import private_dir
from acbuild.files import flock, link_or_copy, lstat_tree, remove_tree, trash, walk
from acbuild.records import dataclass

SCRATCH = {"ovl-work", "ovl-probe", "out-stage", "manifest", "layer"}  # never part of a snapshot
_VERSION = 3  # 2: snapshots as tree.json + files/; 3: layers on a parent entry
# A chain is a full snapshot and at most this many layers on it; the next step's result is
# stored whole (squashed), so a restore never replays a long history.
LAYER_DEPTH_LIMIT = 16
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
        return self.chain(key) is not None

    def chain(self, key: str) -> list[dict] | None:
        """The metas entry `key` needs, in restore order: the full snapshot, then each
        layer on it, up to the entry holding key's tree; then key's own meta when it only
        shares that tree. None when any of them is missing or damaged."""
        data = self.meta(key)
        if data is None:
            return None
        tree = data if data["tree"] == key else self.meta(data["tree"])
        out = [data] if tree is not data else []
        for _ in range(LAYER_DEPTH_LIMIT + 1):
            if tree is None:
                return None
            out.append(tree)
            if not tree.get("parent"):
                return out[::-1]
            tree = self.meta(tree["parent"])
        return None  # deeper than any chain this cache makes

    def restore(self, key: str, workdir: Path) -> bytes:
        """Recreate the work dir of entry `key` in `workdir` (which must not exist);
        returns the manifest bytes. Raises Damaged (after discarding the entry and
        removing `workdir`) when the entry is incomplete or does not match its listing."""
        data = self.meta(key)
        try:
            chain = self.chain(key)
            if data is None or chain is None:
                raise Damaged(key)
            manifest = (self.steps / key / "manifest").read_bytes()
            if hashlib.sha256(manifest).hexdigest() != data["manifest"]:
                raise Damaged(key)
            for tree in chain:
                if tree["tree"] != tree["key"]:
                    continue  # key's own meta, sharing the tree before it
                _materialize(self.steps / tree["key"], workdir, tree, layer=bool(tree.get("parent")))
        except (Damaged, OSError, KeyError, TypeError) as err:
            _rmtree(workdir)
            bad = err.args[0] if isinstance(err, Damaged) else key
            self.discard(bad)
            raise Damaged(bad) from err
        (workdir / "manifest").write_bytes(manifest)
        for used in chain:  # the layers below are as recently used as the entry: prune keeps chains whole
            self.touch(used["key"])
        return manifest

    def touch(self, key: str) -> None:
        """Record a use (the entry directory's mtime; `prune` drops the least recent)."""
        try:
            os.utime(self.steps / key)
        except OSError:
            pass

    # -- storing ---------------------------------------------------------------------

    def store(self, key: str, workdir: Path, manifest: bytes, tree: str | None, *, replace: bool = False,
              layer=None, parent: str | None = None) -> bool:
        """Save the work dir after a step as entry `key`. `tree` names an existing entry
        whose state/ is identical (a manifest-only step), or None to snapshot workdir:
        as a layer on entry `parent` when `layer` (engine.execute.layer.Layer) says what
        the step changed since then and the chain is not too deep (LAYER_DEPTH_LIMIT),
        else whole. Returns False when the entry could not be made (the build goes on)."""
        private_dir(self.root)  # cached rootfs trees: setuid binaries and all
        self.steps.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.steps))
        try:
            (tmp / "manifest").write_bytes(manifest)
            meta = {"version": _VERSION, "key": key, "created": time.time(), "tree": tree or key,
                    "manifest": hashlib.sha256(manifest).hexdigest(), "size": len(manifest), "files": 0}
            below = self.chain(parent) if layer is not None and parent else None
            depth = len([m for m in below if m["tree"] == m["key"]]) if below else 0
            if tree is None and below is not None and depth <= LAYER_DEPTH_LIMIT:
                meta["parent"], meta["depth"] = parent, depth
                meta["listing"], meta["files"], new_bytes = _snapshot_layer(workdir, tmp, layer)
                meta["size"] += new_bytes
            elif tree is None:
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
            trash(final)
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
            trash(self.steps / key)

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
            if data is None or not self.has(name):  # a layer whose parent is gone is of no use
                out.append(EntryInfo(name, "damaged", 0, 0, used, used))
                continue
            size = data["size"] + sum(_image_size(p) for p in self.images.glob(f"{name}-*.aci"))
            kind = ("layer" if data.get("parent") else "tree") if data["tree"] == name else "manifest"
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
# with type one of d (directory), f (regular file), l (symlink), c/b/p (devices, fifo;
# a device's placeholder, acbuild.placeholders, is recorded as the device);
# extra is the file number under files/ (f) or the link target (l); xattrs (directories
# only: overlayfs opaque markers) is a list of [name, hex value]. Parents come first.

_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}


class _Recorder:
    """Records tree.json rows and links regular files into files/ (hard links stay one inode).
    Rows go to tree.json in chunks as they come, hashed on the way, and only inodes with
    other links are remembered: memory does not grow with the file count (a COPY of
    100,000 files). A context manager: the file is closed on any error."""

    CHUNK = 1024  # rows encoded at once: one json.dumps per chunk, not per row

    def __init__(self, entry: Path):
        self.files_dir = entry / "files"  # made with the first file: a layer often has none
        self.out = open(entry / "tree.json", "wb")
        self.sha = hashlib.sha256()
        self.rows: list[list] = []  # the chunk not yet written
        self.count = 0  # rows recorded
        self.written = 0  # bytes of tree.json
        self.files = 0  # files under files/
        self.numbers: dict[tuple[int, int], int] = {}  # (dev, ino) -> file number, inodes with other links
        self.new_bytes = 0  # bytes of files no other snapshot shares

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.out.close()

    def record(self, path: str, rel: str, st: os.stat_result, *, new: bool = False) -> None:
        """`new`: the file is the step's own (a layer's), whatever its link count."""
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return  # sockets are never part of an image
        extra: int | str = ""
        rdev = st.st_rdev
        device = placeholders.device_of(path, st) if kind == "f" else None
        if device is not None:  # recorded as the device: a blob in a registry carries no xattrs
            kind, rdev = _KINDS[stat.S_IFMT(device[0])], device[1]
        if kind == "f":
            inode = (st.st_dev, st.st_ino)
            # An inode with one link is met once in a walk: only linked ones need remembering.
            number = self.numbers.get(inode) if st.st_nlink > 1 else None
            if number is None:
                if not self.files:
                    self.files_dir.mkdir()
                number = self.files
                self.files += 1
                if st.st_nlink > 1:
                    self.numbers[inode] = number
                os.link(path, self.files_dir / str(number))
                if new or st.st_nlink == 1:
                    self.new_bytes += st.st_size
            extra = number
        elif kind == "l":
            extra = os.readlink(path)
        xattrs = _xattrs(path) if kind == "d" else []
        size = st.st_size if kind == "f" else 0
        self._row([rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, size, extra, rdev, xattrs])

    def deleted(self, rel: str) -> None:
        self._row([rel, "w", 0, 0, 0, 0, 0, "", 0, []])

    def _row(self, row: list) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        """Write the chunk as json.dumps(all rows) would write it: "[", the rows
        joined by ",", "]"."""
        text = json.dumps(self.rows, separators=(",", ":"), ensure_ascii=False)[1:-1]
        data = (("," if self.count else "[") + text).encode("utf-8", "surrogateescape")
        self.count += len(self.rows)
        self.rows = []
        self.out.write(data)
        self.sha.update(data)
        self.written += len(data)

    def finish(self) -> tuple[str, int, int]:
        if self.rows:
            self._flush()
        tail = b"]" if self.count else b"[]"
        self.out.write(tail)
        self.out.close()
        self.sha.update(tail)
        return self.sha.hexdigest(), self.count - 1, self.new_bytes + self.written + len(tail)


def _snapshot(workdir: Path, entry: Path) -> tuple[str, int, int]:
    """Record workdir in entry (tree.json + files/). Returns (sha256 of tree.json,
    entries, bytes of tree.json and of files not already shared with another snapshot)."""
    with _Recorder(entry) as recorder:
        recorder.record(os.fspath(workdir), "", os.lstat(workdir))
        # Depth first, names sorted, on an explicit stack (no recursion limit on depth).
        for path, rel, st, _ in walk(os.fspath(workdir), prune=lambda rel, _st: rel in SCRATCH):
            recorder.record(path, "/" + rel, st)
        return recorder.finish()


def _snapshot_layer(workdir: Path, entry: Path, layer) -> tuple[str, int, int]:
    """Record what `layer` says the step changed in workdir's rootfs: "w" rows for what
    it deleted (first), then the changed entries' current state, parents first. The
    first row is the work dir itself, as in a full snapshot."""
    with _Recorder(entry) as recorder:
        recorder.record(os.fspath(workdir), "", os.lstat(workdir))
        deleted, changed = layer.ordered()
        for rel in deleted:
            recorder.deleted("/rootfs" + rel)
        for rel in changed:
            path = os.fspath(workdir / "rootfs") + rel
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # made and removed again within the step
                continue
            recorder.record(path, "/rootfs" + rel, st, new=True)
        return recorder.finish()


def _materialize(entry: Path, workdir: Path, meta: dict, *, layer: bool = False) -> None:
    """Rebuild the work dir recorded in entry at workdir (which must not exist), or,
    for a `layer`, apply it to the work dir its parent chain rebuilt there. Raises
    Damaged when tree.json or a linked file is not what meta recorded."""
    data = (entry / "tree.json").read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["listing"]:
        raise Damaged(meta["key"])
    records = json.loads(data.decode("utf-8", "surrogateescape"))
    if len(records) - 1 != meta["files"]:
        raise Damaged(meta["key"])
    directories = []
    kept_times: dict[str, int] = {}  # dirs a layer changes below without a row of their own keep their mtime
    rows = {rec[0] for rec in records if rec[1] == "d"}
    made: set[str] = set()  # rows' dirs as made or found here: real directories, never symlinks
    real_top = os.path.realpath(workdir)

    def inside(rel: str) -> bool:
        """A row names a path below the work dir whose parent is a real directory (an
        imported entry must not write or delete through a symlink, or outside)."""
        if rel and (not rel.startswith("/") or any(part in ("", ".", "..") for part in rel[1:].split("/"))):
            return False
        parent = rel.rsplit("/", 1)[0]
        if not rel or parent in made:
            return True
        return layer and os.path.realpath(os.fspath(workdir) + parent) == real_top + parent \
            and os.path.isdir(os.fspath(workdir) + parent)

    def touching(target: str, rel: str) -> None:
        parent = rel.rsplit("/", 1)[0]
        if layer and parent not in rows and parent not in kept_times:
            kept_times[parent] = os.lstat(os.fspath(workdir) + parent).st_mtime_ns

    for rel, kind, mode, uid, gid, mtime_ns, size, extra, rdev, xattrs in records:
        if not inside(rel):
            if kind == "w" and rel.startswith("/") and ".." not in rel.split("/") \
                    and not os.path.lexists(os.fspath(workdir) + rel.rsplit("/", 1)[0]):
                continue  # below a dir an earlier row deleted
            raise Damaged(meta["key"])
        target = os.fspath(workdir) + rel
        owner_mode_time = (uid, gid, mode, mtime_ns)
        have = _lstat(target) if layer else None
        if kind == "w" or (have is not None and not (kind == "d" and stat.S_ISDIR(have.st_mode))):
            if have is not None:
                touching(target, rel)
                remove_tree(target) if stat.S_ISDIR(have.st_mode) else os.unlink(target)
                have = None
            if kind == "w":
                continue
        if kind == "d":
            if have is None:
                touching(target, rel)
                os.mkdir(target)
            for name, value in xattrs:
                os.setxattr(target, name, bytes.fromhex(value), follow_symlinks=False)
            directories.append((target, owner_mode_time))
            made.add(rel)
            continue
        touching(target, rel)
        if kind == "f":
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
    for rel, mtime_ns in kept_times.items():
        os.utime(os.fspath(workdir) + rel, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


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
