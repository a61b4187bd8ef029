"""acbuild fetch: an image by name, URL or file into the image store (rkt fetch's job)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  acbuild fetch example.com/app:1.0                    # discover, download, verify, store
  acbuild fetch example.com/app,channel=beta --pull missing   # the store's copy if it has one
  acbuild fetch https://example.com/images/app-1.0.aci # a URL (its signature: URL.asc)
  acbuild fetch ./app.aci                              # a local file (and app.aci.asc beside it)
  acbuild fetch localhost/app:1.0 --port 8443 --ca-file ca.pem
  acbuild fetch docker://registry.example.com/appc/app:1.0   # an .aci pushed with acbuild push
  acbuild fetch --insecure docker://127.0.0.1:5000/busybox   # a Docker/OCI image: converted

Prints the image ID. The signature must verify against the keys trusted for the image's
name (acbuild trust --prefix) before anything is stored; --insecure-skip-verify is the
only way past, and it is printed each time. The manifest must carry the requested name
and labels; the image's dependencies are fetched the same way. An interrupted download
is resumed (HTTP Range) by the next fetch of the same URL.

docker://REGISTRY/NAME[:TAG|@DIGEST]: an .aci that `acbuild push` stored as an OCI
artifact comes back byte for byte and is verified like any other (its .asc is the
artifact's second layer); any other image there is converted as `acbuild convert` does
and stored without a signature (there is none; the registry's digests are checked).
--insecure and --ca-file apply to the registry too. See 'acbuild image --help' for the
store."""


def add_parser(sub) -> None:
    from acbuild.cli.options import add_discovery_options, add_registry_options, add_store_options, add_trust_options

    parser = sub.add_parser(
        "fetch",
        help="fetch an image by name, URL or file into the image store",
        description="Fetch images into the image store, verified, and print their image IDs.",
        usage="acbuild fetch [options] NAME[:VERSION][,LABEL=VALUE...]|URL|FILE|docker://REF...",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="an image name, an http(s) URL, an .aci file or docker://REGISTRY/NAME[:TAG|@DIGEST]")
    pins = parser.add_argument_group("pins (as a dependency gives them)")
    pins.add_argument("--image-id", metavar="ID", default="", help="the image must have exactly this image ID")
    pins.add_argument("--size", type=int, metavar="BYTES", default=0, help="the .aci must be exactly this many bytes")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image IDs")
    add_store_options(parser, pull_default="always")
    add_discovery_options(parser)
    add_trust_options(parser, require_option=False)  # a fetched image always needs a signature
    add_registry_options(parser, tls=False)  # --creds, --platform (docker://)
    parser.set_defaults(run=run)


def run(args) -> int:
    from acbuild.aci.types import image_id_problem
    from acbuild.cli.options import fetcher_from_args
    from acbuild.errors import UsageError
    from acbuild.fetch.fetcher import Pin
    from acbuild.net.discovery import AppRequest
    from acbuild.report import Reporter

    fetcher = fetcher_from_args(args, reporter=Reporter(quiet=args.quiet))
    pinned = bool(args.image_id or args.size)
    if pinned and len(args.images) != 1:
        raise UsageError("fetch: --image-id and --size pin one image; give one")
    if args.image_id and image_id_problem(args.image_id):
        raise UsageError(f"fetch: --image-id {args.image_id!r}: {image_id_problem(args.image_id)}")
    for what in args.images:
        if pinned:
            image = fetcher.by_name(AppRequest.parse(what), Pin(args.image_id, args.size, "--image-id/--size"))
        else:
            image = fetcher.fetch(what)
        print(image.image_id, flush=True)
    return 0
