"""The trust store: which OpenPGP keys may sign which image names (the rkt model).

Layout. A store is an ordered list of roots, system first, user last:

    /etc/acbuild/trustedkeys                       (system, read-only for us)
    $XDG_CONFIG_HOME/acbuild/trustedkeys           (user; default ~/.config/...)

`--trust-dir DIR` or the environment variable ACBUILD_TRUST_DIR replaces *both*
with the single root DIR (tests and CI use that); `trust-dirs` in acbuild.toml
replaces them with its list. Each root holds

    root.d/<fingerprint>                           trusted for every image name
    prefix.d/<name prefix>/<fingerprint>           trusted for names under the prefix

where <fingerprint> is the lowercase 40-hex v4 fingerprint of the primary key and
the file holds that armored public key. An empty file in a later root masks the
file at the same relative path in earlier roots (how a user drops a system key);
`remove()` writes such masks when the key also lives in a root it may not edit.

Deliberate difference from rkt: rkt matches prefixes as plain strings, so a key
trusted for `example.com/hello` is also trusted for `example.com/helloworld`.
acbuild requires a path-segment boundary: the prefix must equal the name or be
followed in it by "/". Prefix `example.com` covers `example.com/hello`, but
`example.com/hello` does not cover `example.com/helloworld`.

Writes are atomic (temp file + fsync + rename) and idempotent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from acbuild.atomic import write_atomic
from acbuild.errors import NotFoundError, SignatureError, UsageError
from acbuild.records import dataclass
from acbuild.trust.gpg import FINGERPRINT_RE, KeyInfo, export_armored, scan_keys

# The documented ACIdentifier pattern (stricter than actool's check): no "//",
# no "..", so a prefix is always a clean relative path.
PREFIX_RE = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*$")


def check_prefix(prefix: str) -> str:
    """`prefix` if it is a valid image-name prefix, else UsageError."""
    if not PREFIX_RE.match(prefix):
        raise UsageError(
            f"bad prefix {prefix!r}: an image name prefix uses lower case letters, digits and"
            ' "-._~/" between them (e.g. example.com/hello)')
    return prefix


def covers(prefix: str, name: str) -> bool:
    """True if a key trusted for `prefix` may sign image `name` (segment boundary)."""
    return name == prefix or name.startswith(prefix + "/")


@dataclass(frozen=True)
class TrustedKey:
    fingerprint: str
    uids: tuple[str, ...]
    prefix: str | None  # None: a root key, trusted for every name
    path: Path

    @property
    def scope(self) -> str:
        return "every image (root)" if self.prefix is None else f"prefix {self.prefix}"


@dataclass(frozen=True)
class _Entry:
    fingerprint: str
    prefix: str | None
    path: Path


class TrustStore:
    """Trusted keys across `dirs` (system first; the last one is where writes go)."""

    def __init__(self, dirs: list[Path]):
        if not dirs:
            raise UsageError("no trust directory given")
        self.dirs = list(dirs)

    @property
    def writable(self) -> Path:
        return self.dirs[-1]

    def add(self, key_bytes: bytes, prefix: str | None, *, source: str = "key file") -> list[KeyInfo]:
        """Trust every public key in `key_bytes` for `prefix` (None: root). Returns the keys."""
        rel = _rel_dir(check_prefix(prefix) if prefix is not None else None)
        keys = scan_keys(key_bytes)
        if not keys:
            raise SignatureError(
                f"{source} holds no OpenPGP public key (export one with 'gpg --armor --export KEYID')")
        for key in keys:
            # A revoked key may only replace its own entry: that is how a revocation reaches the store.
            if key.revoked and not (self.writable / rel / key.fingerprint).is_file():
                raise SignatureError(f"{source}: key {key.fingerprint} ({key.uid}) is revoked; refusing to trust it")
        # Store each key alone and armored, under its own fingerprint, whatever the input held.
        for key, armored in zip(keys, export_armored(key_bytes, [k.fingerprint for k in keys])):
            _write_atomic(self.writable / rel / key.fingerprint, armored)
        return keys

    def list(self) -> list[TrustedKey]:
        """Every key in effect (masked ones left out), root keys first, then by prefix."""
        out = []
        for e in self._entries():
            infos = scan_keys(e.path.read_bytes())
            uids = infos[0].uids if infos else ()
            out.append(TrustedKey(e.fingerprint, uids, e.prefix, e.path))
        return sorted(out, key=lambda k: (k.prefix is not None, k.prefix or "", k.fingerprint))

    def remove(self, fingerprint: str) -> int:
        """Stop trusting `fingerprint` everywhere; returns how many entries were dropped."""
        fpr = fingerprint.lower().replace(" ", "")
        if not FINGERPRINT_RE.match(fpr):
            raise UsageError(f"bad fingerprint {fingerprint!r}: give the 40 hex digits 'acbuild trust --list' shows")
        entries = [e for e in self._entries() if e.fingerprint == fpr]
        if not entries:
            raise NotFoundError(f"key {fpr} is not trusted (see 'acbuild trust --list')")
        for e in entries:
            rel = e.path.relative_to(_root_of(e.path, self.dirs))
            mine = self.writable / rel
            try:
                mine.unlink(missing_ok=True)
            except OSError as err:
                raise SignatureError(f"remove {mine}: {err.strerror}") from err
            if any((d / rel).is_file() and (d / rel).stat().st_size for d in self.dirs[:-1]):
                _write_atomic(mine, b"")  # mask the copy we may not edit
        return len(entries)

    def keys_for(self, image_name: str) -> list[Path]:
        """Key files trusted for `image_name`: root keys and covering prefixes."""
        return [e.path for e in self._entries() if e.prefix is None or covers(e.prefix, image_name)]

    def trusted_for(self, image_name: str) -> list[TrustedKey]:
        return [k for k in self.list() if k.prefix is None or covers(k.prefix, image_name)]

    def _entries(self) -> Iterator[_Entry]:
        """Effective entries: later roots override (or mask, when empty) earlier ones."""
        found: dict[Path, tuple[Path, str | None]] = {}
        for root in self.dirs:
            for path, prefix in _scan_root(root):
                found[path.relative_to(root)] = (path, prefix)
        for rel in sorted(found):
            path, prefix = found[rel]
            if path.stat().st_size:
                yield _Entry(path.name, prefix, path)


def _rel_dir(prefix: str | None) -> Path:
    return Path("root.d") if prefix is None else Path("prefix.d", *prefix.split("/"))


def _root_of(path: Path, dirs: list[Path]) -> Path:
    return next(d for d in reversed(dirs) if path.is_relative_to(d))


def _scan_root(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(key file, prefix) pairs in one root; a non-fingerprint file name is an error."""
    root_d, prefix_d = root / "root.d", root / "prefix.d"
    candidates: list[tuple[Path, str | None]] = []
    if root_d.is_dir():
        candidates += [(p, None) for p in root_d.iterdir() if p.is_file()]
    if prefix_d.is_dir():
        for dirpath, _dirs, files in os.walk(prefix_d):
            prefix = Path(dirpath).relative_to(prefix_d).as_posix()
            candidates += [(Path(dirpath, f), prefix) for f in files if prefix != "."]
    for path, prefix in candidates:
        if path.name.startswith("."):
            continue  # our own temp files, editor droppings
        if not FINGERPRINT_RE.match(path.name):
            raise SignatureError(
                f"trust store: {path}: file name is not a lowercase 40-hex key fingerprint; remove or rename it")
        yield path, prefix


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as e:
        raise SignatureError(f"write {path}: {e.strerror} (use --trust-dir or ACBUILD_TRUST_DIR for another store)") from e
