"""The signature policy for every image acbuild uses: a base (FROM, begin), a
dependency, an image to launch.

An image with a signature beside it (IMAGE.aci.asc) must verify against the keys
trusted for its name; with require-signatures every image must. The only way
past is --insecure-skip-verify, and it is printed loudly every time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import ImageError, SignatureError, SourcePos
from acbuild.report import Reporter


def check_policy(path: Path, what: str, *, insecure: bool, require: bool, trust_dirs, reporter: Reporter,
                 pos: SourcePos | None = None, shown_as: Path | None = None):
    """Verify `path` (called `what` in messages, and `shown_as` where they name the
    file) as the policy says; returns the Signer, or None when nothing was verified."""
    from acbuild.dirs import default_trust_dirs
    from acbuild.trust.store import TrustStore
    from acbuild.trust.verify import check_image

    if insecure:
        reporter.alert(f"NOT verifying the signature of {what} (--insecure-skip-verify)")
        return None
    store = TrustStore(list(trust_dirs) or default_trust_dirs())
    shown = str(shown_as or path)
    prefix = "" if what == shown else f"{what}: "  # verify's messages already name the file
    try:
        signer = check_image(path, store, require_signature=require)
    except SignatureError as err:
        message = err.at_path(shown).message
        raise SignatureError(f"{prefix}{message} (--insecure-skip-verify skips this check)", pos) from err
    except ImageError as err:
        raise ImageError(f"{prefix}{err.at_path(shown).message}", pos) from err
    if signer is not None:
        reporter.info(f"signature verified: {signer.uid} ({signer.fingerprint})")
    return signer


@contextmanager
def verified(path: Path, what: str, *, insecure: bool, require: bool, trust_dirs, reporter: Reporter,
             pos: SourcePos | None = None) -> Iterator[Path]:
    """check_policy, then yield the file to read the image from. When a signature is
    checked, that is a private copy of exactly the bytes that were verified (the
    .aci and its .asc copied once into a temp dir, removed afterwards), so nobody
    can swap the image between its check and its use."""
    from acbuild.trust.sign import signature_path

    if insecure or (not require and not signature_path(path).is_file()):
        check_policy(path, what, insecure=insecure, require=require, trust_dirs=trust_dirs, reporter=reporter, pos=pos)
        yield path
        return
    from acbuild.temps import temp_dir

    with temp_dir("acbuild-verified-") as tmp:  # a killed run's copy goes with the next run
        copy = tmp / path.name
        try:
            shutil.copyfile(path, copy)
            if signature_path(path).is_file():
                shutil.copyfile(signature_path(path), signature_path(copy))
        except OSError as err:
            raise ImageError(f"{what}: read {path}: {err.strerror}", pos) from err
        check_policy(copy, what, insecure=False, require=require, trust_dirs=trust_dirs, reporter=reporter, pos=pos,
                     shown_as=path)
        yield copy


def verify_base(path: Path, base: p.From, options, *, by_name: bool = False) -> None:
    """The policy for a FROM base whose bytes are not read here (a cached step)."""
    with verified_base(path, base, options, by_name=by_name):
        pass


def verified_base(path: Path, base: p.From, options, *, by_name: bool = False):
    """`verified` for a FROM base: the file to extract the base from. A base fetched
    by name (`by_name`: the image store's copy) must be signed, as it was to be fetched."""
    return verified(path, f"FROM {base.base}", insecure=options.insecure_skip_verify or base.insecure_skip_verify,
                    require=options.require_signatures or by_name, trust_dirs=options.trust_dirs,
                    reporter=options.reporter, pos=base.pos)
