"""`acbuild sign`, `acbuild trust` and `acbuild verify`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from acbuild.errors import NotFoundError, UsageError

SIGN_EPILOG = """\
examples:
  acbuild sign hello.aci                       # default key, writes hello.aci.asc
  acbuild sign hello.aci --key alice@example.com --passphrase-file ~/.secret
  gpg --verify hello.aci.asc hello.aci         # anyone can check it with plain gpg"""

TRUST_EPILOG = """\
examples:
  acbuild trust --prefix example.com/hello pubkey.asc   # trust for example.com/hello[/...]
  acbuild trust --prefix example.com/hello              # keys found by discovery (ac-discovery-pubkeys)
  acbuild trust --prefix localhost/app --port 8443 --ca-file ca.pem --yes
  acbuild trust --root pubkey.asc --yes                 # trust for every image, no prompt
  acbuild trust --list
  acbuild trust --remove 967728EE328B89929A4AE9F2CE234EFE50857498

trust store: /etc/acbuild/trustedkeys (system) and $XDG_CONFIG_HOME/acbuild/trustedkeys
(user, where changes go); --trust-dir DIR or ACBUILD_TRUST_DIR=DIR use DIR alone.
A key trusted for prefix P signs names equal to P or under P/ (unlike rkt, the prefix
"example.com/hello" does not cover "example.com/helloworld").

Without KEYFILE, --prefix P looks the keys up with appc discovery of P (the
ac-discovery-pubkeys walk), downloads them over HTTPS (plain http only with --insecure),
shows each fingerprint and user id and asks, as rkt trust did."""

VERIFY_EPILOG = """\
examples:
  acbuild verify hello.aci                     # checks hello.aci.asc
  acbuild verify hello.aci --signature sig.asc
  ACBUILD_TRUST_DIR=./keys acbuild verify hello.aci

The image name in the manifest decides which trusted keys apply."""


def add_parser(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("sign", help="sign an image (writes IMAGE.asc)", epilog=SIGN_EPILOG, formatter_class=fmt,
                       description="Write IMAGE.asc, a detached ASCII-armored OpenPGP signature over IMAGE's bytes.")
    p.add_argument("image", metavar="IMAGE", type=Path)
    p.add_argument("--key", help="signing key: id, fingerprint or user id (default: signing-key, else gpg's)")
    p.add_argument("--gpg-home", type=Path, metavar="DIR", help="GnuPG home (default: gpg-home, else GNUPGHOME)")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help="read the key's passphrase from FILE")
    _common(p, trust_dir=False)
    p.set_defaults(run=run_sign)

    p = sub.add_parser("trust", help="trust a key for an image name prefix, list or remove keys",
                       epilog=TRUST_EPILOG, formatter_class=fmt,
                       description="Manage the keys allowed to sign images, per image name prefix.")
    p.add_argument("keyfiles", metavar="KEYFILE", nargs="*", type=Path, help="armored or binary public key file")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--prefix", help="trust for image names equal to or under PREFIX")
    scope.add_argument("--root", action="store_true", help="trust for every image name")
    scope.add_argument("--list", action="store_true", help="list trusted keys")
    scope.add_argument("--remove", metavar="FINGERPRINT", help="stop trusting a key")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _common(p)
    from acbuild.cli.options import add_discovery_options

    add_discovery_options(p)
    p.set_defaults(run=run_trust)

    p = sub.add_parser("verify", help="verify an image's signature against trusted keys",
                       epilog=VERIFY_EPILOG, formatter_class=fmt,
                       description="Check IMAGE.asc against the keys trusted for the image's name.")
    p.add_argument("image", metavar="IMAGE", type=Path)
    p.add_argument("--signature", type=Path, metavar="FILE", help="signature file (default: IMAGE.asc)")
    _common(p)
    p.set_defaults(run=run_verify)


def _common(p: argparse.ArgumentParser, trust_dir: bool = True) -> None:
    p.add_argument("--config", type=Path, metavar="FILE", help="acbuild.toml to read")
    if trust_dir:
        p.add_argument("--trust-dir", type=Path, metavar="DIR", help="use this trust store alone (env ACBUILD_TRUST_DIR)")


def _store(args):
    from acbuild.config import load_config
    from acbuild.dirs import default_trust_dirs
    from acbuild.trust.store import TrustStore

    config = load_config(args.config)
    return config, TrustStore(default_trust_dirs(args.trust_dir, config.trust_dirs))


