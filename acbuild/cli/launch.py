"""acbuild launch: verify an image's signature and run its app (rkt run's job)."""

from __future__ import annotations

import argparse
from pathlib import Path

from acbuild.errors import UsageError

EPILOG = """\
examples:
  acbuild launch hello.aci                      # prints "signature verified: ...", runs the app
  acbuild launch example.com/hello:1.0          # by name: the image store's copy, else fetched
  acbuild launch app.aci --volume data:/srv/data -- --verbose   # ARGS go after the app's exec
  acbuild launch app.aci --network host
  acbuild launch unsigned.aci --insecure-skip-verify             # runs it, with a loud warning

Only images signed by a key trusted for their name run (acbuild trust --prefix NAME KEYFILE);
unsigned images are refused whatever --require-signatures says. The app runs in the
namespace sandbox RUN uses, as the manifest's user and group, in its working directory,
with its environment plus PATH, AC_APP_NAME and container=acbuild; pre-start and post-stop
event handlers run before and after it. The exit status is the app's. The image is rendered
once per image ID (under the cache dir, checked before reuse) and the app runs over an
overlay of it: nothing the app writes outside its volumes is kept."""


def add_parser(sub) -> None:
    from acbuild.cli.options import add_discovery_options, add_sandbox_options, add_store_options, add_trust_options

    parser = sub.add_parser(
        "launch",
        help="verify a signed image and run its app",
        description="Verify IMAGE's signature, then run its app in a namespace sandbox.",
        usage="acbuild launch [options] IMAGE.aci|NAME[:VERSION][,LABEL=VALUE...] [-- ARGS...]",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="an .aci file, or an image name (the image store, then discovery)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME:HOSTPATH",
                        help="bind HOSTPATH on the image's mount point NAME (repeatable)")
    parser.add_argument("--network", choices=("none", "host"), default="none",
                        help="none: loopback only (default); host: the host's network")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                        help="where the rendered image is kept for the next launch, under DIR/launch/ "
                             "(default: $ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild)")
    add_sandbox_options(parser, setuid=True)
    add_trust_options(parser, "the image")
    add_store_options(parser)
    add_discovery_options(parser)
    parser.set_defaults(run=run)
    _app_args_after_dashes(parser)


def _app_args_after_dashes(parser) -> None:
    """Everything after the first "--" is the app's (args.args), set aside before parsing.
    A nargs="*" positional cannot do this: argparse uses it up, empty, at IMAGE, so
    `launch IMAGE --volume V -- ARGS` would fail."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ours, app_args = list(args or []), []
        if "--" in ours:
            dashes = ours.index("--")
            ours, app_args = ours[:dashes], ours[dashes + 1:]
        namespace, extras = parse(ours, namespace)
        if extras:
            raise UsageError(f"launch: unexpected {' '.join(extras)!r} (the app's arguments go after --)")
        namespace.args = app_args
        return namespace, extras

    parser.parse_known_args = parse_known_args


def parse_volume(value: str):
    from acbuild.engine.launch import Volume

    name, colon, path = value.partition(":")
    if not colon or not name or not path:
        raise UsageError(f'--volume "{value}": expected NAME:HOSTPATH (NAME is a mount point of the image)')
    return Volume(name, Path(path))


def run(args) -> int:
    from acbuild.cli.options import fetcher_from_args, trust_settings
    from acbuild.config import load_config
    from acbuild.engine.launch import LaunchOptions, launch

    config = load_config(args.config)
    trust = trust_settings(args, config)
    fetcher = fetcher_from_args(args, config)
    image = Path(args.image)
    if not (image.is_file() or args.image.endswith(".aci")):  # a name: the store's copy (fetched if need be)
        from acbuild.net.discovery import AppRequest

        image = fetcher.by_name(AppRequest.parse(args.image)).aci
    options = LaunchOptions(
        args=tuple(args.args),
        volumes=tuple(parse_volume(v) for v in args.volume),
        network=args.network,
        insecure_skip_verify=trust["insecure_skip_verify"],
        trust_dirs=trust["trust_dirs"],
        debug=args.debug,
        allow_setuid=args.allow_setuid,
        tmpfs_size=args.tmpfs_size,
        fetcher=fetcher,
        cache_dir=args.cache_dir.absolute() if args.cache_dir else None,
    )
    return launch(image, options)
