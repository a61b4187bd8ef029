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
import errno
import hashlib
import lzma
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from acbuild import limits, placeholders
from acbuild.aci.tarstream import AREGTYPE, REGTYPE, STREAM_ERRORS, Entry, TarReader
from acbuild.errors import ImageError, NotFoundError
from acbuild.records import dataclass, field
from acbuild.userns import owner_for

CHUNK = 1 << 20
_AHEAD = 4  # chunks inflated ahead of the reader (memory: _AHEAD + 2 chunks)

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
        self._thread: threading.Thread | None = None
        if ahead:
            self._chunks: queue.Queue = queue.Queue(_AHEAD)
            self._stop = False
            self._ended = False
            self._rest = memoryview(b"")
            self._thread = threading.Thread(target=self._produce, name="acbuild-inflate", daemon=True)
            self._thread.start()

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

    def _produce(self) -> None:
        try:
            while not self._stop:
                data = self._take(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as err:  # raised to the reader, at the point it reaches
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop:
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def read(self, n: int = -1) -> bytes:
        if self._thread is None:
            return self._take(n if n >= 0 else CHUNK)
        if not self._rest:
            if self._ended:
                return b""
            item = self._chunks.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return b""
            if n < 0 or n >= len(item):  # the common case: the chunk as it came, no copy
                return item
            self._rest = memoryview(item)
        n = len(self._rest) if n < 0 else n
        data, self._rest = bytes(self._rest[:n]), self._rest[n:]
        return data

    def close(self) -> None:
        if self._thread is not None:
            self._stop = True
            self._thread.join()

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
def _open_tar(path: Path) -> Iterator[tuple[TarReader, _HashingReader, str]]:
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


def _clean(name: str) -> tuple[str, list[str]]:
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
            target, tparts = _clean(m.linkname)
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


def _read_manifest(path: Path, tar: TarReader, m: Entry, first: bool) -> bytes:
    """The manifest's bytes (the first one only: a second is a reported duplicate)."""
    if m.size > limits.MAX_MANIFEST_BYTES:
        raise ImageError(f"manifest is {m.size} bytes (at most {limits.MAX_MANIFEST_BYTES})", path=path)
    return b"".join(iter(tar.data, b"")) if first else b""


def read_aci(path: Path) -> AciContents:
    """Hash, read the manifest and check the layout of the .aci at `path`."""
    path = Path(path)
    checker = _Checker()
    manifest = None
    with _open_tar(path) as (tar, reader, compression):
        for m in tar:
            checked = checker.check(m)
            if checked and checked[0] == "manifest" and m.isreg():
                data = _read_manifest(path, tar, m, manifest is None)
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

    checker = _Checker()
    mtime = 0
    with _open_tar(src) as (tar, reader, _):
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
            link = _clean(m.linkname)[0] if m.islnk() else m.linkname
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


# --- safe extraction ---------------------------------------------------------


class _Tree:
    """Directory-fd access below `root`: every component is opened with
    O_NOFOLLOW, so no symlink is followed on the way. One cursor fd is kept and
    moved (up with "..", down one component at a time), so a deep tree costs
    what its path changes cost, not depth x entries, and one descriptor."""

    def __init__(self, root: Path):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._parts: list[str] = []
        self._fd: int | None = None

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)

    def forget(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._parts = []

    def invalidate(self, rel: list[str]) -> None:
        """Drop the cursor if it lies at or under `rel` (which may be replaced)."""
        if self._fd is not None and self._parts[: len(rel)] == rel:
            self.forget()

    def dir(self, parts: list[str], create: bool = False) -> int:
        """An fd for root/parts (owned by the tree; do not close)."""
        if self._fd is not None:
            common = 0
            for a, b in zip(self._parts, parts):
                if a != b:
                    break
                common += 1
            up = len(self._parts) - common
            if up > common:  # cheaper from the root
                self.forget()
            else:
                try:
                    for _ in range(up):
                        self._step("..")
                        self._parts.pop()
                except OSError:  # e.g. a directory already made 0000: start again from the root
                    self.forget()
        if self._fd is None:
            self._fd = os.dup(self.root_fd)
            self._parts = []
        for comp in parts[len(self._parts):]:  # self._parts is a prefix of parts now
            if create:
                try:
                    os.mkdir(comp, 0o755, dir_fd=self._fd)
                    os.chmod(comp, 0o755, dir_fd=self._fd)  # not the caller's umask
                except FileExistsError:
                    pass
            try:
                self._step(comp)
            except BaseException:
                self.forget()
                raise
            self._parts.append(comp)
        return self._fd

    def _step(self, comp: str) -> None:
        assert self._fd is not None
        fd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._fd)
        os.close(self._fd)
        self._fd = fd

    def parent(self, parts: list[str], create: bool) -> int:
        """An fd for the directory holding parts[-1] (owned by the tree; do not close)."""
        return self.dir(parts[:-1], create)