def run_sign(args) -> int:
    from acbuild.config import load_config
    from acbuild.trust.sign import sign_file

    config = load_config(args.config)
    from acbuild.cli.options import read_passphrase

    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    out = sign_file(args.image, key=args.key or config.signing_key,
                    gpg_home=args.gpg_home or config.gpg_home, passphrase=passphrase)
    print(f"wrote {out}")
    return 0


def run_trust(args) -> int:
    config, store = _store(args)
    if args.list:
        return _list(store, args)
    if args.remove:
        if args.keyfiles:
            raise UsageError("trust --remove takes a fingerprint, not key files")
        n = store.remove(args.remove)
        print(f"removed {n} trust entr{'y' if n == 1 else 'ies'} for {args.remove.lower()}")
        return 0
    if args.prefix is None and not args.root:
        raise UsageError("trust: say what the key may sign: --prefix PREFIX or --root (every image)"
                         if args.keyfiles else "trust: give --prefix PREFIX [KEYFILE...], --root KEYFILE..., "
                         "--list or --remove FINGERPRINT")
    if args.root and not args.keyfiles:
        raise UsageError("trust --root needs a KEYFILE: keys trusted for every image are never discovered")
    from acbuild.trust.gpg import scan_keys
    from acbuild.trust.store import check_prefix

    prefix = check_prefix(args.prefix) if args.prefix is not None else None
    scope = "every image (root)" if prefix is None else f"prefix {prefix}"
    sources = _key_files(args.keyfiles) if args.keyfiles else _discovered_keys(prefix, args, config)
    for source, data in sources:
        keys = scan_keys(data)
        for k in keys:
            print(f"key {k.fingerprint}" + ("" if args.keyfiles else f" from {source}"), file=sys.stderr)
            for uid in k.uids:
                print(f"  {uid}", file=sys.stderr)
        if keys and not args.yes and not _confirm(f"Trust {'this key' if len(keys) == 1 else 'these keys'} for {scope}?"):
            print(f"{source}: not trusted", file=sys.stderr)
            return 1
        for k in store.add(data, prefix, source=source):
            print(f"trusted {k.fingerprint} ({k.uid}) for {scope} in {store.writable}")
    return 0


def _key_files(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    for keyfile in paths:
        try:
            yield str(keyfile), keyfile.read_bytes()
        except FileNotFoundError as e:
            raise NotFoundError(f"key file {keyfile} does not exist") from e
        except OSError as e:
            raise UsageError(f"read {keyfile}: {e.strerror}") from e


KEY_LIMIT = 1 << 20  # a few keys are a few KiB


def _discovered_keys(prefix: str, args, config) -> Iterator[tuple[str, bytes]]:
    """(URL, key bytes) for each key the ac-discovery-pubkeys walk of `prefix` finds."""
    from acbuild.cli.options import discovery_from_args
    from acbuild.net.discovery import discover_keys
    from acbuild.net.http import NetError, read_url

    options = discovery_from_args(args, config)
    for url in discover_keys(prefix, options).require_keys():
        if not url.startswith("https://") and not (options.insecure and url.startswith("http://")):
            raise NetError(url, "a key over plain http is refused without --insecure" if url.startswith("http://")
                           else "not an https:// URL")
        yield url, read_url(url, options.http, limit=KEY_LIMIT)


def _confirm(question: str) -> bool:
    """Ask on stderr, read one answer from stdin; no answer at all is a usage error."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print(file=sys.stderr)
        raise UsageError("trust: no answer on stdin (not a terminal?): pass --yes to trust without asking")
    return answer.strip().lower() in ("y", "yes")


def _list(store, args) -> int:
    if args.keyfiles or args.yes:
        raise UsageError("trust --list takes no other arguments")
    keys = store.list()
    if not keys:
        print(f"no trusted keys (store: {', '.join(map(str, store.dirs))})", file=sys.stderr)
    for k in keys:
        print(f"{k.fingerprint}  {k.scope}  {', '.join(k.uids) or '(no user id)'}")
    return 0


def run_verify(args) -> int:
    from acbuild.trust.verify import name_for_verification, verify_image

    _config, store = _store(args)
    if not args.image.is_file():
        raise NotFoundError(f"{args.image}: no such image")
    signer = verify_image(args.image, args.signature, name_for_verification(args.image, args.signature, store), store)
    print(f"signature verified: {signer}")
    return 0
