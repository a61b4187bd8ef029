"""Apply image layers, base first, to a directory: what a container runtime
shows as the image's root filesystem.

Rules (the OCI image spec's "Applying changesets"):
- `DIR/.wh.NAME` deletes NAME (and everything under it) from the lower layers;
- `DIR/.wh..wh..opq` makes DIR opaque: what lower layers had in DIR goes, what
  this layer puts there stays (wherever the marker sits in the tar);
- a hard link may point at a file of this layer or of a lower one;
- character and block devices are not created (listed in `skipped`): a
  converted image gets its /dev from the runtime.

Safety: everything is written through acbuild.aci.archive's safe extraction
(directory fds and O_NOFOLLOW from the destination down, so a symlink in a
layer is never followed, whatever a later entry says); names with `..` and
symlinks whose target leaves the root are refused, as they are in an .aci.
Layer blobs are verified while they stream (Layer.open), and the uncompressed
tar against the config's diff_id.
"""

from __future__ import annotations

import copy
import errno
import gzip
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from acbuild.aci.archive import SafeTree, escapes_root, extract_entry, open_dir_nofollow, set_dir_meta
from acbuild.errors import ImageError
from acbuild.oci.blobs import DigestReader
from acbuild.oci.layout import Layer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class LayerChanges:
    """What one layer did, for --no-squash's pathWhitelist: the paths it adds and
    the ones it deletes (a whiteout names a path; an opaque dir deletes its
    lower contents, recorded as the dir with a trailing '/')."""

    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)


@dataclass
class SquashReport:
    skipped: list[str] = field(default_factory=list)  # device nodes not created
    changes: list[LayerChanges] = field(default_factory=list)


class _Prefixed:
    """`head` followed by the rest of `inner` (we peek at the magic number)."""

    def __init__(self, head: bytes, inner: BinaryIO):
        self.head, self.inner = head, inner

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.inner.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self.inner.read(n - len(data))
            return data
        return self.inner.read(n)


def _uncompressed(raw: BinaryIO, what: str) -> BinaryIO:
    head = raw.read(4)
    stream = _Prefixed(head, raw)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        raise ImageError(f"layer {what}: zstd-compressed layers are not supported (Python has no zstd)")
    return stream  # type: ignore[return-value]


