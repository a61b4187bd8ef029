"""acbuild build: ACIfile or Dockerfile in, signed-or-not .aci out."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from acbuild.cli.options import (
    add_acifile_options,
    add_registry_options,
    add_discovery_options,
    add_sandbox_options,
    add_signing_options,
    add_store_options,
    add_trust_options,
    compile_from_args,
    registry_options,
    LazyFetcher,
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
  acbuild build -o oci:./layout:1.0                       # an OCI image layout, tag 1.0
  acbuild build -t example.com/app:1.0 -o oci:./layout    # the same tag, from -t
  acbuild build -o docker-archive:app.tar                 # for `docker load`
  acbuild build -o app.aci --push docker://127.0.0.1:5000/app:1.0 --insecure
  acbuild build -o app.aci --cache-from docker://reg/app:cache --cache-to docker://reg/app:cache
  acbuild build -o app.aci --pull always   # FROM example.com/base:1.0: ask the server again

Without -f: ./ACIfile, else ./Dockerfile, else ./Containerfile (in --context if
given). The build context is the file's directory unless --context is given. The same
inputs give the same image ID and the same bytes (see README, Reproducibility),
and the same OCI manifest digest."""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "build",
        help="build an image from an ACIfile or Dockerfile",
        description="Build an App Container Image from an ACIfile or a Dockerfile and print its image ID.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_acifile_options(parser)
    parser.add_argument("-o", "--output", metavar="OUT", help="the image to write: OUT.aci, or an OCI image as oci:DIR[:TAG], "
                        "oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]")
    parser.add_argument("--format", choices=("aci", "oci"), default=None,
                        help="aci (the default for OUT.aci) or oci (the default for oci:, oci-archive:, docker-archive:; "
                        "a bare -o DIR becomes oci:DIR)")
    parser.add_argument("--push", action="append", default=[], metavar="docker://REF",
                        help="also push the image, as OCI, to a registry (repeatable); prints the manifest digest")
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
    add_registry_options(parser, tls=False)  # --insecure and --ca-file: discovery's, which registries use too
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
    group.add_argument("--cache-from", metavar="docker://REF", help="take missing step cache entries from this registry "
                       "tag (written by --cache-to on another machine); entries are verified by digest")
    group.add_argument("--cache-to", metavar="docker://REF", help="after the build, push its step cache entries to this "
                       "registry tag (one OCI manifest of entry blobs)")


def run(args) -> int:
    import json
    import sys

    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.config import load_config
    from acbuild.engine.outputs import build_outputs
    from acbuild.engine.cache.stepcache import StepCache
    from acbuild.engine.execute.ignore import load_ignore
    from acbuild.engine.progress import Progress
    from acbuild.engine.session import BuildOptions
    from acbuild.dirs import cache_root

    outputs = outputs_from_args(args)  # usage errors before any work
    config = load_config(args.config)
    acifile, plan = compile_from_args(args)
    context = (args.context or acifile.parent).resolve()
    if not context.is_dir():
        raise UsageError(f"--context {context}: not a directory")
    cache_dir = (args.cache_dir or cache_root()).absolute()
    progress = Progress("quiet" if args.quiet else args.progress)
    registry, platform = registry_options(args)
    options = BuildOptions(
        registry=registry,
        platform=platform,
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
        fetcher=LazyFetcher(args, config, reporter=progress),
        **trust_settings(args, config),
    )
    signing = signing_from_args(args, config)
    published = build_outputs(plan, outputs, options, digest_file=args.metadata_file is not None,
                              target=args.target, compression=args.compression,
                              signing=signing, cache=StepCache(cache_dir), use_cache=not args.no_cache,
                              progress=progress, shared=shared_cache_from_args(args))
    result = published.result
    if args.metadata_file is not None:
        write_atomic(args.metadata_file, json.dumps(build_metadata(published, outputs, options), indent=2, sort_keys=True) + "\n")
    if args.iidfile is not None:
        write_atomic(args.iidfile, result.image_id)
    if not args.quiet and progress.mode != "json":
        if outputs.aci is not None:
            print(f"wrote {outputs.aci} ({published.aci_size} bytes)", file=sys.stderr)
        if outputs.oci is not None:
            kind = "image ID" if outputs.oci.transport == "docker-archive" else "manifest"
            print(f"wrote {outputs.oci} ({kind} {published.exported})", file=sys.stderr)
        for ref, digest in published.pushed:
            print(f"pushed {ref} ({digest})", file=sys.stderr)
    print(result.image_id)
    for ref, digest in published.pushed:
        print(f"{ref}@{digest}" if args.quiet else digest)
    return 0