def _remove(pfd: int, name: str, keep_dir: bool) -> None:
    """Make room for a new entry `name` (a directory stays when keep_dir)."""
    from acbuild.files import remove_tree_at

    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            remove_tree_at(pfd, name)
    else:
        os.unlink(name, dir_fd=pfd)


def extract_rootfs(
    path: Path,
    dest: Path,
    *,
    path_filter: PathFilter | None = None,
    tarball: bool = False,
) -> AciContents:
    """Extract the rootfs/ entries of the .aci `path` into `dest` (which becomes
    the rootfs; it is created if missing). Any layout problem that validate
    reports raises ImageError naming the entry; `dest` may then hold a partial
    tree, which the caller removes. With `tarball`, `path` is a plain tar archive
    (Dockerfile ADD): every entry is taken as if it were under rootfs/, with the
    same checks, so nothing lands outside `dest`. Owners are kept as far as this
    process can (acbuild.userns.owner_for: an owner that would be lost raises
    OwnerError); device nodes that cannot be made become placeholders
    (acbuild.placeholders)."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    checker = _Checker()
    manifest = None
    skipped: list[str] = []
    dirs: list[tuple[list[str], Entry]] = []
    tree = _Tree(dest)
    creator = _Creator.of(dest)
    try:
        with _open_tar(path) as (tar, reader, compression):
            if tarball:  # a plain archive has neither; its entries are all rootfs
                checker.manifest = checker.rootfs = True
            for m in tar:
                if tarball:
                    _under_rootfs(m)
                checked = checker.check(m)
                if checked is None or checker.problems:
                    raise ImageError(f"refusing unsafe entry: {checker.unsafe}" if checker.unsafe
                                     else checker.problems[0], path=path)
                name, parts = checked
                if name == "manifest":
                    manifest = _read_manifest(path, tar, m, True)
                if not parts or parts[0] != "rootfs":
                    continue
                rel = parts[1:]
                if path_filter is not None and not path_filter(name, m.isdir()):
                    continue
                try:
                    if not rel:
                        dirs.append((rel, m))
                    elif _extract_one(tar, tree, rel, m, owner_for(m.uid, m.gid, f"{path}: {name}"), skipped, creator):
                        dirs.append((rel, m))
                except (OSError, OverflowError) as e:
                    raise ImageError(f"extract {name}: {e}", path=path) from e
            image_id = reader.drain()
        problems = checker.finish()
        if problems:
            raise ImageError(f"refusing unsafe entry: {checker.unsafe}" if checker.unsafe
                             else problems[0], path=path)
        # Directory modes and times last, children before parents (children changed
        # them); in reverse path order the cursor moves between neighbours only.
        dirs.sort(key=lambda d: d[0], reverse=True)
        for rel, m in dirs:
            try:
                _set_dir_meta(tree, rel, m, owner_for(m.uid, m.gid, f"{path}: rootfs/{'/'.join(rel)}"))
            except (OSError, OverflowError) as e:
                raise ImageError(f"extract {'/'.join(['rootfs', *rel])}: {e}", path=path) from e
    finally:
        tree.close()
    return AciContents(manifest or b"", image_id, compression, [], checker.entries, skipped)


def _under_rootfs(m: Entry) -> None:
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
    except (*STREAM_ERRORS, ImageError):
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


@dataclass(frozen=True)
class _Creator:
    """What a new file gets without being told, so the calls that would set the same
    can be left out (a Debian rootfs is ~8,700 entries, most of them root's).
    `owner`: the creator's (uid, gid), which every new entry has when `dest` was an
    empty directory without setgid (so no directory in it passes a group on: each was
    made here, 0700, and gets its mode only at the end); None otherwise. `umask`: this
    process's, or None when unknown (then every file is chmodded)."""

    owner: tuple[int, int] | None
    umask: int | None

    @staticmethod
    def of(dest: Path) -> _Creator:
        st = os.stat(dest)
        fresh = not (st.st_mode & stat.S_ISGID) and not os.listdir(dest)
        try:
            with open("/proc/self/status", "rb") as f:
                umask = next((int(line.split()[1], 8) for line in f if line.startswith(b"Umask:")), None)
        except (OSError, ValueError, IndexError):
            umask = None
        return _Creator((os.geteuid(), os.getegid()) if fresh else None, umask)

    def must_chown(self, owner: tuple[int, int] | None) -> bool:
        return owner is not None and owner != self.owner

    def must_chmod(self, mode: int) -> bool:
        """Is a file opened with mode & 0o777 not left with mode & 0o7777 yet?"""
        if mode & 0o7000:  # not given by open, and chown clears setuid
            return True
        return self.umask is None or bool(mode & self.umask)


def _extract_one(tar: TarReader, tree: _Tree, rel: list[str], m: Entry,
                 owner: tuple[int, int] | None, skipped: list[str], creator: _Creator) -> bool:
    """Create one entry, owned by `owner` (None: as made); True for a directory
    (its metadata is set at the end). An entry of that name is replaced (a directory
    kept for a directory): looked for only when the creation finds it, since most
    names are new."""
    tree.invalidate(rel)
    pfd = tree.parent(rel, create=True)
    name = rel[-1]
    if m.isdir():
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=pfd).st_mode):
                _remove(pfd, name, keep_dir=False)
                os.mkdir(name, 0o700, dir_fd=pfd)
        return True
    if m.isreg():
        mode = m.mode & 0o7777
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            _remove(pfd, name, keep_dir=False)
            fd = os.open(name, flags, mode & 0o777, dir_fd=pfd)
        try:
            while data := tar.data(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            if creator.must_chown(owner):
                os.fchown(fd, *owner)  # type: ignore[misc]
            if creator.must_chmod(mode):
                os.fchmod(fd, mode)  # after chown, which clears setuid
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        return False
    if m.issym():
        try:
            os.symlink(m.linkname, name, dir_fd=pfd)
        except FileExistsError:
            _remove(pfd, name, keep_dir=False)
            os.symlink(m.linkname, name, dir_fd=pfd)
    elif m.islnk():
        tparts = _clean(m.linkname)[1][1:]
        # The target's parent, walked without following symlinks (own fd, not the cursor).
        tfd = _open_dir(tree.root_fd, tparts[:-1])
        try:
            try:
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                _remove(pfd, name, keep_dir=False)
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return False  # shares the target's inode and metadata
    elif m.ischr() or m.isblk() or m.isfifo():
        _remove(pfd, name, keep_dir=False)
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        if not placeholders.make_node(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd):
            raise ImageError(f"cannot keep device node rootfs/{'/'.join(rel)}: this file system holds "
                             "no user xattrs for its placeholder")
        if owner is not None:
            os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
        return False
    else:
        _remove(pfd, name, keep_dir=False)
        skipped.append("/".join(["rootfs", *rel]))
        return False
    if creator.must_chown(owner):
        os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)  # type: ignore[misc]
    os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    return False


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """An fd for root/parts, never through a symlink (O_NOFOLLOW at every step)."""
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_dir_meta(tree: _Tree, rel: list[str], m: Entry, owner: tuple[int, int] | None) -> None:
    try:
        fd = tree.dir(rel)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP):
            return  # a later entry replaced this directory
        raise
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, m.mode & 0o7777)
    os.utime(fd, (m.mtime, m.mtime))
