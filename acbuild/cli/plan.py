"""acbuild plan: show the compiled build plan as YAML, without building."""

from __future__ import annotations

import argparse

from acbuild.cli.options import add_acifile_options, compile_from_args


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "plan",
        help="print the compiled build plan as YAML",
        description="Parse and check an ACIfile and print the plan that `acbuild build` would run.",
        epilog="example:\n  acbuild plan -f ACIfile --build-arg VERSION=2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_acifile_options(parser)
    parser.add_argument("--target", metavar="STAGE", help="check the plan as for building this stage (default: the last)")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                        help="plan as `acbuild build --platform` builds: the target platform (TARGETPLATFORM; "
                             "default: this host's)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import sys

    import yaml

    _, plan = compile_from_args(args)
    yaml.safe_dump(plan.as_dict(), sys.stdout, sort_keys=False, default_flow_style=False)
    return 0
