"""Read .aci archives in one streaming pass: decompress, hash the tar bytes
(the image ID), read the manifest and check the layout. `aci/extract.py`
extracts the rootfs in the same pass, with these checks.

Layout rules (stricter than actool, see the appc digest 3.9): the top level
holds exactly `manifest` (a regular file) and `rootfs` (an explicit directory
entry); every other entry is under `rootfs/`; no name is absolute or has a
`..` component (`rootfs/../manifest` is refused, not cleaned); no two entries
have the same cleaned name; symlink targets (absolute ones taken relative to
rootfs) and hardlink targets stay inside rootfs.

One verdict: the tar stream is read by acbuild.aci.tarstream (strict: a corrupt
header, a truncated stream or a negative size is an error, never a silent end),
the uncompressed size is bounded by the image size limit (acbuild.limits), and
extraction refuses every layout problem that validate reports, so validate,
FROM, begin, launch and dependency rendering accept exactly the same archives.
Symlinks are resolved through the links of the archive itself: a link that
leaves rootfs through another link is refused, whatever the entry order.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from acbuild import limits
from acbuild.aci.readahead import CHUNK, ReadAhead
from acbuild.aci.tarstream import AREGTYPE, REGTYPE, STREAM_ERRORS, Entry, TarReader
from acbuild.errors import ImageError, NotFoundError
from acbuild.records import dataclass, field




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
    """A read-only stream that hashes every byte read through it and refuses to
    read more than the image size limit (an expansion bomb ends there).

    With `ahead`, a thread inflates and hashes the next few CHUNKs while the
    caller works on this one (both release the GIL): the image ID costs no time
    beside an extraction. close() stops and joins it before the file is closed."""

    def __init__(self, inner: BinaryIO, where: Path, *, ahead: bool = False):
        self.inner = inner
        self.where = where
        self.hash = hashlib.sha512()
        self.limit = limits.max_image_size()
        self.total = 0
        self._ahead = ReadAhead(self._take, name="acbuild-inflate") if ahead else None

    def _take(self, n: int) -> bytes:
        """The next up to n bytes of `inner`, hashed and counted."""
        data = self.inner.read(n)
        self.total += len(data)
        if self.total > self.limit:
            raise ImageError(f"more than {limits.format_size(self.limit)} uncompressed, the image size "
                             f"limit (raise it with --max-image-size, {limits.MAX_IMAGE_SIZE_ENV} "
                             "or max-image-size in acbuild.toml)", path=self.where)
        self.hash.update(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if self._ahead is None:
            return self._take(n if n >= 0 else CHUNK)
        return self._ahead.read(n)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()

    def drain(self) -> str:
        try:
            while self.read(CHUNK):
                pass
        except STREAM_ERRORS as e:
            raise ImageError(f"cannot read: damaged or truncated compressed stream: {e}", path=self.where) from None
        return "sha512-" + self.hash.hexdigest()


def _decompressor(raw: BinaryIO, compression: str) -> BinaryIO:
    """A reader of the uncompressed tar; closing it leaves `raw` open."""
    if compression == "gzip":
        from acbuild.aci.pgzip import gunzip_reader  # here: isal is not for every command

        return gunzip_reader(raw)
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
def open_tar(path: Path) -> Iterator[tuple[TarReader, _HashingReader, str]]:
    compression = detect_file_compression(path)
    with ExitStack() as stack:
        try:
            raw = stack.enter_context(open(path, "rb"))
            plain = stack.enter_context(_decompressor(raw, compression))
        except STREAM_ERRORS as e:
            raise ImageError(f"cannot read: {e}", path=path) from e  # a damaged stream is the image's fault
        reader = _HashingReader(plain, path, ahead=True)
        stack.callback(reader.close)  # before the file closes: its thread reads from it
        yield TarReader(reader.read, str(path)), reader, compression


def clean_name(name: str) -> tuple[str, list[str]]:
    """The cleaned archive name and its components (no "", ".")."""
    parts = name.split("/")
    if "" in parts or "." in parts:  # the common case needs no copy
        parts = [p for p in parts if p not in ("", ".")]
        return "/".join(parts), parts
    return name, parts


def escapes_root(base: list[str], target: str, links: dict[str, str] | None = None) -> bool:
    """Does `target`, resolved from the directory `base` (components under rootfs;
    absolute targets start at rootfs) lexically, or through the symlinks `links`
    (path under rootfs -> target) when given, leave rootfs? (acbuild.oci.squash
    applies the same rule to the tree image layers leave.)"""
    return _escapes(links or {}, base, target) is not None


def _escapes(links: dict[str, str], base: list[str], target: str) -> str | None:
    """Why `target`, resolved from the directory `base` (components under rootfs;
    absolute targets start at rootfs) through the archive's own symlinks `links`
    (path under rootfs -> target), leaves rootfs, or None when it stays inside."""
    stack = [] if target.startswith("/") else list(base)
    keys = ["/".join(stack[: n + 1]) for n in range(len(stack))] if links else []
    todo = target.split("/")
    todo.reverse()
    hops = limits.MAX_SYMLINK_HOPS
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return "escapes rootfs"
            stack.pop()
            if keys:
                keys.pop()
            continue
        stack.append(part)
        if not links:
            continue
        keys.append(f"{keys[-1]}/{part}" if keys else part)
        inner = links.get(keys[-1])
        if inner is not None:
            hops -= 1
            if hops < 0:  # a loop: the kernel answers ELOOP, nothing is reached
                return None
            stack.pop()
            keys.pop()
            if inner.startswith("/"):
                stack, keys = [], []
            todo.extend(reversed(inner.split("/")))
    return None


class LayoutChecker:
    """Collects layout problems entry by entry (one pass, names only)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self.entries: list[str] = []
        self.manifest = False
        self.rootfs = False
        # The problem that makes the last checked entry unsafe to extract, if any.
        self.unsafe: str | None = None
        # Symlinks so far (path under rootfs -> target) and the depths they are at:
        # an entry below one, or a link through one, is judged by the real namespace.
        self.links: dict[str, str] = {}
        self.link_depths: set[int] = set()

    def _bad(self, problem: str, unsafe: bool = False) -> None:
        self.problems.append(problem)
        if unsafe:
            self.unsafe = problem

    def check(self, m: Entry) -> tuple[str, list[str]] | None:
        """Record `m`; return its cleaned name and components, or None when it is
        unsafe to use (absolute or `..`: a problem is recorded)."""
        self.unsafe = None
        raw = m.name
        if raw.startswith("/"):
            self._bad(f"{raw}: absolute entry name", unsafe=True)
            return None
        name, parts = clean_name(raw)
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
        elif self._under_link(parts[1:]):
            self._bad(f"{name}: is below the symlink {self._under_link(parts[1:])}", unsafe=True)
        elif m.issym():
            # Lexically now; through the archive's other links once they are all known (finish).
            why = _escapes({}, parts[1:-1], m.linkname)
            if why:
                self._bad(f"{name}: symlink target {m.linkname!r} {why}", unsafe=True)
            self.links["/".join(parts[1:])] = m.linkname
            self.link_depths.add(len(parts) - 1)
        elif m.islnk():
            target, tparts = clean_name(m.linkname)
            if m.linkname.startswith("/") or ".." in tparts or len(tparts) < 2 or tparts[0] != "rootfs":
                self._bad(f"{name}: hardlink target {m.linkname!r} is not inside rootfs", unsafe=True)
            elif target not in self.seen:
                self._bad(f"{name}: hardlink target {m.linkname!r} is not an earlier entry", unsafe=True)
        return name, parts

    def _under_link(self, rel: list[str]) -> str | None:
        """The symlink (rootfs/...) that a parent of `rel` is, if any."""
        for depth in self.link_depths:
            if depth < len(rel):
                prefix = "/".join(rel[:depth])
                if prefix in self.links:
                    return "rootfs/" + prefix
        return None

    def finish(self) -> list[str]:
        # A link may reach outside through one that came later in the archive.
        for link, target in self.links.items():
            parts = link.split("/")
            why = _escapes(self.links, parts[:-1], target)
            problem = f"rootfs/{link}: symlink target {target!r} {why}"
            if why and problem not in self.problems:
                self._bad(problem, unsafe=True)
        if not self.manifest:
            self.problems.append("no manifest found in layout")
        if not self.rootfs:
            self.problems.append("no rootfs found in layout (an explicit 'rootfs' directory entry is required)")
        return self.problems


