"""acbuild build: ACIfile or Dockerfile in, signed-or-not .aci out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from acbuild.cli.options import (
    add_acifile_options,
    add_discovery_options,
    add_sandbox_options,
    add_signing_options,
    add_store_options,
    add_trust_options,
    output_image,
    compile_from_args,
    fetcher_from_args,
    signing_from_args,
    trust_settings,
)
from acbuild.errors import UsageError

EPILOG = """\
examples:
  acbuild build -f ACIfile -o hello.aci
  acbuild build -f app/ACIfile -o app.aci --build-arg VERSION=1.2 --compression xz
  SOURCE_DATE_EPOCH=1700000000 acbuild build -o app.aci   # mtimes clamped to that time
  acbuild build -f Dockerfile -t example.com/app:1.0 --secret id=token,src=token.txt -o app.aci
  acbuild build -o app.aci --pull always   # FROM example.com/base:1.0: ask the server again

Without -f: ./ACIfile, else ./Dockerfile, else ./Containerfile (in --context if
given). The build context is the file's directory unless --context is given. The same
inputs give the same image ID and the same bytes (see README, Reproducibility)."""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "build",
        help="build an image from an ACIfile or Dockerfile",
        description="Build an App Container Image from an ACIfile or a Dockerfile and print its image ID.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_acifile_options(parser)
    parser.add_argument("-o", "--output", required=True, type=output_image, metavar="OUT.aci", help="the image to write (must end in .aci)")
    parser.add_argument("--context", type=Path, metavar="DIR", help="build context (default: the ACIfile's directory)")
    parser.add_argument("--compression", choices=("gzip", "xz", "bzip2", "none"), default="gzip", help="default: gzip")
    parser.add_argument("--target", metavar="STAGE", help="build this stage (FROM ... AS STAGE) instead of the last")
    parser.add_argument("--network", choices=("none", "host"), default="none", help="network for RUN steps (default: none, loopback only)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    add_cache_options(parser)
    parser.add_argument("--image-dir", action="append", default=[], type=Path, metavar="DIR", help="look for dependency .aci files here (repeatable; default: the context); then the image store")
    group = parser.add_argument_group("secrets for RUN --mount=type=secret|ssh (never in the image, cache or records)")
    group.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR",
                       help="a secret RUN --mount=type=secret,id=ID sees (repeatable)")
    group.add_argument("--ssh", action="append", default=[], metavar="default|ID[=SOCKET]",
                       help="forward an SSH agent socket (default: $SSH_AUTH_SOCK) to RUN --mount=type=ssh")
    add_signing_options(parser)
    add_sandbox_options(parser)
    add_trust_options(parser)
    add_store_options(parser)
    add_discovery_options(parser)
    parser.set_defaults(run=run)


def parse_secrets(values: list[str]) -> dict[str, bytes]:
    """--secret id=ID,src=FILE | id=ID,env=VAR (docker build's spelling): id -> content."""
    secrets = {}
    for value in values:
        fields = dict(part.partition("=")[::2] for part in value.split(","))
        secret_id = fields.pop("id", "")
        src = fields.pop("src", fields.pop("source", ""))
        env = fields.pop("env", "")
        fields.pop("type", None)
        if not secret_id or fields or (src and env):
            raise UsageError(f'--secret "{value}": expected id=ID,src=FILE or id=ID,env=VAR')
        if src:
            try:
                secrets[secret_id] = Path(src).read_bytes()
            except OSError as err:
                raise UsageError(f"--secret {secret_id}: read {src}: {err.strerror}") from err
        else:
            name = env or secret_id
            if name not in os.environ:
                raise UsageError(f"--secret {secret_id}: the environment variable {name} is not set")
            secrets[secret_id] = os.environ[name].encode()
    return secrets


def parse_ssh(values: list[str]) -> dict[str, str]:
    """--ssh default | ID=SOCKET: id -> agent socket."""
    agents = {}
    for value in values:
        agent_id, _, socket = value.partition("=")
        socket = socket or os.environ.get("SSH_AUTH_SOCK", "")
        if not agent_id or not socket or not Path(socket).exists():
            raise UsageError(f'--ssh "{value}": no agent socket (give ID=SOCKET, or set SSH_AUTH_SOCK)')
        agents[agent_id] = socket
    return agents


def add_cache_options(parser) -> None:
    group = parser.add_argument_group("step cache and build records")
    group.add_argument("--no-cache", action="store_true", help="run every step (results still replace the cached ones)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR", help="step cache location (default: $ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild)")
    group.add_argument("--progress", choices=("auto", "plain", "tty", "json"), default="auto", help="step lines (plain), with step times (tty; default on a terminal) or JSON events on stderr (json)")
    group.add_argument("--metadata-file", type=Path, metavar="FILE", help="write the image ID, digest, size, labels and per-step cache hits and times as JSON")
    group.add_argument("--iidfile", type=Path, metavar="FILE", help="write the image ID to FILE")


def run(args) -> int:
    import json
    import os
    import sys

    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.config import load_config
    from acbuild.engine.driver import build_plan
    from acbuild.engine.cache.stepcache import StepCache
    from acbuild.engine.execute.ignore import load_ignore
    from acbuild.engine.progress import Progress
    from acbuild.engine.session import BuildOptions
    from acbuild.dirs import cache_root

    config = load_config(args.config)
    acifile, plan = compile_from_args(args)
    context = (args.context or acifile.parent).resolve()
    if not context.is_dir():
        raise UsageError(f"--context {context}: not a directory")
    cache_dir = (args.cache_dir or cache_root()).absolute()
    progress = Progress("quiet" if args.quiet else args.progress)
    options = BuildOptions(
        context=context,
        ignore=load_ignore(context, acifile.resolve()),
        cache_dir=cache_dir,
        source_date_epoch=source_date_epoch_from_env(),
        network=args.network,
        debug=args.debug,
        reporter=progress,
        image_dirs=tuple(d.resolve() for d in args.image_dir),
        tmpfs_size=args.tmpfs_size,
        secrets=parse_secrets(args.secret),
        ssh=parse_ssh(args.ssh),
        fetcher=fetcher_from_args(args, config, reporter=progress),
        **trust_settings(args, config),
    )
    signing = signing_from_args(args, config)
    result = build_plan(plan, args.output, options, target=args.target, compression=args.compression, signing=signing,
                        cache=StepCache(cache_dir), use_cache=not args.no_cache, progress=progress)
    if args.metadata_file is not None:
        write_atomic(args.metadata_file, json.dumps(build_metadata(result, args.output, options), indent=2, sort_keys=True) + "\n")
    if args.iidfile is not None:
        write_atomic(args.iidfile, result.image_id)
    if not args.quiet and progress.mode != "json":
        print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)", file=sys.stderr)
    print(result.image_id)
    return 0


def build_metadata(result, output: Path, options) -> dict:
    """--metadata-file: what was built, from what, and which steps the cache served."""
    import hashlib

    with open(output, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        "image-id": result.image_id,
        "name": result.name,
        "labels": result.labels,
        "file": str(output),
        "file-sha256": digest,
        "size": os.path.getsize(output),
        "cached-image": result.cached_image,
        "context-files-hashed": result.files_hashed,
        "source-date-epoch": options.source_date_epoch,
        "steps": [
            {"number": r.number, "stage": r.stage, "instruction": r.instruction, "position": r.position,
             "cache": "hit" if r.cached else "miss", "seconds": round(r.seconds, 3), "key": r.key}
            for r in result.steps
        ],
    }


def write_atomic(path: Path, text: str) -> None:
    from acbuild import atomic

    try:
        atomic.write_atomic(path, text.encode())
    except OSError as err:
        raise UsageError(f"write {path}: {err.strerror}") from err
