"""A gzip writer that compresses on every CPU, as pigz does, with output that
does not depend on the number of threads or on timing.

The deflate engine is ISA-L (python-isal, pinned in pyproject.toml) at its default
level 2: 10-15x zlib level 6's speed on the same data for output 3-4% larger, which
makes the write limited by reading and hashing rather than by compression on 2 CPUs
(README "Performance"). Deflate output is not specified by the format: the bytes
are the same for the same pinned isal version on x86-64 (every CPU from SSE4.2 on
runs the same kernels); another version or architecture may give other, equally
valid bytes. The image ID hashes the uncompressed tar and never changes with them.

The input is cut into fixed BLOCK-sized pieces. Each piece is deflated on its
own, primed with the previous piece's last 32 KiB as dictionary (so matches
across the cut still work), and ended with a sync flush (byte-aligned, not
final); the last piece ends the stream. The pieces concatenate into one raw
deflate stream inside one gzip member. zlib releases the GIL while it works,
so threads give real parallelism; at most 2 pieces per thread are in flight,
which keeps memory flat.

The header is Go's: no name, MTIME 0, XFL 0, OS 255.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from typing import TYPE_CHECKING, BinaryIO

import isal
from isal import isal_zlib

if TYPE_CHECKING:
    from concurrent.futures import Future

BLOCK = 1 << 20
WINDOW = 1 << 15
LEVEL = 2  # ISA-L's default (levels 0-3)
# What makes these bytes, for keys of stored outputs (engine.cache's final images):
# another isal version or level may compress differently. No dots: part of file names.
ENCODER = "isal" + isal.__version__.replace(".", "_") + f"-l{LEVEL}"
HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


def _deflate(level: int, data: bytes, zdict: bytes, last: bool) -> bytes:
    if zdict:
        c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=zdict)
    else:
        c = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ParallelGzipWriter:
    """write()/close() like gzip.GzipFile; close() writes the trailer and
    leaves `raw` open (the caller owns it)."""

    def __init__(self, raw: BinaryIO, level: int = LEVEL, threads: int | None = None):
        self._raw = raw
        self._level = level
        self._threads = max(1, threads or cpu_count())
        from concurrent.futures import ThreadPoolExecutor  # here: 4 ms that reading and the encoder name do not need

        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="pgzip")
        self._pending: deque[Future[bytes]] = deque()
        self._buf = bytearray()
        self._zdict = b""
        self._crc = 0
        self._size = 0
        self._closed = False
        raw.write(HEADER)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._buf += data
        while len(self._buf) >= BLOCK:
            piece = bytes(self._buf[:BLOCK])
            del self._buf[:BLOCK]
            self._submit(piece, last=False)
        return len(data)

    def _submit(self, piece: bytes, last: bool) -> None:
        self._pending.append(self._pool.submit(_deflate, self._level, piece, self._zdict, last))
        self._zdict = piece[-WINDOW:]
        while len(self._pending) > 2 * self._threads:
            self._raw.write(self._pending.popleft().result())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(bytes(self._buf), last=True)
            while self._pending:
                self._raw.write(self._pending.popleft().result())
            self._raw.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing the stream (the caller discards the file)."""
        self._closed = True
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def gunzip_reader(raw: BinaryIO) -> BinaryIO:
    """A reader of what the gzip stream `raw` holds (several members too), inflated by
    ISA-L: 2-3x zlib's speed. A corrupt stream raises gzip.BadGzipFile (an OSError), a
    truncated one EOFError, as gzip.GzipFile does. Closing it leaves `raw` open."""
    from isal import igzip

    if not hasattr(raw, "readinto"):  # IGzipFile reads with readinto
        raw = _ReadInto(raw)  # type: ignore[assignment]
    return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


class _ReadInto:
    """readinto() for a reader that has only read()."""

    def __init__(self, inner):
        self._inner = inner

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def readinto(self, buffer) -> int:
        data = self._inner.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