def read_manifest_entry(path: Path, tar: TarReader, m: Entry, first: bool) -> bytes:
    """The manifest's bytes (the first one only: a second is a reported duplicate)."""
    if m.size > limits.MAX_MANIFEST_BYTES:
        raise ImageError(f"manifest is {m.size} bytes (at most {limits.MAX_MANIFEST_BYTES})", path=path)
    return b"".join(iter(tar.data, b"")) if first else b""


def read_aci(path: Path) -> AciContents:
    """Hash, read the manifest and check the layout of the .aci at `path`."""
    path = Path(path)
    checker = LayoutChecker()
    manifest = None
    with open_tar(path) as (tar, reader, compression):
        for m in tar:
            checked = checker.check(m)
            if checked and checked[0] == "manifest" and m.isreg():
                data = read_manifest_entry(path, tar, m, manifest is None)
                manifest = data if manifest is None else manifest
        image_id = reader.drain()
    return AciContents(manifest or b"", image_id, compression, checker.finish(), checker.entries)


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


def image_id_of(path: Path) -> str:
    """sha512- + hex of the uncompressed tar stream of the .aci at `path`."""
    path = Path(path)
    compression = detect_file_compression(path)
    try:
        with open(path, "rb") as raw, _decompressor(raw, compression) as plain:
            return _HashingReader(plain, path).drain()
    except OSError as e:
        raise ImageError(f"cannot read: {e}", path=path) from e




