"""Read .aci archives in one streaming pass: decompress, hash the tar bytes
(the image ID), read the manifest, check the layout, and optionally extract
the rootfs safely.

Layout rules (stricter than actool, see the appc digest 3.9): the top level
holds exactly `manifest` (a regular file) and `rootfs` (an explicit directory
entry); every other entry is under `rootfs/`; no name is absolute or has a
`..` component (`rootfs/../manifest` is refused, not cleaned); no two entries
have the same cleaned name; symlink targets (absolute ones taken relative to
rootfs) and hardlink targets stay inside rootfs.

Extraction contract: nothing is ever written outside `dest`. Parent paths are
walked with directory fds and O_NOFOLLOW, so a symlink in the archive is never
followed; a later entry replaces an earlier one (a symlink to a directory is
replaced, not followed). Memory is flat in image size.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from acbuild.errors import ImageError, NotFoundError

MAX_MANIFEST = 16 << 20
CHUNK = 1 << 20

# Decides whether an entry is extracted: (cleaned archive name, "rootfs" or
# "rootfs/usr/bin/x", is_directory) -> keep. Dependency rendering
# (acbuild.engine.deps.render) passes its first-provider-wins and pathWhitelist
# filter here.
PathFilter = Callable[[str, bool], bool]


@dataclass
class AciContents:
    manifest_bytes: bytes
    image_id: str
    compression: str
    problems: list[str]
    entries: list[str]
    # Device nodes not created because we lack the privilege (extraction only).
    skipped: list[str] = field(default_factory=list)


def detect_compression(head: bytes) -> str:
    """"gzip", "bzip2", "xz" or "none" (a ustar/gnu tar) from the first 512 bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[257:262] == b"ustar":
        return "none"
    raise ImageError("unknown archive format (not gzip, bzip2, xz or ustar tar)")


