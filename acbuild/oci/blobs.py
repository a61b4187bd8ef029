"""Content digests and the content-addressed blob cache.

A digest is `ALGO:HEX` (sha256 or sha512). `DigestReader` hashes what is read
through it and `check()` refuses a stream whose bytes do not match, so a blob
is verified while it streams, never after a second read.

BlobCache contract: a blob is stored at `ROOT/ALGO/HEX` only once its bytes
have been checked against the digest (temp file beside it, fsync, rename), so
everything in the cache is trusted by name and an interrupted download leaves
nothing behind. Putting the same blob twice is harmless (idempotent).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from acbuild.atomic import fsync_dir
from acbuild.errors import ImageError

CHUNK = 1 << 20
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def check_digest_syntax(digest: str, where: str = "") -> tuple[str, str]:
    """(algorithm, hex) of a well-formed digest; ImageError otherwise (it came from an image)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"{where}bad digest {digest!r}")
    algo, _, hexpart = digest.partition(":")
    return algo, hexpart


def digest_of(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


class Digester:
    """Hashes and counts bytes as they pass; `check()` refuses a wrong size or digest."""

    def __init__(self, digest: str, size: int | None = None, what: str = "blob"):
        self.algo, self.expected_hex = check_digest_syntax(digest)
        self.digest = digest
        self.hash = hashlib.new(self.algo)
        self.count = 0
        self.size = size if size is not None and size >= 0 else None
        self.what = what

    def update(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise ImageError(f"{self.what} {self.digest}: more than the {self.size} bytes declared")

    def check(self) -> None:
        if self.size is not None and self.count != self.size:
            raise ImageError(f"{self.what} {self.digest}: {self.count} bytes, {self.size} declared")
        got = self.hash.hexdigest()
        if got != self.expected_hex:
            raise ImageError(f"{self.what} {self.digest}: digest mismatch (content is {self.algo}:{got})")


class DigestReader:
    """A reader that feeds every byte read to a Digester; `check()` reads the
    rest and verifies (so a tar reader that stops early still checks it all)."""

    def __init__(self, inner: BinaryIO, digest: str, size: int | None = None, what: str = "blob"):
        self.inner = inner
        self.digester = Digester(digest, size, what)

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.digester.update(data)
        return data

    def check(self) -> None:
        while self.read(CHUNK):
            pass
        self.digester.check()


def read_verified(f: BinaryIO, digest: str, size: int | None = None, limit: int = 64 << 20,
                  what: str = "blob") -> bytes:
    """All of a small blob (manifest, config), checked against its digest."""
    reader = DigestReader(f, digest, size, what)
    data = reader.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{what} {digest}: larger than {limit} bytes")
    reader.check()
    return data


class BlobCache:
    """Blobs by digest under `root` (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        algo, hexpart = check_digest_syntax(digest)
        return self.root / algo / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_chunks(self, chunks: Iterable[bytes], digest: str, size: int | None = None,
                   what: str = "blob") -> Path:
        """Store the bytes of `chunks`, verifying them as they come; ImageError on a
        mismatch (and nothing is stored). Returns the blob's path."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name[:16]}.", suffix=".part", dir=final.parent)
        tmp = Path(name)
        try:
            digester = Digester(digest, size, what)
            with os.fdopen(fd, "wb") as out:
                for data in chunks:
                    digester.update(data)
                    out.write(data)
                digester.check()
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        return final

    def put_file(self, f: BinaryIO, digest: str, size: int | None = None, what: str = "blob") -> Path:
        return self.put_chunks(iter(lambda: f.read(CHUNK), b""), digest, size, what)

    def put_bytes(self, data: bytes, digest: str, what: str = "blob") -> Path:
        return self.put_chunks([data], digest, len(data), what)

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()
