"""A stream read one chunk ahead by a second thread.

Inflating and hashing release the GIL, so a thread that calls them for the next
chunks overlaps with the tar parsing and file creation of the reader. Extraction
(`aci/archive.py`) and the OCI squash (`oci/squash.py`) both read this way."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

CHUNK = 1 << 20
DEPTH = 4  # chunks read ahead of the reader (memory: DEPTH + 2 chunks)


class ReadAhead:
    """`read(CHUNK)` called by a thread until it returns b"". `read(n)` returns at
    most one chunk (n < 0: the rest of the current one); the thread's failure is
    raised here, in the reader, where it reaches it. close() stops and joins the
    thread: call it before closing what `read` reads from."""

    def __init__(self, read: Callable[[int], bytes], *, name: str, depth: int = DEPTH):
        self._chunks: queue.Queue = queue.Queue(depth)
        self._rest = memoryview(b"")
        self._ended = False
        self._stop = False
        self._thread = threading.Thread(target=self._produce, args=(read,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, read: Callable[[int], bytes]) -> None:
        try:
            while not self._stop:
                data = read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as err:  # handed to the reader
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop:  # a timeout, so that close() ends a thread blocked on a full queue
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def read(self, n: int = -1) -> bytes:
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
        self._stop = True
        self._thread.join()