def detect_file_compression(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ImageError(f"cannot read: {e}", path=path) from e
    try:
        return detect_compression(head)
    except ImageError as e:
        raise ImageError(str(e), path=path) from None


class _HashingReader:
    """A read-only stream that hashes every byte read through it."""

    def __init__(self, inner: BinaryIO):
        self.inner = inner
        self.hash = hashlib.sha512()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return "sha512-" + self.hash.hexdigest()


def _decompressor(raw: BinaryIO, compression: str) -> BinaryIO:
    """A reader of the uncompressed tar; closing it leaves `raw` open."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    return _Unclosed(raw)


class _Unclosed:
    """`raw` itself, as a context manager that does not close it."""

    def __init__(self, raw: BinaryIO):
        self.read = raw.read

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextmanager
def _open_tar(path: Path) -> Iterator[tuple[tarfile.TarFile, _HashingReader, str]]:
    compression = detect_file_compression(path)
    with ExitStack() as stack:
        try:
            raw = stack.enter_context(open(path, "rb"))
            plain = stack.enter_context(_decompressor(raw, compression))
            reader = _HashingReader(plain)
            # Names are UTF-8 whatever the locale, so a rewrite never alters them.
            tf = stack.enter_context(tarfile.open(fileobj=reader, mode="r|", errorlevel=2,  # type: ignore[arg-type]
                                                  encoding="utf-8", errors="surrogateescape"))
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise ImageError(f"cannot read: {e}", path=path) from e  # a damaged stream is the image's fault
        yield tf, reader, compression


def _members(path: Path, tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tf
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ImageError(f"cannot read: {e}", path=path) from e


def _clean(name: str) -> tuple[str, list[str]]:
    """The cleaned archive name and its components (no "", ".")."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts), parts


def escapes_root(base: list[str], target: str) -> bool:
    """Does `target`, resolved lexically from the directory `base` (components
    under rootfs; absolute targets start at rootfs), leave rootfs? (acbuild.oci.squash
    applies the same rule to image layers.)"""
    stack = [] if target.startswith("/") else list(base)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


class _Checker:
    """Collects layout problems entry by entry (one pass, names only)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self.entries: list[str] = []
        self.manifest = False
        self.rootfs = False
        # The problem that makes the last checked entry unsafe to extract, if any.
        self.unsafe: str | None = None

    def _bad(self, problem: str, unsafe: bool = False) -> None:
        self.problems.append(problem)
        if unsafe:
            self.unsafe = problem

    def check(self, m: tarfile.TarInfo) -> tuple[str, list[str]] | None:
        """Record `m`; return its cleaned name and components, or None when it is
        unsafe to use (absolute or `..`: a problem is recorded)."""
        self.unsafe = None
        raw = m.name
        if raw.startswith("/"):
            self._bad(f"{raw}: absolute entry name", unsafe=True)
            return None
        name, parts = _clean(raw)
        if ".." in parts:
            self._bad(f"{raw}: '..' in entry name", unsafe=True)
            return None
        if not parts:  # the "." entry: ignored
            return name, parts
        if name in self.seen:
            self.problems.append(f"{name}: duplicate entry")
        self.seen.add(name)
        self.entries.append(name)
        if name == "manifest":
            self.manifest = True
            if not m.isreg():
                self.problems.append("manifest: not a regular file")
        elif name == "rootfs":
            self.rootfs = True
            if not m.isdir():
                self.problems.append("rootfs: not a directory")
        elif parts[0] != "rootfs":
            self.problems.append(f"{name}: unrecognized path in layout (only manifest and rootfs/ allowed)")
        elif m.issym() and escapes_root(parts[1:-1], m.linkname):
            self._bad(f"{name}: symlink target {m.linkname!r} escapes rootfs", unsafe=True)
        elif m.islnk():
            target, tparts = _clean(m.linkname)
            if m.linkname.startswith("/") or ".." in tparts or len(tparts) < 2 or tparts[0] != "rootfs":
                self._bad(f"{name}: hardlink target {m.linkname!r} is not inside rootfs", unsafe=True)
            elif target not in self.seen:
                self._bad(f"{name}: hardlink target {m.linkname!r} is not an earlier entry", unsafe=True)
        return name, parts

    def finish(self) -> list[str]:
        if not self.manifest:
            self.problems.append("no manifest found in layout")
        if not self.rootfs:
            self.problems.append("no rootfs found in layout (an explicit 'rootfs' directory entry is required)")
        return self.problems


def _read_manifest(path: Path, tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    if m.size > MAX_MANIFEST:
        raise ImageError(f"manifest is {m.size} bytes (more than {MAX_MANIFEST})", path=path)
    f = tf.extractfile(m)
    return f.read() if f else b""


def read_aci(path: Path) -> AciContents:
    """Hash, read the manifest and check the layout of the .aci at `path`."""
    path = Path(path)
    checker = _Checker()
    manifest = b""
    with _open_tar(path) as (tf, reader, compression):
        for m in _members(path, tf):
            checked = checker.check(m)
            if checked and checked[0] == "manifest" and m.isreg():
                manifest += _read_manifest(path, tf, m)
        image_id = _drain(path, reader)
    return AciContents(manifest, image_id, compression, checker.finish(), checker.entries)


def read_manifest_bytes(image: str | Path) -> bytes:
    """The manifest of an .aci or of an image layout directory, as stored."""
    path = Path(image)
    if not path.exists():
        raise NotFoundError(f"{image}: no such file or directory")
    if path.is_dir():
        try:
            return (path / "manifest").read_bytes()
        except OSError as e:
            raise ImageError(f"read {path / 'manifest'}: {e.strerror}") from e
    aci = read_aci(path)
    if not aci.manifest_bytes:
        raise ImageError(f"{image}: no manifest in the archive")
    return aci.manifest_bytes


def _drain(path: Path, reader: _HashingReader) -> str:
    try:
        return reader.drain()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ImageError(f"cannot read: {e}", path=path) from e


def image_id_of(path: Path) -> str:
    """sha512- + hex of the uncompressed tar stream of the .aci at `path`."""
    path = Path(path)
    compression = detect_file_compression(path)
    try:
        with open(path, "rb") as raw, _decompressor(raw, compression) as plain:
            return _HashingReader(plain).drain()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ImageError(f"cannot read: {e}", path=path) from e




# --- copying entries into a new archive (rewrite_aci) ------------------------


def copy_rootfs_entries(src: Path, sink, *, as_layer: bool = False) -> int:
    """Feed the rootfs entries of `src` to a writer.AciSink, in order, refusing
    an unsafe or invalid layout. Returns the old manifest's mtime (for the new one).
    `as_layer` writes an OCI/Docker layer instead (acbuild.oci.export): names and
    hard link targets lose their `rootfs/`, and the `rootfs` entry itself is left out."""
    from acbuild.aci.tarformat import BLOCK, tar_header

    checker = _Checker()
    mtime = 0
    with _open_tar(src) as (tf, reader, _):
        for m in _members(src, tf):
            checked = checker.check(m)
            if checker.problems:
                raise ImageError(checker.problems[0], path=src)
            if checked is None or not checked[1]:
                continue
            name, parts = checked
            if name == "manifest":
                mtime = int(m.mtime)
                continue
            link = _clean(m.linkname)[0] if m.islnk() else m.linkname
            if as_layer:
                if name == "rootfs":
                    continue
                name = name.removeprefix("rootfs/")
                link = link.removeprefix("rootfs/") if m.islnk() else link
            size = m.size if m.isreg() else 0
            sink.write(tar_header(name.encode("utf-8", "surrogateescape"), m.type if m.type != tarfile.AREGTYPE else tarfile.REGTYPE,
                                  mode=m.mode, uid=m.uid, gid=m.gid, size=size, mtime=max(0, int(m.mtime)),
                                  linkname=link.encode("utf-8", "surrogateescape"), devmajor=m.devmajor,
                                  devminor=m.devminor))
            if size:
                f = tf.extractfile(m)
                assert f is not None
                while data := f.read(CHUNK):
                    sink.write(data)
                if size % BLOCK:
                    sink.write(bytes(-size % BLOCK))
        problems = checker.finish()
        if problems:
            raise ImageError(problems[0], path=src)
        _drain(src, reader)
    return mtime


# --- safe extraction ---------------------------------------------------------


class _Tree:
    """Directory-fd access below `root`: every component is opened with
    O_NOFOLLOW, so no symlink is followed on the way."""

    def __init__(self, root: Path):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._cached: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)

    def forget(self) -> None:
        if self._cached:
            os.close(self._cached[1])
            self._cached = None

    def invalidate(self, rel: list[str]) -> None:
        """Drop the cached fd if it lies at or under `rel` (which may be replaced)."""
        if self._cached and self._cached[0][: len(rel)] == tuple(rel):
            self.forget()

    def parent(self, parts: list[str], create: bool) -> int:
        """An fd for the directory holding parts[-1] (owned by the cache; do not close)."""
        key = tuple(parts[:-1])
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        self.forget()
        fd = _open_dir(self.root_fd, list(key), create=create)
        self._cached = (key, fd)
        return fd


def _remove(pfd: int, name: str, keep_dir: bool) -> None:
    """Make room for a new entry `name` (a directory stays when keep_dir)."""
    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)


def extract_rootfs(
    path: Path,
    dest: Path,
    *,
    owners: bool = os.geteuid() == 0,
    path_filter: PathFilter | None = None,
    tarball: bool = False,
) -> AciContents:
    """Extract the rootfs/ entries of the .aci `path` into `dest` (which becomes
    the rootfs; it is created if missing). Unsafe entries raise ImageError naming
    the entry; other layout problems are returned in `problems`. With `tarball`,
    `path` is a plain tar archive (Dockerfile ADD): every entry is taken as if it
    were under rootfs/, with the same checks, so nothing lands outside `dest`."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    checker = _Checker()
    manifest = b""
    skipped: list[str] = []
    dirs: list[tuple[list[str], tarfile.TarInfo]] = []
    tree = _Tree(dest)
    try:
        with _open_tar(path) as (tf, reader, compression):
            for m in _members(path, tf):
                if tarball:
                    _under_rootfs(m)
                checked = checker.check(m)
                if checked is None or checker.unsafe:
                    raise ImageError(f"refusing unsafe entry: {checker.unsafe}", path=path)
                name, parts = checked
                if name == "manifest" and m.isreg():
                    manifest += _read_manifest(path, tf, m)
                if not parts or parts[0] != "rootfs":
                    continue
                rel = parts[1:]
                if path_filter is not None and not path_filter(name, m.isdir()):
                    continue
                try:
                    if not rel:
                        dirs.append((rel, m))
                    elif _extract_one(tf, tree, rel, m, owners, skipped):
                        dirs.append((rel, m))
                except OSError as e:
                    raise ImageError(f"extract {name}: {e}", path=path) from e
            image_id = _drain(path, reader)
        # Directory modes and times last, deepest first: children changed them.
        for rel, m in sorted(dirs, key=lambda d: -len(d[0])):
            try:
                _set_dir_meta(tree, rel, m, owners)
            except OSError as e:
                raise ImageError(f"extract {'/'.join(['rootfs', *rel])}: {e}", path=path) from e
    finally:
        tree.close()
    return AciContents(manifest, image_id, compression, checker.finish(), checker.entries, skipped)


def _under_rootfs(m: tarfile.TarInfo) -> None:
    """A plain archive's entry, named as the same entry of an image's rootfs."""
    if not m.name.startswith("/"):
        m.name = "rootfs/" + m.name
    if m.islnk() and not m.linkname.startswith("/"):
        m.linkname = "rootfs/" + m.linkname


def is_tar_archive(path: Path) -> bool:
    """Is `path` a tar archive, plain or compressed (gzip, bzip2, xz)? What Docker's
    ADD unpacks; anything else it copies as a file."""
    try:
        compression = detect_file_compression(path)
        with open(path, "rb") as raw, _decompressor(raw, compression) as plain:
            head = plain.read(512)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ImageError):
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


