"""acbuild cache list|prune: look at and trim the step cache (engine.cache)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from acbuild.cli.options import parse_size
from acbuild.errors import UsageError

EPILOG = """\
examples:
  acbuild cache list
  acbuild cache prune --keep-bytes 10G     # least recently used entries go first
  acbuild cache prune --all                # everything, RUN --mount=type=cache dirs and launch's trees too

The cache lives in $ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild (~/.cache/acbuild).
prune waits for running builds to finish (they hold the cache lock)."""


def add_parser(sub) -> None:
    parser = sub.add_parser("cache", help="list or prune the build step cache", description="List or prune the build step cache.",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="the cache (default: $ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild)")
    verbs = parser.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True, parser_class=type(parser))
    verbs.add_parser("list", help="entries with size, age and last use")
    prune = verbs.add_parser("prune", help="remove least recently used entries")
    prune.add_argument("--keep-bytes", metavar="N", type=parse_size, help="keep at most N bytes (suffixes K, M, G, T)")
    prune.add_argument("--all", action="store_true", help="remove everything: RUN cache mounts, the stat cache and the trees acbuild launch rendered too")
    parser.set_defaults(run=run, rootfs_work=True)  # the cache holds trees owned by subordinate ids


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def run(args) -> int:
    import shutil

    from acbuild.files import remove_tree
    from acbuild.engine.cache.stepcache import StepCache
    from acbuild.dirs import cache_root

    cache = StepCache((args.cache_dir or cache_root()).absolute())
    if args.action == "list":
        entries = cache.entries()
        now = time.time()
        print(f"{'KEY':16}  {'KIND':8}  {'SIZE':>10}  {'FILES':>7}  {'CREATED':>10}  {'LAST USED':>10}")
        for e in sorted(entries, key=lambda e: e.last_used, reverse=True):
            print(f"{e.key[:16]:16}  {e.kind:8}  {human(e.size):>10}  {e.files:>7}  {ago(now - e.created):>10}  {ago(now - e.last_used):>10}")
        print(f"{len(entries)} entries, {human(sum(e.size for e in entries))} (each counts the bytes it added when it was made)")
        return 0
    if args.keep_bytes is not None and args.all:
        raise UsageError("cache prune: give --keep-bytes or --all, not both")
    if args.keep_bytes is None and not args.all:
        raise UsageError("cache prune: give --keep-bytes N or --all")
    with cache.locked(exclusive=True):
        removed, freed = cache.prune(None if args.all else args.keep_bytes)
        if args.all:
            for extra in ("images", "stat", "run-mounts", "launch"):
                if (cache.root / extra).exists():
                    remove_tree(cache.root / extra)
            shutil.rmtree(cache.steps, ignore_errors=True)
    print(f"removed {removed} entries, {human(freed)}")
    return 0
