"""acbuild push: an .aci (as an appc artifact) or an OCI image to a registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from acbuild.cli.options import add_registry_options, registry_options
from acbuild.errors import NotFoundError, UsageError

DESCRIPTION = """\
Push SOURCE to a registry (HTTP API v2) and print the manifest digest.

SOURCE is an .aci, pushed as it is as an OCI artifact (artifactType
application/vnd.appc.image.v1; its .asc beside it goes as a second layer), so any
registry is an appc repository: `acbuild fetch docker://...` gives back the same
bytes. With --as-image the .aci is pushed as an OCI image instead (what
`acbuild build -o oci:` writes), for Docker, podman and other OCI runtimes.
SOURCE may also be an OCI layout, oci:DIR[:TAG].

Each blob is sent once: the registry is asked first (HEAD), a blob pushed to
another repository of the same registry in this run is mounted, blobs above
--chunk-size go in chunks; the manifest goes last."""

EPILOG = """\
examples:
  acbuild push hello.aci docker://registry.example.com/appc/hello:1.0
  acbuild push --as-image hello.aci docker://127.0.0.1:5000/hello:1.0 --insecure
  acbuild push oci:./layout:v1 docker://registry.example.com/hello:v1 --creds alice:s3cret"""


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="push an .aci or an OCI image to a registry", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="IMAGE.aci or oci:DIR[:TAG]")
    p.add_argument("target", metavar="docker://REGISTRY/NAME[:TAG]", help="where to push (tag default: latest)")
    p.add_argument("--as-image", action="store_true", help="push an .aci as an OCI image, not as an appc artifact")
    p.add_argument("--signature", type=Path, metavar="FILE", help="the .aci's signature (default: IMAGE.aci.asc if it exists)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="BYTES",
                   help="upload blobs larger than this in chunks of this size (default: 32 MiB)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    add_registry_options(p, platform=False)
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    import tempfile

    from acbuild.oci.layout_writer import Layout
    from acbuild.oci.push import CHUNK_SIZE, push_image

    options, _ = registry_options(args)
    chunk_size = args.chunk_size or CHUNK_SIZE
    if chunk_size < 1:
        raise UsageError(f"--chunk-size {args.chunk_size}: must be positive")
    source = args.source
    if source.startswith("oci:"):
        from acbuild.oci.destination import parse_destination

        layout_ref = parse_destination(source)
        layout = Layout(layout_ref.path)
        if not (layout.root / "index.json").is_file():
            raise NotFoundError(f"{source}: no OCI layout at {layout.root}")
        pushed = push_image(layout, layout.resolve(layout_ref.ref or None), args.target, options, chunk_size=chunk_size)
    else:
        aci = Path(source)
        if not aci.is_file():
            raise NotFoundError(f"push: {aci}: no such file (SOURCE is IMAGE.aci or oci:DIR[:TAG])")
        if args.as_image:
            from acbuild.aci.writer import source_date_epoch_from_env
            from acbuild.oci.export import image_from_aci

            with tempfile.TemporaryDirectory(prefix="acbuild-push-") as tmp:
                image = image_from_aci(aci, Layout(Path(tmp)), source_date_epoch_from_env())
                pushed = push_image(image.layout, image.manifest, args.target, options, chunk_size=chunk_size)
        else:
            from acbuild.oci.artifact import push_aci_artifact

            pushed = push_aci_artifact(aci, args.target, options, signature=args.signature, chunk_size=chunk_size)
    if not args.quiet:
        s = pushed.stats
        print(f"pushed {pushed.reference}@{pushed.digest} ({s.uploaded} blobs uploaded, {s.present} already there, "
              f"{s.mounted} mounted)", file=sys.stderr)
    print(pushed.digest)
    return 0
