"""Write .aci archives: one streaming pass that emits the tar, hashes it (the
image ID) and compresses it, into a temp file renamed over the output.

Contract: `write_aci` and `rewrite_aci` are atomic (temp file in the output's
directory, fsync, rename; the temp file is removed on any exception, Ctrl-C
included) and deterministic: the same inputs give the same bytes. Memory is
flat in image size (file content streams in chunks).

Archive layout (actool's): `rootfs` first, then the tree in a depth-first
walk with each directory's names sorted by their bytes (never readdir order),
then `manifest` last. Names carry no `./` prefix and no trailing slash. Tar
dialect: POSIX ustar; a name longer than 100 bytes is split into the 155-byte
prefix field when it can be, otherwise a PAX `x` record carries it (also for
long link targets, ids above 2097151 and sizes of 8 GiB and more). The stream
ends with two zero blocks, no record padding.

Normalisation, entry by entry:
- mtime = min(int(st_mtime), source_date_epoch), and never below 0.
  source_date_epoch is $SOURCE_DATE_EPOCH, or DEFAULT_SOURCE_DATE_EPOCH (0,
  1970-01-01T00:00:00Z) when unset.
- uid/gid: the numbers on disk, passed through `id_map` when given (one map
  for both uids and gids; rootless builds map the invoking user to 0).
  uname/gname are empty: no host user database leaks into the image.
- mode: the permission bits as on disk, setuid/setgid/sticky included.
- hardlinks: a second path to an inode seen before becomes a link entry
  (typeflag 1) whose linkname is the first path, `rootfs/...`.
- symlink targets are stored verbatim.
- char/block devices (with major/minor) and fifos are kept; sockets are skipped.
  An empty file marked as a device's placeholder (acbuild.placeholders: where
  mknod was not allowed) is written as that device.
- xattrs and ACLs are dropped.
- manifest: mode 0644, uid/gid 0, mtime = source_date_epoch.
- compression: gzip (ISA-L deflate at its level 2) with a header holding no name
  and MTIME 0 (XFL 0, OS 255, as Go writes it), compressed on all CPUs in
  fixed 1 MiB pieces (acbuild.aci.pgzip: the bytes do not depend on the CPU
  count); or xz (preset 6), bzip2 (level 9) or none.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from acbuild import placeholders
from acbuild.aci import pgzip
from acbuild.aci.pgzip import ParallelGzipWriter
from acbuild.aci.tarformat import BLOCK, MAX_MTIME, ZERO_BLOCK, file_member, tar_header
from acbuild.aci.tarstream import BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE
from acbuild.atomic import fsync_dir
from acbuild.errors import ImageError, UsageError
from acbuild.files import tree_bytes, walk
from acbuild.report import QUIET, Meter, Reporter
from acbuild.temps import locked_temp_file

DEFAULT_SOURCE_DATE_EPOCH = 0
MAX_SOURCE_DATE_EPOCH = MAX_MTIME  # the latest mtime a ustar header holds
COMPRESSIONS = ("gzip", "xz", "bzip2", "none")

CHUNK = 1 << 20  # read and flush granularity


def source_date_epoch_from_env() -> int:
    """$SOURCE_DATE_EPOCH as an int, or DEFAULT_SOURCE_DATE_EPOCH when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is not a non-negative integer (seconds since 1970)")
    if value > MAX_SOURCE_DATE_EPOCH:
        raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is beyond what a tar header holds ({MAX_SOURCE_DATE_EPOCH}, "
                         "in the year 2242); the image would not carry it")
    return value


def check_output_path(out: str | os.PathLike) -> None:
    """The one rule for where an image may be written: a name ending in .aci, in a
    directory that exists. Checked before any work: a build must not run every
    step to fail here (nor name its temp file)."""
    text = os.fspath(out)
    if not text:
        raise UsageError("an empty output name (give OUT.aci)")
    path = Path(text)
    if path.suffix != ".aci":
        raise UsageError(f"{out}: the output file name must end in .aci")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: " + ("not a directory" if path.parent.exists() else "no such directory"))


# --- the output stream -----------------------------------------------------


