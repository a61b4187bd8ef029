"""Verification: is this .aci signed by a key trusted for its name?

Only the keys the trust store holds for the image name are imported, into a
throwaway GNUPGHOME, so the user's own keyring and its web of trust never decide
anything. gpg then checks the detached signature over the exact file bytes.
Every refusal is a SignatureError whose message names the reason: no signature,
unknown signer, signer trusted for another prefix, bad signature, expired key,
revoked key.

For the engine (`FROM`, `begin`, `launch`): `check_image()` applies the policy
(verify when a signature is present or required; skip only when asked).
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.errors import ImageError, NotFoundError, SignatureError
from acbuild.records import dataclass
from acbuild.trust.gpg import KeyInfo, last_gpg_message, open_gpg, scan_keys, scratch_home
from acbuild.trust.sign import signature_path
from acbuild.trust.store import TrustedKey, TrustStore


@dataclass(frozen=True)
class Signer:
    fingerprint: str  # primary key, lowercase 40-hex
    uid: str  # primary user id, e.g. "Alice <alice@example.com>"
    key_id: str  # the (sub)key that made the signature
    trusted_for: str | None  # the prefix that made it trusted; None = root key
    signed_at: int | None = None  # seconds since the epoch

    def __str__(self) -> str:
        return f"{self.uid} ({self.fingerprint})"


def image_name_of(aci: Path) -> str:
    """The `name` in the image's manifest, decoded exactly as everything else in
    acbuild (and Go) decodes it: keys match case-insensitively and the last one
    wins. A reader of its own could be shown {"name": A, "NAME": B} and check the
    keys for A while the image is used as B."""
    from acbuild.aci.archive import read_aci
    from acbuild.aci.manifest import ImageManifest
    from acbuild.errors import ManifestError

    try:
        return ImageManifest.from_json(read_aci(aci).manifest_bytes or b"null").name
    except ManifestError as e:
        raise ImageError(e.message, path=aci) from e


def name_for_verification(aci: Path, signature: Path | None, store: TrustStore) -> str:
    """The image name, or, for an image that cannot be read but has a signature,
    the verdict on its bytes: a damaged or tampered image is a bad signature,
    which is the reason to report, not the unreadable manifest it causes."""
    try:
        return image_name_of(aci)
    except ImageError:
        sig = signature or signature_path(aci)
        if sig.is_file() and _gpg_verify(aci, sig, store.list()).status == "signature bad":
            raise SignatureError(
                "bad signature: the image does not match its signature (modified after signing?)", path=aci) from None
        raise


def verify_image(aci: Path, signature: Path | None, image_name: str, store: TrustStore) -> Signer:
    """Check `signature` (default: `aci`.asc) against the keys trusted for `image_name`."""
    if not aci.is_file():
        raise NotFoundError("no such image", path=aci)
    sig = signature or signature_path(aci)
    if not sig.is_file():
        raise SignatureError(
            f"no signature ({sig} does not exist): sign it with 'acbuild sign'", path=aci)
    trusted = store.trusted_for(image_name)
    return _judge(_gpg_verify(aci, sig, trusted), aci, image_name, store, trusted)


def _gpg_verify(aci: Path, sig: Path, keys: list[TrustedKey]):
    """gpg's verdict on `sig` over `aci`, knowing only `keys` (a throwaway home)."""
    with scratch_home() as home:
        gpg = open_gpg(home)
        for key in keys:
            result = gpg.import_keys(key.path.read_bytes())
            got = [f.lower() for f in result.fingerprints]
            if got != [key.fingerprint]:
                raise SignatureError(
                    f"trust store: {key.path} holds key {', '.join(got) or 'none'}, not {key.fingerprint}; remove it")
        with open(sig, "rb") as f:
            return gpg.verify_file(f, data_filename=str(aci))


def _judge(result, aci: Path, name: str, store: TrustStore, trusted: list[TrustedKey]) -> Signer:
    key_id = (result.fingerprint or result.key_id or "").lower()
    if result.status == "signature bad":
        raise SignatureError("bad signature: the image does not match its signature (modified after signing?)", path=aci)
    if result.status == "no public key":
        elsewhere = [k for k in store.list() if _info(k).matches(key_id)]
        if elsewhere:
            k = elsewhere[0]
            raise SignatureError(
                f"signer {k.uids[0] if k.uids else ''} ({k.fingerprint}) is trusted for prefix "
                f"{k.prefix}, not for {name}", path=aci)
        raise SignatureError(
            f"unknown signer: {_name_signer(key_id)} is not trusted for {name} "
            f"(trust it with 'acbuild trust --prefix {name} KEYFILE')", path=aci)
    primary = (result.pubkey_fingerprint or result.fingerprint or "").lower()
    who = f"{result.username or '?'} ({primary or key_id})"
    if result.key_status == "signing key has expired":
        raise SignatureError(f"key {who} has expired; ask the signer for a fresh signature or key", path=aci)
    if result.key_status == "signing key was revoked":
        raise SignatureError(f"key {who} was revoked; do not use this image", path=aci)
    if not result.valid:
        reason = result.key_status or result.status or last_gpg_message(result.stderr)
        raise SignatureError(f"signature not valid: {reason}", path=aci)
    match = [k for k in trusted if k.fingerprint == primary]
    if not match:  # cannot happen: gpg only knew the trusted keys; stay safe anyway
        raise SignatureError(f"internal error: gpg accepted key {primary}, which is not in the trust set for {name}", path=aci)
    scopes = sorted(match, key=lambda k: k.prefix is not None)
    ts = getattr(result, "sig_timestamp", None)
    return Signer(
        fingerprint=primary,
        uid=result.username or (match[0].uids[0] if match[0].uids else ""),
        key_id=key_id,
        trusted_for=scopes[0].prefix,
        signed_at=int(ts) if ts else None,
    )


def _name_signer(key_id: str) -> str:
    """The signer as `trust --list` would name it: a signature names its signing
    key, often a subkey; the user's own keyring, when it has that key, gives the
    primary key and user id. Only to name it: trust never comes from there."""
    home = Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")
    if not key_id or not home.is_dir():
        return f"key {key_id or '?'}"
    try:
        found = open_gpg(home).list_keys(keys=[key_id])
    except (OSError, ValueError):
        found = []
    if not found or found[0]["fingerprint"].lower() == key_id:
        return f"key {key_id}"
    primary, uids = found[0]["fingerprint"].lower(), found[0].get("uids") or [""]
    return f"{uids[0]} (key {primary}, signing subkey {key_id})".lstrip()


def _info(key: TrustedKey) -> KeyInfo:
    infos = scan_keys(key.path.read_bytes())
    return infos[0] if infos else KeyInfo(key.fingerprint, key.uids)


def check_image(aci: Path, store: TrustStore, *, require_signature: bool = False,
                insecure_skip_verify: bool = False, image_name: str | None = None) -> Signer | None:
    """The policy for images acbuild uses (FROM, begin, launch).

    Returns the Signer, or None when nothing was verified: `insecure_skip_verify`
    (the caller must say so loudly) or no signature beside the image and none
    required. Raises SignatureError for every refusal."""
    if insecure_skip_verify:
        return None
    if not signature_path(aci).is_file() and not require_signature:
        return None
    return verify_image(aci, None, image_name or name_for_verification(aci, None, store), store)
