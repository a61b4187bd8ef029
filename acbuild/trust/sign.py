"""Signing: detached ASCII-armored OpenPGP signatures over the exact .aci bytes.

Contract for whoever writes images (`write --sign`, `build --sign`):

    tmp = <image written, fsynced, in out's directory>
    publish(tmp, out, signing)        # signing: SigningOptions or None

`publish` signs the temp file *before* anything is renamed, then replaces the
pair in an order that never leaves a fresh .aci beside a stale .asc (see
`replace_together`). On any error the temp files are removed and the old pair
is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.atomic import fsync_dir, temp_beside
from acbuild.errors import NotFoundError, SignatureError
from acbuild.records import dataclass
from acbuild.report import Reporter


@dataclass(frozen=True)
class SigningOptions:
    key: str | None = None  # key id, fingerprint or user id; None: gpg's default key
    gpg_home: Path | None = None  # None: GNUPGHOME or ~/.gnupg
    passphrase: str | None = None  # None: gpg-agent/pinentry decides


def signature_path(image: Path) -> Path:
    return image.with_name(image.name + ".asc")


def detached_signature(path: Path, *, key: str | None = None, gpg_home: Path | None = None,
                       passphrase: str | None = None) -> bytes:
    """An armored detached signature over the bytes of `path` (nothing written)."""
    from acbuild.trust.gpg import open_gpg  # here: publishing a cached image signs nothing

    gpg = open_gpg(gpg_home)
    where = f" in {gpg_home}" if gpg_home else ""
    if not gpg.list_keys(True, keys=[key] if key else None):
        what = f"secret key {key!r}" if key else "secret key"
        raise SignatureError(
            f"no {what}{where}: create one with 'gpg --quick-gen-key', or pass --key/--gpg-home")
    if key:
        for pub in gpg.list_keys(keys=[key]):
            state = {"e": "has expired: extend it (gpg --quick-set-expire FPR 1y) or use another --key",
                     "r": "is revoked: use another --key"}.get(pub.get("trust", ""))
            if state:
                raise SignatureError(f"key {key!r} ({pub['fingerprint'].lower()}) {state}")
    extra = ["--local-user", key] if key else []  # -u fails when the key is unusable; --default-key does not
    try:
        with open(path, "rb") as f:
            result = gpg.sign_file(f, keyid=key, passphrase=passphrase, detach=True, extra_args=extra)
    except OSError as e:
        raise SignatureError(f"read {path}: {e.strerror}") from e
    except ValueError as e:  # python-gnupg refuses passphrases with newlines
        raise SignatureError(f"bad passphrase: {e}") from e
    if result.status == "signature created" and result.data:
        return result.data
    raise SignatureError(_explain(result.stderr, key))


def _explain(stderr: str, key: str | None) -> str:
    who = f"key {key!r}" if key else "the default key"
    if "Bad passphrase" in stderr:
        return f"wrong passphrase for {who} (check --passphrase-file)"
    if any(s in stderr for s in ("No passphrase given", "Inappropriate ioctl", "No pinentry", "Operation cancelled")):
        return f"{who} is protected by a passphrase: pass --passphrase-file FILE (or unlock it in gpg-agent)"
    if "No secret key" in stderr or "INV_SGNR" in stderr:
        return f"no usable secret key for {who}: check --key and --gpg-home"
    if "expired" in stderr:
        return f"{who} has expired: extend it (gpg --quick-set-expire) or use another --key"
    from acbuild.trust.gpg import last_gpg_message

    return f"signing failed: {last_gpg_message(stderr)}"


def sign_file(path: Path, *, key: str | None = None, gpg_home: Path | None = None,
              passphrase: str | None = None) -> Path:
    """Sign an existing image: write `path`.asc atomically and return its path."""
    if not path.is_file():
        raise NotFoundError(f"{path}: no such image")
    sig = detached_signature(path, key=key, gpg_home=gpg_home, passphrase=passphrase)
    out = signature_path(path)
    try:
        with temp_beside(out, sig) as tmp:
            os.replace(tmp, out)
    except OSError as e:
        raise SignatureError(f"write {out}: {e.strerror}") from e
    fsync_dir(out.parent)
    return out


def publish(new_aci_tmp: Path, out: Path, signing: SigningOptions | None, *, reporter: Reporter) -> Path | None:
    """Move a finished temp image to `out`, signed when `signing` is given; returns the .asc."""
    try:
        if signing is None:
            replace_together(new_aci_tmp, None, out, reporter=reporter)
            return None
        sig = detached_signature(new_aci_tmp, key=signing.key, gpg_home=signing.gpg_home,
                                 passphrase=signing.passphrase)
        try:
            with temp_beside(signature_path(out), sig) as asc_tmp:
                replace_together(new_aci_tmp, asc_tmp, out, reporter=reporter)
        except OSError as e:
            raise SignatureError(f"write {signature_path(out)}: {e.strerror}") from e
        reporter.info(f"signed: wrote {signature_path(out)}")
        return signature_path(out)
    except BaseException:
        new_aci_tmp.unlink(missing_ok=True)
        raise


def replace_together(new_aci_tmp: Path, new_asc_tmp: Path | None, out: Path, *, reporter: Reporter) -> None:
    """Install a new image (and its signature, if any) at `out`, `out`.asc.

    Order: drop the old .asc, rename the image, rename the new .asc. A crash at
    any point leaves either the old image unsigned or the new image unsigned,
    never an image beside a signature made for other bytes. Both temp files must
    be in out's directory (rename is atomic only within one file system).
    """
    old_asc = signature_path(out)
    try:
        drop_stale_signature(out, reporter=reporter, replaced=new_asc_tmp is not None)
        os.replace(new_aci_tmp, out)
        if new_asc_tmp is not None:
            os.replace(new_asc_tmp, old_asc)
    except OSError as e:
        raise SignatureError(f"write {out}: {e.strerror}") from e
    fsync_dir(out.parent)


def drop_stale_signature(out: Path, *, reporter: Reporter, replaced: bool = False) -> bool:
    """Remove `out`.asc before `out` is rewritten: it signs the old bytes. Said
    aloud unless a new signature takes its place. Every writer of an existing
    image calls this first (build, write, pack, patch-manifest, --modify)."""
    old_asc = signature_path(out)
    try:
        old_asc.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise SignatureError(f"remove {old_asc}: {e.strerror}") from e
    if not replaced:
        reporter.note(f"removed {old_asc}: it signed the old {out.name} (re-sign with 'acbuild sign')")
    return True
