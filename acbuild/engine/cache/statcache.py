"""A stat cache for content hashes, as git's index: a file whose (size, mtime_ns,
inode, ctime_ns) did not change since it was hashed is not read again.

"Racily clean" files are not trusted (git's rule): when a file's mtime or ctime is
not older than the moment it was hashed minus RACY_NS, a later write in the same
clock tick could keep its stat unchanged, so it is hashed again next time.

Stored as one marshal file per context directory under CACHE/stat/ (20,000 entries
load in a few ms, against ~30 ms as JSON; unlike pickle, loading runs no code), in
the user's own cache dir. An entry is one 64-byte string, the four stat fields and
the sha256 packed: 100,000 files cost ~25 MiB in memory, where lists of numbers and
hex strings cost ~55. A build moves each entry it looks at from the loaded table to
the table of this build (`digest_of` reads that one: the digests the keys were made
from, which the COPY's read check compares with), so no file is held twice.
Contract: `save` is atomic (temp + fsync + rename); two
builds saving at once lose nothing that matters (the loser's new entries are simply
hashed again next time); a damaged file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
import time
from pathlib import Path

RACY_NS = 100_000_000  # coarse kernel timestamps tick every few ms; stay well clear
_VERSION = 3
_SIG = struct.Struct("<QqQq")  # size, mtime_ns, inode, ctime_ns
SIG_SIZE = _SIG.size
pack_sig = _SIG.pack


class StatCache:
    def __init__(self, path: Path | None):
        self.path = path
        self.previous: dict[str, bytes] = {}  # loaded, not yet looked at by this build
        self.entries: dict[str, bytes] = {}  # looked at by this build: path -> sig + sha256
        self.racy: dict[str, str] = {}  # hashed by this build, not to be trusted next time
        self.hashed = 0  # files read this build (for --debug and tests)
        self.dirty = False
        if path is not None:
            try:
                data = marshal.loads(path.read_bytes())
                if data.get("version") == _VERSION:
                    self.previous = data["entries"]
            except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
                pass

    @classmethod
    def for_context(cls, cache_dir: Path | None, context: Path) -> StatCache:
        if cache_dir is None:
            return cls(None)
        name = hashlib.sha256(os.fsencode(context)).hexdigest()[:32] + ".marshal"
        return cls(cache_dir / "stat" / name)

    def known(self, path: str, sig: bytes) -> bytes | None:
        """The entry of `path` if its stat is still `sig` (pack_sig of it), moved to this
        build's table; None if the file must be read. KeyMaker's walk inlines this."""
        entry = self.entries.get(path) or self.previous.pop(path, None)
        if entry is not None and entry.startswith(sig):
            self.entries[path] = entry
            return entry
        return None

    def digest(self, path: str, st: os.stat_result) -> str:
        """sha256 hex of a regular file's content, read only when its stat changed."""
        sig = pack_sig(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        entry = self.known(path, sig)
        if entry is not None:
            return entry[SIG_SIZE:].hex()
        return self.hash(path, st, sig)

    def hash(self, path: str, st: os.stat_result, sig: bytes) -> str:
        """Read the file (its stat was `sig`) and remember its sha256 hex."""
        before = time.time_ns()
        digest = file_sha256(path)
        self.hashed += 1
        self.entries.pop(path, None)
        self.racy.pop(path, None)
        if max(st.st_mtime_ns, st.st_ctime_ns) < before - RACY_NS:
            self.entries[path] = sig + bytes.fromhex(digest)
        else:
            self.racy[path] = digest
        self.dirty = True
        return digest

    def begin_child(self) -> None:
        """In a forked walker: fresh tables, so that `entries` becomes what it looks at;
        what the parent had is kept aside, to tell its entries from new ones."""
        self._had = (self.previous, self.entries)
        self.previous, self.entries, self.racy, self.hashed = {**self.previous, **self.entries}, {}, {}, 0

    def child_result(self) -> tuple:
        """What a forked walker passes back to `absorb`: the paths of the parent's entries
        it found still valid, its new entries, its racy digests, the files it read."""
        had, had_too = self._had
        hits, new = [], {}
        for path, entry in self.entries.items():
            if had.get(path) is entry or had_too.get(path) is entry:
                hits.append(path)
            else:
                new[path] = entry
        return hits, new, self.racy, self.hashed

    def absorb(self, result: tuple) -> None:
        """Take a forked walker's child_result in, as if this process had looked."""
        hits, new, racy, hashed = result
        for path in hits:  # moved, as the walk moves a hit
            entry = self.previous.pop(path, None)
            if entry is not None:
                self.entries[path] = entry
        for path, entry in new.items():
            self.previous.pop(path, None)
            self.entries[path] = entry
        for path, digest in racy.items():
            self.previous.pop(path, None)
            self.entries.pop(path, None)
            self.racy[path] = digest
        self.hashed += hashed
        self.dirty = self.dirty or bool(hashed)

    def digest_of(self, path: str) -> str | None:
        """The sha256 hex this build used for `path`, or None if it never looked at it."""
        entry = self.entries.get(path)
        return entry[SIG_SIZE:].hex() if entry is not None else self.racy.get(path)

    def save(self) -> None:
        """Keep the entries, the loaded ones this build did not look at too (another
        ACIfile or target in the same context may need them)."""
        if self.path is None or not self.dirty:
            return
        from acbuild.atomic import write_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Merged only in the file: digest_of must know just what this build looked at.
        write_atomic(self.path, marshal.dumps({"version": _VERSION, "entries": {**self.previous, **self.entries}}))
        self.dirty = False


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
