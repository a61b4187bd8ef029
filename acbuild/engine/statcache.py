"""A stat cache for content hashes, as git's index: a file whose (size, mtime_ns,
inode, ctime_ns) did not change since it was hashed is not read again.

"Racily clean" files are not trusted (git's rule): when a file's mtime or ctime is
not older than the moment it was hashed minus RACY_NS, a later write in the same
clock tick could keep its stat unchanged, so it is hashed again next time.

Stored as one JSON file per context directory under CACHE/stat/. Contract: `save`
is atomic (temp + fsync + rename); two builds saving at once lose nothing that
matters (the loser's new entries are simply hashed again next time); a damaged
file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

RACY_NS = 100_000_000  # coarse kernel timestamps tick every few ms; stay well clear
_VERSION = 1


class StatCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        self.hashed = 0  # files read this build (for --debug and tests)
        if path is not None:
            try:
                data = json.loads(path.read_bytes())
                if data.get("version") == _VERSION:
                    self.entries = data["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                pass

    @classmethod
    def for_context(cls, cache_dir: Path | None, context: Path) -> StatCache:
        if cache_dir is None:
            return cls(None)
        name = hashlib.sha256(os.fsencode(context)).hexdigest()[:32] + ".json"
        return cls(cache_dir / "stat" / name)

    def digest(self, path: str, st: os.stat_result) -> str:
        """sha256 hex of a regular file's content, read only when its stat changed."""
        sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        entry = self.entries.get(path)
        if entry is not None and entry[:4] == sig:
            return entry[5]
        before = time.time_ns()
        digest = file_sha256(path)
        self.hashed += 1
        if max(st.st_mtime_ns, st.st_ctime_ns) < before - RACY_NS:
            self.entries[path] = [*sig, before, digest]
            self.dirty = True
        elif path in self.entries:
            del self.entries[path]
            self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        from acbuild.atomic import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"version": _VERSION, "entries": self.entries}, separators=(",", ":")).encode())
        self.dirty = False


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