def outputs_from_args(args):
    """-o, --format and --push as engine.outputs.Outputs."""
    from acbuild.engine.outputs import Outputs
    from acbuild.oci.destination import is_destination, parse_destination

    aci = oci = None
    out = args.output
    if out is not None and is_destination(out):
        if args.format == "aci":
            raise UsageError(f"-o {out}: --format aci writes an .aci file, not an OCI image")
        oci = parse_destination(out)
    elif out is not None and args.format == "oci":
        if out.endswith(".aci"):
            raise UsageError(f"-o {out}: --format oci writes an OCI layout directory; give oci:DIR, or drop --format")
        oci = parse_destination(f"oci:{out}")
    elif out is not None:
        from acbuild.aci.writer import check_output_path

        try:  # before any work: a build must not run every step to fail here
            check_output_path(out)
        except UsageError as err:
            raise UsageError(f"-o: {err.message}") from None
        aci = Path(out)
    if oci is not None and not oci.ref and args.tag:
        oci = tagged_destination(oci, args.tag)
    if args.sign and aci is None:
        raise UsageError("--sign signs the .aci: give -o OUT.aci too (OCI images are not signed by acbuild)")
    for ref in args.push:
        if not ref.startswith("docker://"):
            raise UsageError(f"--push {ref}: expected docker://REGISTRY/NAME[:TAG]")
    return Outputs(aci=aci, oci=oci, push=tuple(args.push), registry=registry_options(args)[0])


def tagged_destination(dest, tag: str):
    """-t NAME[:TAG] as the reference of an OCI output that -o names none for, as
    BuildKit's OCI exporter writes it: org.opencontainers.image.ref.name is TAG
    (default latest), docker-archive's RepoTags NAME:TAG (docker build -t)."""
    from acbuild.frontend.compile import split_tag
    from acbuild.oci.destination import parse_destination

    name, version = split_tag(tag)
    ref = f"{name}:{version or 'latest'}" if dest.transport == "docker-archive" else version or "latest"
    try:
        return parse_destination(f"{dest.transport}:{dest.path}:{ref}")
    except UsageError as err:
        raise UsageError(f"-t {tag}: {err.message}") from None


def shared_cache_from_args(args):
    """--cache-from/--cache-to as engine.cache.share.SharedCache (None without them)."""
    for flag, ref in (("--cache-from", args.cache_from), ("--cache-to", args.cache_to)):
        if ref is not None and not ref.startswith("docker://"):
            raise UsageError(f"{flag} {ref}: expected docker://REGISTRY/NAME[:TAG]")
    if args.cache_from is None and args.cache_to is None:
        return None
    from acbuild.engine.cache.share import SharedCache

    return SharedCache(args.cache_from, args.cache_to, registry_options(args)[0])


def build_metadata(published, outputs, options) -> dict:
    """--metadata-file: what was built, from what, and which steps the cache served."""
    result = published.result
    meta = {
        "image-id": result.image_id,
        "name": result.name,
        "labels": result.labels,
        "file": str(outputs.aci) if outputs.aci is not None else None,
        "file-sha256": published.aci_sha256,
        "size": published.aci_size,
        "cached-image": result.cached_image,
        "context-files-hashed": result.files_hashed,
        "source-date-epoch": options.source_date_epoch,
        "steps": [
            {"number": r.number, "stage": r.stage, "instruction": r.instruction, "position": r.position,
             "cache": "hit" if r.cached else "miss", "seconds": round(r.seconds, 3), "key": r.key}
            for r in result.steps
        ],
    }
    if outputs.oci is not None:
        meta["oci"] = str(outputs.oci)
        meta["docker-image-id" if outputs.oci.transport == "docker-archive" else "oci-manifest-digest"] = published.exported
    if published.pushed:
        meta["pushed"] = [{"reference": ref, "digest": digest} for ref, digest in published.pushed]
    return meta


def write_atomic(path: Path, text: str) -> None:
    from acbuild import atomic

    try:
        atomic.write_atomic(path, text.encode())
    except OSError as err:
        raise UsageError(f"write {path}: {err.strerror}") from err
