"""acbuild build: ACIfile in, signed-or-not .aci out."""

from __future__ import annotations

import argparse
from pathlib import Path

from acbuild.errors import UsageError

EPILOG = """\
examples:
  acbuild build -f ACIfile -o hello.aci
  acbuild build -f app/ACIfile -o app.aci --build-arg VERSION=1.2 --compression xz
  SOURCE_DATE_EPOCH=1700000000 acbuild build -o app.aci   # mtimes clamped to that time

The build context is the ACIfile's directory unless --context is given. The same
inputs give the same image ID and the same bytes (see README, Reproducibility)."""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "build",
        help="build an image from an ACIfile",
        description="Build an App Container Image from an ACIfile and print its image ID.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_acifile_options(parser)
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.aci", help="the image to write (must end in .aci)")
    parser.add_argument("--context", type=Path, metavar="DIR", help="build context (default: the ACIfile's directory)")
    parser.add_argument("--compression", choices=("gzip", "xz", "bzip2", "none"), default="gzip", help="default: gzip")
    parser.add_argument("--target", metavar="STAGE", help="build this stage (FROM ... AS STAGE) instead of the last")
    parser.add_argument("--network", choices=("none", "host"), default="none", help="network for RUN steps (default: none, loopback only)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    parser.set_defaults(run=run)


def add_acifile_options(parser) -> None:
    parser.add_argument("-f", "--file", type=Path, default=None, metavar="ACIfile", help="the ACIfile (default: ./ACIfile)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE", help="set an ARG (repeatable)")


def build_args(values: list[str]) -> dict[str, str]:
    args = {}
    for value in values:
        name, eq, val = value.partition("=")
        if not eq or not name:
            raise UsageError(f'--build-arg "{value}": expected NAME=VALUE')
        args[name] = val
    return args


def compile_from_args(args):
    from acbuild.compile import compile_file

    acifile = args.file or Path("ACIfile")
    return acifile, compile_file(acifile, build_args(args.build_arg))


def run(args) -> int:
    import os
    import sys

    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.engine.build import build_plan
    from acbuild.engine.session import BuildOptions

    acifile, plan = compile_from_args(args)
    context = (args.context or acifile.parent).resolve()
    if not context.is_dir():
        raise UsageError(f"--context {context}: not a directory")
    options = BuildOptions(
        context=context,
        source_date_epoch=source_date_epoch_from_env(),
        network=args.network,
        debug=args.debug,
        quiet=args.quiet,
    )
    image_id = build_plan(plan, args.output, options, target=args.target, compression=args.compression)
    if not args.quiet:
        print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)", file=sys.stderr)
    print(image_id)
    return 0