class AciSink:
    """A tar byte stream that is hashed (image ID) and compressed into a temp
    file beside `out`. `commit()` finishes the tar, fsyncs and renames over
    `out` (or hands the temp to `install`, which must put it in place: signing does);
    `abort()` (or leaving the `with` block by an exception) removes the temp file.
    The temp holds an flock while it is written (acbuild.temps), so one left by a
    killed acbuild is known dead and removed by the next write of `out`. Small
    writes are gathered into CHUNK-sized updates."""

    def __init__(self, out: Path, compression: str = "gzip", install: Callable[[Path], None] | None = None):
        if compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {compression!r} (choose {', '.join(COMPRESSIONS)})")
        self.out = Path(out)
        self._install = install
        self._hash = hashlib.sha512()
        self._buf = bytearray()
        self._tmp: Path | None = None
        fd = -1
        try:
            fd, self._tmp = locked_temp_file(self.out)
            self._raw: BinaryIO = os.fdopen(fd, "wb", buffering=CHUNK)
            fd = -1
            self._stream: BinaryIO = _compressor(self._raw, compression)
        except BaseException as e:  # Ctrl-C included: no temp file left behind
            if fd >= 0:
                os.close(fd)
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise ImageError(f"write {self.out}: {e}") from e
            raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        if len(buf) + len(data) < CHUNK:
            buf += data
            return
        if buf:
            self._flush()
        self._hash.update(data)
        self._stream.write(data)

    def _flush(self) -> None:
        self._hash.update(self._buf)
        self._stream.write(self._buf)
        self._buf = bytearray()

    def commit(self) -> str:
        """End the archive, make the file durable and visible; return the image ID."""
        assert self._tmp is not None
        self.write(ZERO_BLOCK * 2)
        self._flush()
        try:
            if self._stream is not self._raw:
                self._stream.close()  # writes the trailer; leaves _raw open
            self._raw.flush()
            os.fchmod(self._raw.fileno(), 0o666 & ~_umask())
            os.fsync(self._raw.fileno())
            if self._install is None:  # before close: the lock shows the temp is alive
                os.replace(self._tmp, self.out)
                fsync_dir(self.out.parent)
            else:
                self._install(self._tmp)
            self._tmp = None
            self._raw.close()
        except OSError as e:
            raise ImageError(f"write {self.out}: {e}") from e
        return "sha512-" + self._hash.hexdigest()

    def abort(self) -> None:
        for f in (self._stream, self._raw):
            try:
                getattr(f, "abort", f.close)()
            except (OSError, ValueError, EOFError):
                pass
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self) -> AciSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None:
            self.abort()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def encoder(compression: str) -> str:
    """The compression and what produces its bytes: a stored .aci made by another
    deflate engine or version must not be served as this one's output."""
    return f"gzip-{pgzip.ENCODER}" if compression == "gzip" else compression


def _compressor(raw: BinaryIO, compression: str) -> BinaryIO:
    if compression == "gzip":
        return ParallelGzipWriter(raw)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, preset=6)  # type: ignore[return-value]
    if compression == "bzip2":
        return bz2.BZ2File(raw, "wb", compresslevel=9)  # type: ignore[return-value]
    return raw


# --- walking a rootfs --------------------------------------------------------


def _walk(top: str, rel: bytes) -> Iterator[tuple[str, bytes, os.stat_result]]:
    """Depth-first, each directory's names sorted by bytes: (path, archive name, lstat)."""
    for path, child, st, _ in walk(top, sort_key=lambda e: os.fsencode(e.name)):
        yield path, rel + b"/" + os.fsencode(child), st


def copy_file(sink: AciSink, path: str | Path, size: int, meter: Meter | None = None) -> None:
    """Stream exactly `size` bytes of `path` and the block padding."""
    with open(path, "rb", buffering=0) as f:
        left = size
        while left:
            data = f.read(min(left, CHUNK))
            if not data:
                raise ImageError(f"{path} shrank while being written (file changed during build?)")
            sink.write(data)
            left -= len(data)
            if meter is not None:
                meter.advance(len(data))
    pad = -size % BLOCK
    if pad:
        sink.write(ZERO_BLOCK[:pad])


