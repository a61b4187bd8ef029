"""The parallel gzip writer (acbuild/aci/pgzip.py): a valid gzip whose bytes do not
depend on the thread count or on how the input was cut into writes, and cached
final images keyed by the deflate engine that made them."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import zlib

import pytest
from acbuild.aci import pgzip
from acbuild.aci.writer import encoder
from acbuild.engine.cache.stepcache import StepCache


def sample(size: int) -> bytes:
    """Compressible but not trivial: words from a small vocabulary, and random bytes."""
    rng = random.Random(15)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=200)) + b"\n" + rng.randbytes(64)
    return bytes(out[:size])


def compress(data: bytes, threads: int, write_size: int) -> bytes:
    raw = io.BytesIO()
    w = pgzip.ParallelGzipWriter(raw, threads=threads)
    for i in range(0, len(data), write_size):
        w.write(data[i:i + write_size])
    w.close()
    return raw.getvalue()


@pytest.mark.parametrize("size", [0, 1, pgzip.BLOCK - 1, pgzip.BLOCK, 3 * pgzip.BLOCK + 12345])
def test_same_bytes_whatever_the_threads_and_writes(size):
    data = sample(size)
    outputs = {compress(data, threads, write) for threads, write in ((1, 1 << 20), (2, 4096), (4, 777_777), (3, 10**7))}
    assert len(outputs) == 1
    out = outputs.pop()
    assert gzip.decompress(out) == data
    assert out[:10] == pgzip.HEADER  # Go's header: no name, MTIME 0, OS 255
    # one member: the trailer's CRC and size are of the whole input
    assert zlib.crc32(data) == int.from_bytes(out[-8:-4], "little")
    assert len(data) == int.from_bytes(out[-4:], "little")


def test_pieces_share_the_window():
    """Each piece is primed with the previous 32 KiB: data repeating across a cut
    compresses as well as data repeating inside a piece."""
    block = sample(pgzip.BLOCK)
    twice = compress(block + block, 2, 1 << 16)
    once = compress(block, 2, 1 << 16)
    assert len(twice) < 2 * len(once)


def test_cached_images_are_keyed_by_the_deflate_engine(tmp_path):
    """A final image stored by another engine (e.g. zlib, before ISA-L) is not served:
    its bytes would differ from what this version writes."""
    assert encoder("gzip") == f"gzip-{pgzip.ENCODER}" and "." not in encoder("gzip")
    cache = StepCache(tmp_path / "cache")
    aci, info = cache._image_paths("k" * 64, "gzip")
    assert pgzip.ENCODER in aci.name and aci.suffix == ".aci" and info.suffix == ".json"
    assert cache._image_paths("k" * 64, "xz")[0].name == "k" * 64 + "-xz.aci"


def test_digest_of_output_is_stable():
    """A fixed input and this pinned isal give fixed bytes (README: which versions).
    If isal is upgraded this digest changes: update it with the README's note."""
    out = compress(sample(2 * pgzip.BLOCK + 5), 2, 1 << 20)
    assert hashlib.sha256(out).hexdigest() == EXPECTED


EXPECTED = "0783984fd0297d59e7ba8cf0102da8bb988dfe7967d4e9f7917585e59ae01212"  # isal 1.9.1 (ISA-L 2.32.1), x86-64