# --- copying entries into a new archive (rewrite_aci) ------------------------


def copy_rootfs_entries(src: Path, sink, *, as_layer: bool = False) -> int:
    """Feed the rootfs entries of `src` to a writer.AciSink, in order, refusing
    an unsafe or invalid layout. Returns the old manifest's mtime (for the new one).
    `as_layer` writes an OCI/Docker layer instead (acbuild.oci.export): names and
    hard link targets lose their `rootfs/`, and the `rootfs` entry itself is left out."""
    from acbuild.aci.tarformat import BLOCK, tar_header

    checker = LayoutChecker()
    mtime = 0
    with open_tar(src) as (tar, reader, _):
        for m in tar:
            checked = checker.check(m)
            if checker.problems:
                raise ImageError(checker.problems[0], path=src)
            if checked is None or not checked[1]:
                continue
            name, parts = checked
            if name == "manifest":
                mtime = int(m.mtime)
                continue
            link = clean_name(m.linkname)[0] if m.islnk() else m.linkname
            if as_layer:
                if name == "rootfs":
                    continue
                name = name.removeprefix("rootfs/")
                link = link.removeprefix("rootfs/") if m.islnk() else link
            size = m.size if m.isreg() else 0
            sink.write(tar_header(name.encode("utf-8", "surrogateescape"), m.type if m.type != AREGTYPE else REGTYPE,
                                  mode=m.mode, uid=m.uid, gid=m.gid, size=size, mtime=max(0, int(m.mtime)),
                                  linkname=link.encode("utf-8", "surrogateescape"), devmajor=m.devmajor,
                                  devminor=m.devminor))
            if size:
                while data := tar.data(CHUNK):
                    sink.write(data)
                if size % BLOCK:
                    sink.write(bytes(-size % BLOCK))
        problems = checker.finish()
        if problems:
            raise ImageError(problems[0], path=src)
        reader.drain()
    return mtime


def is_tar_archive(path: Path) -> bool:
    """Is `path` a tar archive, plain or compressed (gzip, bzip2, xz)? What Docker's
    ADD unpacks; anything else it copies as a file."""
    try:
        compression = detect_file_compression(path)
        with open(path, "rb") as raw, _decompressor(raw, compression) as plain:
            head = plain.read(512)
    except (*STREAM_ERRORS, ImageError):
        return False
    return len(head) == 512 and head[257:262] == b"ustar"
