"""The output stage of `acbuild build`: where the built image goes. The plan is built
into an .aci (the `-o OUT.aci` itself, or a temp file when the output is OCI only);
then that .aci is exported as an OCI image (`-o oci:DIR[:TAG]`, `oci-archive:FILE`,
`docker-archive:FILE`, by acbuild.oci.export) and pushed (`--push docker://REF`,
by acbuild.oci.push).

Contract: each output appears atomically or not at all; the temp .aci and any
staging layout are removed whatever happens. The OCI image is made from the .aci's
bytes, so it is as reproducible as the .aci: the same build gives the same manifest
digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from acbuild.engine.driver import BuildResult, build_plan
from acbuild.errors import ImageError, UsageError
from acbuild.records import dataclass, field


@dataclass(frozen=True)
class Outputs:
    """-o and --push: an .aci file, an OCI destination (acbuild.oci.destination.Destination)
    and registry references to push the OCI image to."""

    aci: Path | None = None
    oci: object | None = None
    push: tuple[str, ...] = ()
    registry: object | None = None  # acbuild.oci.registry.RegistryOptions for --push

    def __post_init__(self) -> None:
        if self.aci is None and self.oci is None and not self.push:
            raise UsageError("nothing to write: give -o OUT.aci, -o oci:DIR[:TAG] or --push docker://REF")


@dataclass
class Published:
    result: BuildResult
    aci_sha256: str  # "" unless asked for (digest_file): hashing the file costs a no-op rebuild ~40%
    aci_size: int
    exported: str = ""  # the -o OCI image's digest (acbuild.oci.export.OciImage.digest)
    pushed: list[tuple[str, str]] = field(default_factory=list)  # (reference, manifest digest)


def build_outputs(plan, outputs: Outputs, options, *, digest_file: bool = True, **build_kw) -> Published:
    """Build `plan` and write every output (see the module docstring); digest_file:
    fill in Published.aci_sha256."""
    temp_dir = None
    aci = outputs.aci
    try:
        if aci is None:
            temp_dir = Path(tempfile.mkdtemp(prefix="acbuild-out-"))
            aci = temp_dir / "image.aci"
        result = build_plan(plan, aci, options, **build_kw)
        published = Published(result, *_digest_and_size(aci, digest_file))
        if outputs.oci is not None or outputs.push:
            _export_and_push(aci, outputs, options.source_date_epoch, published)
        return published
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _export_and_push(aci: Path, outputs: Outputs, source_date_epoch: int, published: Published) -> None:
    from acbuild.oci.export import export_aci, image_from_aci
    from acbuild.oci.layout_writer import Layout

    if outputs.oci is not None:
        published.exported = export_aci(aci, outputs.oci, source_date_epoch).digest
    if not outputs.push:
        return
    from acbuild.oci.push import push_image

    staging = Path(tempfile.mkdtemp(prefix="acbuild-push-"))
    try:
        image = image_from_aci(aci, Layout(staging), source_date_epoch)
        known: dict[str, str] = {}  # blobs pushed so far: later pushes mount them
        for ref in outputs.push:
            pushed = push_image(image.layout, image.manifest, ref, outputs.registry, known=known)
            published.pushed.append((pushed.reference, pushed.digest))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _digest_and_size(path: Path, digest: bool) -> tuple[str, int]:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() if digest else "", os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ImageError(f"read {path}: {e.strerror}") from e
