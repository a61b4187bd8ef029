"""acbuild image list|rm|gc|export|cat-manifest: the local image store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  acbuild image list                         # short ID, name, version, size, import time
  acbuild image list --json
  acbuild image cat-manifest example.com/app:1.0 --pretty
  acbuild image export sha512-1a2b3c4d5e6f app.aci   # app.aci and app.aci.asc
  acbuild image rm example.com/app:0.9
  acbuild image gc --days 30

The store keeps images by image ID under $XDG_DATA_HOME/acbuild/images (--store-dir DIR
or ACBUILD_STORE_DIR=DIR to move it). Fill it with 'acbuild fetch' (names, URLs or files);
builds and launches by name use it. ID|NAME is an image ID or a unique prefix of one
(sha512-1a2b...), or NAME[:VERSION][,LABEL=VALUE...] (rm: every match; the others: the
newest)."""


def add_parser(sub) -> None:
    from acbuild.cli.options import add_store_dir_option

    fmt = argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser("image", help="list, remove, export and collect images in the image store",
                            description="Manage the local image store.", epilog=EPILOG, formatter_class=fmt)
    verbs = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND", parser_class=type(parser))
    parser.set_defaults(run=_usage)

    def verb(name: str, help_text: str, run) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                             epilog=EPILOG, formatter_class=fmt)
        add_store_dir_option(p)
        p.set_defaults(run=run)
        return p

    p = verb("list", "list the stored images", run_list)
    p.add_argument("--json", action="store_true", help="one JSON array with every field, for scripts")
    p = verb("rm", "remove images from the store", run_rm)
    p.add_argument("refs", nargs="+", metavar="ID|NAME")
    p = verb("gc", "remove images no name resolves to and nothing used for DAYS", run_gc)
    p.add_argument("--days", type=float, default=30, metavar="DAYS",
                   help="keep what was used in the last DAYS days (default 30; 0: only what a name resolves to)")
    p = verb("export", "copy a stored image (and its signature) out of the store", run_export)
    p.add_argument("ref", metavar="ID|NAME")
    p.add_argument("out", type=Path, metavar="OUT.aci")
    p = verb("cat-manifest", "print a stored image's manifest", run_cat_manifest)
    p.add_argument("ref", metavar="ID|NAME")
    p.add_argument("--pretty", "--pretty-print", action="store_true", help="decode and print indented (4 spaces)")


def _usage(_args) -> int:
    from acbuild.errors import UsageError

    raise UsageError("image: give a subcommand: list, rm, gc, export or cat-manifest (see acbuild image --help)")


def _store(args):
    from acbuild.cli.options import store_dir_from_args
    from acbuild.store.images import ImageStore

    return ImageStore(store_dir_from_args(args))


def run_list(args) -> int:
    images = _store(args).list()
    if args.json:
        rows = [{"id": i.image_id, "name": i.name, "labels": i.labels, "size": i.size, "imported": i.imported,
                 "used": i.used, "signed": i.signature is not None, "verified": bool(i.signer), "signer": i.signer, "origin": i.origin,
                 "dependencies": list(i.dependencies)} for i in images]
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    table = [("ID", "NAME", "VERSION", "SIZE", "IMPORTED")]
    for i in images:
        table.append((i.short_id, i.name, i.labels.get("version", "-"), _size(i.size),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.imported))))
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def run_rm(args) -> int:
    store = _store(args)
    chosen = {i.image_id: i for ref in args.refs for i in store.lookup(ref)}  # all refs resolve before any removal
    for image in chosen.values():
        store.remove(image)
        print(f"removed {image.describe()}")
    return 0


def run_gc(args) -> int:
    removed = _store(args).gc(args.days)
    for image in removed:
        print(f"removed {image.describe()}")
    print(f"{len(removed)} image(s) removed, {_size(sum(i.size for i in removed))} freed", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from acbuild.store.images import copy_out

    image = _newest(args)
    copy_out(image, args.out)
    print(f"exported {image.describe()} to {args.out}{' (with its signature)' if image.signature else ' (unsigned)'}",
          file=sys.stderr)
    return 0


def run_cat_manifest(args) -> int:
    from acbuild.cli.manifest import print_manifest

    store = _store(args)
    print_manifest(store.read_manifest(_newest(args, store)), args.pretty)
    return 0


def _newest(args, store=None):
    from acbuild.errors import ImageError

    store = store or _store(args)
    image = store.get(store.lookup(args.ref)[0].image_id)
    if image is None:
        raise ImageError(f"{args.ref}: the stored image was damaged and has been removed; fetch it again")
    return image


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
