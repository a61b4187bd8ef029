"""acbuild convert: a Docker or OCI image into an .aci (docker2aci's job)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acbuild.cli.options import add_registry_options, registry_options


DESCRIPTION = """\
Convert the Docker/OCI image SOURCE into an .aci and print its image ID.

SOURCE is one of:
  docker://[REGISTRY/]NAME[:TAG|@DIGEST]   pull over the registry HTTP API v2
                                           (busybox = docker.io/library/busybox:latest)
  docker-archive:FILE[:NAME:TAG]           what `docker save` or skopeo writes
  oci:DIR[:REF]                            an OCI image layout directory
  oci-archive:FILE[:REF]                   a tar of an OCI image layout

With --to, the other way: SOURCE is an .aci and DEST an OCI image
(oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]),
made as `acbuild build -o DEST` makes it; the manifest digest is printed (for a
docker-archive, Docker's image ID: the config digest).

The layers are applied in order (whiteouts and opaque directories honoured,
hard links kept, device nodes left out, nothing written outside the rootfs)
and the config mapped as docker2aci did: Entrypoint+Cmd -> exec, Env, User,
WorkingDir, ExposedPorts -> ports, Volumes -> mountPoints, Labels ->
userLabels; StopSignal, Healthcheck and the origin go into annotations. The
name comes from the reference, the version label from the tag.

Every blob is checked against its digest while it streams. Pulled blobs are
kept in a content-addressed cache under the acbuild cache dir, so converting
the same image again downloads nothing. OUT is written atomically."""

EPILOG = """\
examples:
  acbuild convert docker://busybox                       # -> library-busybox-latest.aci
  acbuild convert --insecure docker://127.0.0.1:5000/app:1.0 -o app.aci
  acbuild convert --ca-file ca.pem --creds me:pw docker://registry.example:5000/team/app@sha256:...
  acbuild convert docker-archive:saved.tar -o saved.aci
  acbuild convert oci:./layout:latest -o app.aci
  acbuild convert --no-squash oci-archive:image.tar -o app.aci   # app.aci + app-LAYER.aci ...
  acbuild convert app.aci --to oci-archive:app.oci.tar           # .aci -> OCI image"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a Docker/OCI image into an .aci", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="docker://REF, docker-archive:FILE, oci:DIR[:REF] or oci-archive:FILE[:REF]")
    p.add_argument("-o", "--output", metavar="OUT.aci", type=Path,
                   help="the .aci to write (default: REPO-TAG.aci in the current directory, as docker2aci names it)")
    p.add_argument("--no-squash", action="store_true",
                   help="one .aci per layer (OUT-LAYER.aci), the top one depending on the others")
    p.add_argument("--name", help="the image name to give (default: from the reference)")
    p.add_argument("--compression", choices=["gzip", "xz", "bzip2", "none"], default="gzip",
                   help="compression of the .aci (default: gzip)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--to", metavar="DEST", help="convert the .aci SOURCE into an OCI image at DEST instead "
                   "(oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG])")
    add_registry_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from acbuild.aci.types import acidentifier_problem
    from acbuild.errors import OutputExistsError, UsageError
    from acbuild.oci.convert import ConvertOptions, convert, default_output, open_source
    from acbuild.oci.reference import parse_source

    if args.to:
        from acbuild.oci.export import convert_aci_to

        print(convert_aci_to(Path(args.source), args.to).digest)
        return 0
    source = parse_source(args.source)
    if args.name and (problem := acidentifier_problem(args.name)):
        raise UsageError(f"convert: --name {args.name!r}: {problem}")
    if args.output is not None and args.output.suffix != ".aci":
        raise UsageError(f"convert: {args.output}: the output file name must end in .aci")
    registry, platform = registry_options(args)
    options = ConvertOptions(registry=registry, platform=platform, compression=args.compression,
                             squash=not args.no_squash, name=args.name or "")
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise OutputExistsError(args.output)
    opened = open_source(source, options)
    out = args.output or default_output(opened.origin)
    if args.output is None and out.exists() and not args.overwrite:
        raise OutputExistsError(out)
    written = convert(opened, out, options)
    for path, image_id in written[:-1]:
        print(f"{path} {image_id}", file=sys.stderr)
    print(f"acbuild: wrote {written[-1][0]}", file=sys.stderr)
    print(written[-1][1])
    return 0