def _extract_one(tf: tarfile.TarFile, tree: _Tree, rel: list[str], m: tarfile.TarInfo,
                 owners: bool, skipped: list[str]) -> bool:
    """Create one entry; True for a directory (its metadata is set at the end)."""
    tree.invalidate(rel)
    pfd = tree.parent(rel, create=True)
    name = rel[-1]
    _remove(pfd, name, keep_dir=m.isdir())
    if m.isdir():
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        return True
    if m.isreg():
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
        with open(fd, "wb", closefd=True) as out:
            src = tf.extractfile(m)
            assert src is not None
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            if owners:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid
            os.utime(fd, (m.mtime, m.mtime))
        return False
    if m.issym():
        os.symlink(m.linkname, name, dir_fd=pfd)
    elif m.islnk():
        tparts = _clean(m.linkname)[1][1:]
        # The target's parent, walked without following symlinks (own fd, not the cache).
        tfd = _open_dir(tree.root_fd, tparts[:-1])
        try:
            os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return False  # shares the target's inode and metadata
    elif m.ischr() or m.isblk() or m.isfifo():
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        try:
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
        except PermissionError:
            skipped.append("/".join(["rootfs", *rel]))
            return False
        if owners:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
        return False
    else:
        skipped.append("/".join(["rootfs", *rel]))
        return False
    if owners:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
    os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    return False


def _open_dir(root_fd: int, parts: list[str], *, create: bool = False) -> int:
    """An fd for root/parts, never through a symlink (O_NOFOLLOW at every step);
    with create, missing directories are made 0755 (not by the caller's umask)."""
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            if create:
                try:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    os.chmod(comp, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_dir_meta(tree: _Tree, rel: list[str], m: tarfile.TarInfo, owners: bool) -> None:
    try:
        fd = _open_dir(tree.root_fd, rel)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP):
            return  # a later entry replaced this directory
        raise
    try:
        if owners:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        os.utime(fd, (m.mtime, m.mtime))
    finally:
        os.close(fd)
