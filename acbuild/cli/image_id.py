"""acbuild image-id: print the image ID of an .aci."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Print the image ID of IMAGE: "sha512-" and the hex SHA-512 of the archive's
uncompressed tar stream (the appc image ID, what dependencies and rkt pin).
The archive may be gzip, bzip2, xz or plain tar."""

EPILOG = """\
example:
  acbuild image-id app.aci
  sha512-5f3a...   (128 hex digits)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "image-id",
        help="print the image ID (sha512) of an .aci",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE.aci", help="the archive")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from acbuild.aci.archive import image_id_of
    from acbuild.errors import NotFoundError

    path = Path(args.image)
    if not path.is_file():
        raise NotFoundError(f"image-id: {path}: no such file")
    print(image_id_of(path))
    return 0