def _parts(name: str, what: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer {what}: refusing entry {name!r} ('..' in the name)")
    return parts


def apply_layers(layers: list[Layer], dest: Path, *, owners: bool = os.geteuid() == 0,
                 lower: Path | None = None) -> SquashReport:
    """Apply `layers` in order into `dest` (created if missing). With `lower` (the
    tree the layers sit on, for a layer written alone), a hard link to a file
    that is only in `lower` becomes a copy of it."""
    dest.mkdir(parents=True, exist_ok=True)
    report = SquashReport()
    tree = SafeTree(dest)
    lower_tree = SafeTree(lower) if lower is not None and lower.is_dir() else None
    try:
        for layer in layers:
            report.changes.append(_apply(layer, tree, owners, report.skipped, lower_tree))
    finally:
        tree.close()
        if lower_tree:
            lower_tree.close()
    return report


def _apply(layer: Layer, tree: SafeTree, owners: bool, skipped: list[str], lower: SafeTree | None) -> LayerChanges:
    changes = LayerChanges()
    created: set[tuple[str, ...]] = set()
    dirs: list[tuple[list[str], tarfile.TarInfo]] = []
    what = layer.what
    with layer.open() as blob:
        try:
            plain = _uncompressed(blob, what)
            checked = DigestReader(plain, layer.diff_id, what=f"layer {what} (uncompressed)") if layer.diff_id else None
            tf = tarfile.open(fileobj=checked or plain, mode="r|", errorlevel=2,  # type: ignore[arg-type]
                              encoding="utf-8", errors="surrogateescape")
            for m in tf:
                _apply_entry(tf, tree, m, what, owners, created, dirs, changes, skipped, lower)
            if checked is not None:
                checked.check()
            if isinstance(blob, DigestReader):
                blob.check()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ImageError(f"layer {what}: {e}") from e
        except OSError as e:
            raise ImageError(f"layer {what}: {e}") from e
    for rel, m in sorted(dirs, key=lambda d: -len(d[0])):
        try:
            set_dir_meta(tree, rel, m, owners)
        except OSError as e:
            raise ImageError(f"layer {what}: {'/'.join(rel)}: {e}") from e
    return changes


def _apply_entry(tf: tarfile.TarFile, tree: SafeTree, m: tarfile.TarInfo, what: str, owners: bool,
                 created: set[tuple[str, ...]], dirs: list, changes: LayerChanges, skipped: list[str],
                 lower: SafeTree | None) -> None:
    parts = _parts(m.name, what)
    if not parts:
        return  # the layer's own root
    base = parts[-1]
    if base == OPAQUE:
        _make_opaque(tree, parts[:-1], created)
        changes.opaque.append("/" + "/".join(parts[:-1]))
        return
    if base.startswith(WHITEOUT):
        target = parts[:-1] + [base[len(WHITEOUT):]]
        _delete(tree, target)
        changes.deleted.append("/" + "/".join(target))
        return
    path = "/" + "/".join(parts)
    if m.ischr() or m.isblk():
        skipped.append(path)
        return
    entry = copy.copy(m)
    entry.name = "rootfs/" + "/".join(parts)
    if m.issym() and escapes_root(parts[:-1], m.linkname):
        raise ImageError(f"layer {what}: refusing {path}: symlink target {m.linkname!r} leaves the root")
    target: list[str] = []
    if m.islnk():
        target = _parts(m.linkname, what)
        if not target:
            raise ImageError(f"layer {what}: {path}: hard link without a target")
        entry.linkname = "rootfs/" + "/".join(target)
    try:
        if m.islnk() and lower is not None and not _exists(tree, target):
            _copy_from(lower, target, tree, parts, owners)
        elif extract_entry(tf, tree, parts, entry, owners, skipped):
            dirs.append((parts, entry))
    except OSError as e:
        if m.islnk() and e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise ImageError(f"layer {what}: {path}: hard link target /{entry.linkname[7:]} does not exist") from e
        raise ImageError(f"layer {what}: {path}: {e}") from e
    created.add(tuple(parts))
    changes.added.append(path)


def _exists(tree: SafeTree, parts: list[str]) -> bool:
    fd = _open_existing(tree, parts[:-1])
    if fd is None:
        return False
    try:
        os.lstat(parts[-1], dir_fd=fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _copy_from(lower: SafeTree, src: list[str], tree: SafeTree, dst: list[str], owners: bool) -> None:
    """Copy the regular file lower/src to tree/dst with its mode, owner and mtime."""
    sfd = open_dir_nofollow(lower.root_fd, src[:-1])
    try:
        fd = os.open(src[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sfd)
    finally:
        os.close(sfd)
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EPERM, "hard link target is not a regular file")
        tree.invalidate(dst)
        pfd = tree.parent(dst, create=True)
        try:
            os.unlink(dst[-1], dir_fd=pfd)
        except FileNotFoundError:
            pass
        out_fd = os.open(dst[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
        with open(out_fd, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
            if owners:
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            os.utime(out.fileno(), ns=(st.st_mtime_ns, st.st_mtime_ns))


def _open_existing(tree: SafeTree, parts: list[str]) -> int | None:
    """An fd for the directory root/parts, or None if it is not there (or is a symlink)."""
    try:
        return open_dir_nofollow(tree.root_fd, parts)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _delete(tree: SafeTree, parts: list[str]) -> None:
    """Remove root/parts (a whiteout), if it is there."""
    tree.invalidate(parts)
    fd = _open_existing(tree, parts[:-1])
    if fd is None:
        return
    try:
        st = os.lstat(parts[-1], dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(parts[-1], dir_fd=fd)
        else:
            os.unlink(parts[-1], dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _make_opaque(tree: SafeTree, parts: list[str], created: set[tuple[str, ...]]) -> None:
    """Delete what lower layers left in root/parts; keep what this layer made."""
    tree.invalidate(parts)
    fd = _open_existing(tree, parts)
    if fd is None:
        return
    try:
        for name in os.listdir(fd):
            child = parts + [name]
            if tuple(child) not in created:
                _delete(tree, child)
            elif stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                _make_opaque(tree, child, created)  # this layer's dir over a lower one
    finally:
        os.close(fd)
