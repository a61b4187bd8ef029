"""The step cache cannot be poisoned by a race: a file rewritten while COPY
reads it made a cache entry keyed by content X that held content Y, and a later
build of X got Y's image. A real race: a writer process rewrites a big file in
place, alternating two contents, while builds run against the cache; then the
file is left at each content in turn, and a build from that cache must give the
image ID of a clean build of the same content. Bounded in time (a few builds)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from tests.hostile import acbuild, write

SIZE = 8 << 20
CONTENT = {"A": b"A" * SIZE, "B": b"B" * SIZE}


def _flip(path: str, stop) -> None:
    """Rewrite `path` in place, A then B then A..., until told to stop."""
    fd = os.open(path, os.O_WRONLY)
    try:
        while not stop.is_set():
            for data in CONTENT.values():
                for off in range(0, SIZE, 1 << 20):
                    os.pwrite(fd, data[off:off + (1 << 20)], off)
    finally:
        os.close(fd)


def build(ctx: Path, cache: Path, out: str, *extra) -> str:
    result = acbuild("build", "-q", "-f", ctx / "ACIfile", "-o", ctx.parent / out, "--cache-dir", cache, *extra,
                     timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_file_changed_during_copy_never_poisons_the_cache(tmp_path):
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/race\nCOPY big /big\nLABEL step=after\n")
    big = write(ctx / "big", CONTENT["A"])
    cache = tmp_path / "cache"
    stop = multiprocessing.Event()
    writer = multiprocessing.Process(target=_flip, args=(str(big), stop))
    writer.start()
    try:
        deadline = time.monotonic() + 40
        builds = 0
        while builds < 12 and time.monotonic() < deadline:
            build(ctx, cache, f"racy{builds}.aci")
            builds += 1
    finally:
        stop.set()
        writer.join(10)
    for name, data in CONTENT.items():
        big.write_bytes(data)  # a new mtime: the stat cache re-reads it
        cached = build(ctx, cache, f"cached-{name}.aci")
        clean = build(ctx, tmp_path / f"clean-{name}", f"clean-{name}.aci")
        assert cached == clean, f"content {name}: the cache gave {cached}, a clean build {clean}"
