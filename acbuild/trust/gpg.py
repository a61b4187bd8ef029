"""GnuPG plumbing shared by signing, the trust store and verification.

Everything goes through python-gnupg over the real `gpg` binary. Trust decisions
never use the user's keyring: callers that need keys (scanning, verifying) get a
throwaway GNUPGHOME from `scratch_home()`, which also stops any gpg-agent started
there, so no process outlives the call.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from acbuild.errors import SignatureError
from acbuild.records import dataclass

if TYPE_CHECKING:
    import gnupg

GPG_BINARY = "gpg"
INSTALL_HINT = "install GnuPG (Debian: apt-get install gnupg)"
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class KeyInfo:
    """One public key as found in a key file: the primary key and its subkeys."""

    fingerprint: str  # lowercase 40-hex v4 fingerprint of the primary key
    uids: tuple[str, ...]
    subkey_fingerprints: tuple[str, ...] = ()
    expires: int | None = None  # seconds since the epoch, None = never
    revoked: bool = False

    @property
    def uid(self) -> str:
        return self.uids[0] if self.uids else "(no user id)"

    def matches(self, key_id: str | None) -> bool:
        """True if `key_id` (16-hex key id or 40-hex fingerprint) names this key or a subkey."""
        if not key_id:
            return False
        key_id = key_id.lower()
        return any(fpr.endswith(key_id) for fpr in (self.fingerprint, *self.subkey_fingerprints))


def open_gpg(home: Path | None = None, *, options: list[str] | None = None) -> gnupg.GPG:
    """A python-gnupg handle on `home` (None: gpg's own default, GNUPGHOME or ~/.gnupg)."""
    import gnupg

    if shutil.which(GPG_BINARY) is None:
        raise SignatureError(f"gpg not found on PATH: {INSTALL_HINT}")
    if home is not None and not home.is_dir():
        raise SignatureError(f"gpg home {home} is not a directory (check --gpg-home or gpg-home in acbuild.toml)")
    try:
        return gnupg.GPG(gpgbinary=GPG_BINARY, gnupghome=str(home) if home else None, options=options)
    except (OSError, ValueError) as e:
        raise SignatureError(f"cannot run gpg: {e}: {INSTALL_HINT}") from e


@contextmanager
def scratch_home() -> Iterator[Path]:
    """A private, empty GNUPGHOME, removed (and its agent stopped) on exit.

    Made under /tmp because gpg-agent's socket path must stay short."""
    home = Path(tempfile.mkdtemp(prefix="acbuild-gpg.", dir="/tmp"))
    try:
        yield home
    finally:
        stop_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent of `home`, if one runs (harmless when none does)."""
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False)


def scan_keys(data: bytes) -> list[KeyInfo]:
    """The public keys in `data` (armored or binary), without importing them anywhere."""
    with scratch_home() as home:
        result = open_gpg(home).scan_keys_mem(data)
    keys = []
    for k in result:
        if k.get("type") != "pub":
            continue  # secret key blocks are refused: a trust store holds public keys
        subs = tuple(s[2].lower() for s in k.get("subkeys", []) if len(s) > 2 and s[2])
        expires = int(k["expires"]) if k.get("expires") else None
        keys.append(KeyInfo(
            fingerprint=k["fingerprint"].lower(),
            uids=tuple(u for u in k.get("uids", []) if u),
            subkey_fingerprints=subs,
            expires=expires,
            revoked=k.get("trust") == "r",
        ))
    return keys


def last_gpg_message(stderr: str) -> str:
    """gpg's last human-readable line ("gpg: ..."), for error messages."""
    lines = [ln[5:].strip() for ln in stderr.splitlines() if ln.startswith("gpg: ")]
    return lines[-1] if lines else (stderr.strip().splitlines() or ["no output"])[-1]


def export_armored(data: bytes, fingerprints: list[str]) -> list[bytes]:
    """Each key of `fingerprints` from `data`, alone and ASCII-armored (for the trust store)."""
    with scratch_home() as home:
        gpg = open_gpg(home)
        result = gpg.import_keys(data)
        if not result.count:
            raise SignatureError(f"gpg could not import the key: {last_gpg_message(result.stderr)}")
        out = []
        for fpr in fingerprints:
            armored = gpg.export_keys(fpr.upper(), armor=True)
            if not armored:
                raise SignatureError(f"gpg could not export key {fpr}")
            out.append(armored.encode("ascii"))
        return out
