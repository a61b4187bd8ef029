"""A stat cache for content hashes, as git's index: a file whose (size, mtime_ns,
inode, ctime_ns) did not change since it was hashed is not read again.

"Racily clean" files are not trusted (git's rule): when a file's mtime or ctime is
not older than the moment it was hashed minus RACY_NS, a later write in the same
clock tick could keep its stat unchanged, so it is hashed again next time.

Stored as one marshal file per context directory under CACHE/stat/ (20,000 entries
load in a few ms, against ~30 ms as JSON; unlike pickle, loading runs no code), in
the user's own cache dir. Contract: `save`
is atomic (temp + fsync + rename); two builds saving at once lose nothing that
matters (the loser's new entries are simply hashed again next time); a damaged
file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import time
from pathlib import Path

RACY_NS = 100_000_000  # coarse kernel timestamps tick every few ms; stay well clear
_VERSION = 2


class StatCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        self.hashed = 0  # files read this build (for --debug and tests)
        if path is not None:
            try:
                data = marshal.loads(path.read_bytes())
                if data.get("version") == _VERSION:
                    self.entries = data["entries"]
            except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
                pass

    @classmethod
    def for_context(cls, cache_dir: Path | None, context: Path) -> StatCache:
        if cache_dir is None:
            return cls(None)
        name = hashlib.sha256(os.fsencode(context)).hexdigest()[:32] + ".marshal"
        return cls(cache_dir / "stat" / name)

    def digest(self, path: str, st: os.stat_result) -> str:
        """sha256 hex of a regular file's content, read only when its stat changed."""
        entry = self.entries.get(path)
        if entry is not None and entry[0] == st.st_size and entry[1] == st.st_mtime_ns and entry[2] == st.st_ino \
                and entry[3] == st.st_ctime_ns:
            return entry[5]
        sig = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
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
        write_atomic(self.path, marshal.dumps({"version": _VERSION, "entries": self.entries}))
        self.dirty = False


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
