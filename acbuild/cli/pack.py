"""acbuild pack: turn an image layout directory into an .aci (actool build's job)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acbuild.cli.options import output_image

DESCRIPTION = """\
Pack the image layout LAYOUT_DIR (exactly LAYOUT_DIR/manifest and
LAYOUT_DIR/rootfs/) into the .aci archive OUT, the way `actool build` does,
and print its image ID.

The manifest is validated first (acbuild's strict rules; nothing is written
when it is invalid) and stored in canonical form (compact JSON, Go field
order). The archive is reproducible: entries sorted, mtimes clamped to
$SOURCE_DATE_EPOCH (default 0, 1970-01-01), owner names dropped, a gzip header
without name or time. OUT appears atomically: an interrupted pack leaves no
partial file."""

EPILOG = """\
examples:
  acbuild pack build/layout app.aci
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) acbuild pack --compression xz layout app.aci"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="pack an image layout directory into an .aci",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("layout", metavar="LAYOUT_DIR", help="directory holding manifest and rootfs/")
    p.add_argument("out", metavar="OUT.aci", type=output_image, help="the archive to write (must end in .aci)")
    p.add_argument("--compression", choices=["gzip", "xz", "bzip2", "none"], default="gzip",
                   help="compression of the archive (default: gzip)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from acbuild.aci.manifest import ImageManifest
    from acbuild.aci.validate import validate_layout
    from acbuild.aci.writer import check_output_path, source_date_epoch_from_env, write_aci
    from acbuild.errors import ManifestError, NotFoundError, OutputExistsError
    from acbuild.engine.progress import Progress
    from acbuild.report import Reporter
    from acbuild.trust.sign import drop_stale_signature

    layout, out = Path(args.layout), Path(args.out)
    check_output_path(out)
    if not layout.is_dir():
        raise NotFoundError(f"pack: {layout}: no such directory")
    if out.exists() and not args.overwrite:
        raise OutputExistsError(out)
    epoch = source_date_epoch_from_env()
    problems = validate_layout(layout)
    if problems:
        raise ManifestError(f"pack: {layout}: " + "; ".join(problems), problems)
    manifest = ImageManifest.from_json((layout / "manifest").read_bytes())
    manifest.validate()
    drop_stale_signature(out, reporter=Reporter())  # the old image's .asc must not sign the new one
    image_id = write_aci(out, manifest.to_json(), layout / "rootfs", compression=args.compression,
                         source_date_epoch=epoch, reporter=Progress())  # a bar on a terminal
    print(image_id)
    sys.stdout.flush()
    return 0
