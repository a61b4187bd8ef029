"""The signature policy for every image acbuild uses: a base (FROM, begin), a
dependency, an image to launch.

An image with a signature beside it (IMAGE.aci.asc) must verify against the keys
trusted for its name; with require-signatures every image must. The only way
past is --insecure-skip-verify, and it is printed loudly every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import ImageError, SignatureError, SourcePos


def check_policy(path: Path, what: str, *, insecure: bool, require: bool, trust_dirs, quiet: bool,
                 pos: SourcePos | None = None):
    """Verify `path` (called `what` in messages) as the policy says; returns the
    Signer, or None when nothing was verified."""
    from acbuild.trust import TrustStore, default_trust_dirs
    from acbuild.verify import check_image

    if insecure:
        print(f"acbuild: WARNING: NOT verifying the signature of {what} (--insecure-skip-verify)", file=sys.stderr)
        return None
    store = TrustStore(list(trust_dirs) or default_trust_dirs())
    prefix = "" if what == str(path) else f"{what}: "  # verify's messages already name the file
    try:
        signer = check_image(path, store, require_signature=require)
    except SignatureError as err:
        raise SignatureError(f"{prefix}{err.message} (--insecure-skip-verify skips this check)", pos) from err
    except ImageError as err:
        raise ImageError(f"{prefix}{err.message}", pos) from err
    if signer is not None and not quiet:
        print(f"signature verified: {signer.uid} ({signer.fingerprint})", file=sys.stderr, flush=True)
    return signer


def verify_base(path: Path, base: p.From, options) -> None:
    check_policy(path, f"FROM {base.base}", insecure=options.insecure_skip_verify or base.insecure_skip_verify,
                 require=options.require_signatures, trust_dirs=options.trust_dirs, quiet=options.quiet, pos=base.pos)