def write_tree(sink: AciSink, rootfs: Path, source_date_epoch: int, id_map: dict[int, int] | None,
               meter: Meter | None = None) -> None:
    """The `rootfs` entry and everything under it, in archive order."""
    root = os.fspath(rootfs)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{rootfs}: rootfs is not a directory")
    ids = id_map or {}
    # First name of each inode with other links (after a cached build, every file: its
    # twin is in the step cache): keyed by the inode alone on the rootfs's own device.
    links: dict[int | tuple[int, int], bytes] = {}
    root_dev = st.st_dev

    def entry(name: bytes, typeflag: bytes, st: os.stat_result, **kw) -> bytes:
        return tar_header(name, typeflag, mode=st.st_mode, uid=ids.get(st.st_uid, st.st_uid),
                          gid=ids.get(st.st_gid, st.st_gid),
                          mtime=max(0, min(int(st.st_mtime), source_date_epoch)), **kw)

    sink.write(entry(b"rootfs", DIRTYPE, st))
    for path, name, st in _walk(root, b"rootfs"):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            sink.write(entry(name, DIRTYPE, st))
            continue
        if stat.S_ISSOCK(mode):
            continue
        if st.st_nlink > 1:
            key = st.st_ino if st.st_dev == root_dev else (st.st_dev, st.st_ino)
            first = links.get(key)
            if first is not None:
                sink.write(entry(name, LNKTYPE, st, linkname=first))
                continue
            links[key] = name
        device = placeholders.device_of(path, st) if stat.S_ISREG(mode) else None
        if device is not None:  # a device node kept where mknod was not allowed
            mode, rdev = device
            kind = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
            sink.write(entry(name, kind, st, devmajor=os.major(rdev), devminor=os.minor(rdev)))
        elif stat.S_ISREG(mode):
            sink.write(entry(name, REGTYPE, st, size=st.st_size))
            copy_file(sink, path, st.st_size, meter)
        elif stat.S_ISLNK(mode):
            sink.write(entry(name, SYMTYPE, st, linkname=os.fsencode(os.readlink(path))))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
            sink.write(entry(name, kind, st, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev)))
        elif stat.S_ISFIFO(mode):
            sink.write(entry(name, FIFOTYPE, st))


def write_manifest(sink: AciSink, manifest_json: bytes, mtime: int) -> None:
    sink.write(file_member(b"manifest", manifest_json, mtime=mtime))


def write_aci(
    out: Path,
    manifest_json: bytes,
    rootfs: Path,
    *,
    compression: str = "gzip",
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH,
    id_map: dict[int, int] | None = None,
    install: Callable[[Path], None] | None = None,
    reporter: Reporter = QUIET,
) -> str:
    """Write `rootfs` and the manifest bytes (verbatim) as the .aci `out`; return its image ID.
    `install`: see AciSink. `reporter` shows the progress of a write over a second."""
    with AciSink(Path(out), compression, install) as sink:
        try:
            total = tree_bytes(rootfs) if reporter.wants_total else None
            with reporter.meter(f"write {Path(out).name}", total) as meter:
                write_tree(sink, Path(rootfs), source_date_epoch, id_map, meter)
                write_manifest(sink, manifest_json, source_date_epoch)
        except OSError as e:
            raise ImageError(f"write {out}: {e}") from e
        return sink.commit()


def rewrite_aci(src: Path, out: Path, manifest_json: bytes, compression: str | None = None,
                install: Callable[[Path], None] | None = None) -> str:
    """Copy the rootfs entries of `src` (in their order, headers re-emitted in
    this module's dialect) into a new .aci `out` with `manifest_json` as its
    manifest; `compression` defaults to src's. `out` may be `src`. Returns the image ID."""
    from acbuild.aci.archive import copy_rootfs_entries, detect_file_compression

    comp = compression or detect_file_compression(Path(src))
    with AciSink(Path(out), comp, install) as sink:
        mtime = copy_rootfs_entries(Path(src), sink)
        write_manifest(sink, manifest_json, mtime)
        return sink.commit()
