"""acbuild validate: check ACIs, image layouts and image/pod manifests."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Check each FILE against the appc 0.8.11 schema, the way `actool validate` does,
plus acbuild's stricter checks (use --lax to turn those off). FILE may be an
.aci archive (gzip, bzip2, xz or plain tar), an image layout directory
(DIR/manifest and DIR/rootfs), or a JSON image or pod manifest.

Prints one line per problem, `FILE: problem`, and `FILE: ok` for each valid
file. Exits 0 only when every FILE is valid."""

EPILOG = """\
examples:
  acbuild validate app.aci
  acbuild validate --quiet build/layout manifest.json pod.json
  acbuild validate --lax legacy.aci   # only what actool 0.8.11 checks"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check ACIs, image layouts and manifests",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="an .aci, an image layout directory, or a JSON manifest")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for valid files")
    p.add_argument("--lax", action="store_true",
                   help="apply only actool 0.8.11's checks, not acbuild's stricter ones")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from acbuild.aci.validate import validate_path
    from acbuild.errors import EXIT_FAILURE, NotFoundError

    status = 0
    for name in args.files:
        try:
            problems = validate_path(name, strict=not args.lax)
        except NotFoundError as e:
            print(f"acbuild: {e}", file=sys.stderr)
            status = status or e.exit_code
            continue
        for problem in problems:
            print(f"{name}: {problem}")
        if problems:
            status = EXIT_FAILURE
        elif not args.quiet:
            print(f"{name}: ok")
    return status
