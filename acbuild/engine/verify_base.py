"""The signature policy for images a build starts from (FROM, begin).

A base with a signature beside it (IMAGE.aci.asc) must verify against the keys
trusted for its name; with require-signatures every base must. The only way
past is --insecure-skip-verify, and it is printed loudly every time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import ImageError, SignatureError


def verify_base(path: Path, base: p.From, options) -> None:
    from acbuild.trust import TrustStore, default_trust_dirs
    from acbuild.verify import check_image

    if options.insecure_skip_verify or base.insecure_skip_verify:
        print(f"acbuild: WARNING: NOT verifying the signature of {path} (--insecure-skip-verify)", file=sys.stderr)
        return
    store = TrustStore(list(options.trust_dirs) or default_trust_dirs())
    try:
        signer = check_image(path, store, require_signature=options.require_signatures)
    except SignatureError as err:
        raise SignatureError(f"FROM {base.base}: {err.message} (--insecure-skip-verify skips this check)", base.pos) from err
    except ImageError as err:
        raise ImageError(f"FROM {base.base}: {err.message}", base.pos) from err
    if signer is not None and not options.quiet:
        print(f"signature verified: {signer.uid} ({signer.fingerprint})", file=sys.stderr)
