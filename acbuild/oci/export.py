"""Export an .aci as an OCI image: one layer (the rootfs), a config that carries the
app, a manifest; written to an OCI layout (`oci:DIR[:TAG]`), an oci-archive (a tar of
that layout) or a docker-archive (what `docker load` reads).

Contract: deterministic (the same .aci and SOURCE_DATE_EPOCH give the same bytes, so
the same manifest digest); every digest is computed while the bytes stream, and the
layer's diff_id (sha256 of the uncompressed tar) in the same pass. An OCI layout is
written blobs first, index.json last; an archive appears atomically or not at all,
and its staging layout (a temp dir beside it) is removed whatever happens.

The .aci -> OCI config mapping (README, "OCI export"):
  exec -> Entrypoint (no Cmd: arguments given at run time are appended, as appc does),
  environment -> Env (plus appc's PATH when the image sets none: appc executors always
  provide it, OCI runtimes do not), user:group -> User, workingDirectory -> WorkingDir,
  ports -> ExposedPorts "PORT/PROTO" (a count expands the range), mountPoints ->
  Volumes, labels (but os/arch) and annotations -> Labels (labels win), os/arch ->
  os/architecture (+variant), created = SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from acbuild.aci.manifest import ImageManifest
from acbuild.errors import ImageError, ManifestError, UsageError
from acbuild.oci import manifests as mt
from acbuild.oci.destination import Destination, is_docker_tag, parse_destination
from acbuild.oci.layout_writer import Layout, canonical_json
from acbuild.records import dataclass, replace

APPC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# appc arch label -> (OCI architecture, variant); the inverse of docker2aci's mapping.
_ARCH = {
    "amd64": ("amd64", ""), "i386": ("386", ""), "aarch64": ("arm64", ""), "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"), "ppc64": ("ppc64", ""), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""),
}


@dataclass(frozen=True)
class OciImage:
    """An image whose blobs are in `layout`."""

    layout: Layout
    manifest: mt.Descriptor
    config: mt.Descriptor
    layers: tuple[mt.Descriptor, ...]
    diff_ids: tuple[str, ...]
    name: str  # a Docker reference NAME:TAG for docker-archive's RepoTags, or ""
    transport: str = "oci"

    @property
    def digest(self) -> str:
        """What names the image where it was written: the manifest digest, or for a
        docker-archive (which has no manifest blob) Docker's image ID, the config digest."""
        return self.config.digest if self.transport == "docker-archive" else self.manifest.digest


def created_time(source_date_epoch: int) -> str:
    return datetime.fromtimestamp(source_date_epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(manifest: ImageManifest, diff_ids: list[str], source_date_epoch: int) -> dict:
    """The OCI image config for an appc manifest (the mapping in this module's docstring)."""
    labels = {lb.name: lb.value for lb in manifest.labels}
    arch, variant = _ARCH.get(labels.get("arch", "amd64"), (labels.get("arch", "amd64"), ""))
    created = created_time(source_date_epoch)
    config: dict = {}
    app = manifest.app
    if app is not None:
        env = [f"{e.name}={e.value}" for e in app.environment]
        if app.env("PATH") is None:
            env.insert(0, f"PATH={APPC_PATH}")
        config["Env"] = env
        if app.exec:
            config["Entrypoint"] = list(app.exec)
        config["User"] = f"{app.user}:{app.group}"
        if app.working_directory:
            config["WorkingDir"] = app.working_directory
        ports = {f"{port.port + i}/{port.protocol}": {} for port in app.ports for i in range(max(port.count, 1))}
        if ports:
            config["ExposedPorts"] = ports
        if app.mount_points:
            config["Volumes"] = {m.path: {} for m in app.mount_points}
    else:
        config["Env"] = [f"PATH={APPC_PATH}"]
    oci_labels = {a.name: a.value for a in manifest.annotations}
    oci_labels.update({k: v for k, v in labels.items() if k not in ("os", "arch")})
    if oci_labels:
        config["Labels"] = oci_labels
    out = {
        "created": created,
        "architecture": arch,
        "os": labels.get("os", "linux"),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"acbuild: {manifest.name}"}],
    }
    if variant:
        out["variant"] = variant
    return out


def docker_name(manifest: ImageManifest) -> str:
    """NAME:TAG for docker-archive's RepoTags (version label, else latest), or "" when
    the appc name is not a Docker reference."""
    name = f"{manifest.name}:{manifest.label('version') or 'latest'}"
    return name if is_docker_tag(name) else ""


class _LayerStream:
    """The tar bytes of a layer: hashed (diff_id) and, for gzip, compressed on all
    CPUs by the deterministic writer, into a blob."""

    def __init__(self, blob, compress: bool):
        self.diff = hashlib.sha256()
        if compress:
            from acbuild.aci.pgzip import ParallelGzipWriter

            blob = ParallelGzipWriter(blob)
        self._out = blob
        self._compress = compress

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.diff.update(data)
        self._out.write(data)

    def finish(self) -> str:
        self.write(bytes(1024))  # end of archive: two zero blocks
        if self._compress:
            self._out.close()
        return "sha256:" + self.diff.hexdigest()

    def abort(self) -> None:
        if self._compress:
            self._out.abort()


def read_exportable_manifest(aci: Path) -> ImageManifest:
    from acbuild.aci.archive import read_aci

    contents = read_aci(aci)
    if contents.problems:
        raise ImageError(f"{aci}: {contents.problems[0]}")
    try:
        manifest = ImageManifest.from_json(contents.manifest_bytes)
    except ManifestError as e:
        raise ImageError(f"{aci}: {e}") from e
    if manifest.dependencies or manifest.path_whitelist:
        raise ImageError(f"{aci}: an image with dependencies or a pathWhitelist cannot be exported as OCI yet "
                         "(build it FROM the layered image to flatten it)")
    return manifest


def image_from_aci(aci: Path, layout: Layout, source_date_epoch: int, *, compress: bool = True) -> OciImage:
    """Write the layer, config and manifest of `aci` as blobs of `layout` (no tag)."""
    from acbuild.aci.archive import copy_rootfs_entries

    aci = Path(aci)
    manifest = read_exportable_manifest(aci)
    layout.create()
    try:
        with layout.writer() as blob:
            stream = _LayerStream(blob, compress)
            try:
                copy_rootfs_entries(aci, stream, as_layer=True)
                diff_id = stream.finish()
            except BaseException:
                stream.abort()
                raise
            layer = blob.commit(mt.OCI_LAYER_GZIP if compress else mt.OCI_LAYER)
        config = layout.add_bytes(canonical_json(image_config(manifest, [diff_id], source_date_epoch)), mt.OCI_CONFIG)
        annotations = {"org.opencontainers.image.created": created_time(source_date_epoch),
                       "org.opencontainers.image.title": manifest.name}
        if manifest.label("version"):
            annotations["org.opencontainers.image.version"] = manifest.label("version")
        document = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config.to_dict(),
                    "layers": [layer.to_dict()], "annotations": annotations}
        manifest_desc = layout.add_bytes(canonical_json(document), mt.OCI_MANIFEST)
    except OSError as e:
        raise ImageError(f"write {layout.root}: {e.strerror or e}") from e
    return OciImage(layout, manifest_desc, config, (layer,), (diff_id,), docker_name(manifest))


def export_aci(aci: Path, dest: Destination, source_date_epoch: int) -> OciImage:
    """Write `aci` to `dest`; returns the image (for oci:, its blobs are in dest)."""
    if dest.transport == "oci":
        image = image_from_aci(aci, Layout(dest.path), source_date_epoch)
        image.layout.tag(image.manifest, dest.ref or "latest")
        return image
    from acbuild.oci.archives import write_docker_archive, write_oci_archive

    out = Path(dest.path)
    if out.is_dir():
        raise UsageError(f"{dest}: {out} is a directory")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".oci", dir=out.parent if str(out.parent) else "."))
    except OSError as e:
        raise ImageError(f"write {out}: {e.strerror or e}") from e
    try:
        if dest.transport == "oci-archive":
            image = image_from_aci(aci, Layout(staging), source_date_epoch)
            image.layout.tag(image.manifest, dest.ref or "latest")
            write_oci_archive(image.layout, out)
        else:
            image = replace(image_from_aci(aci, Layout(staging), source_date_epoch, compress=False),
                            transport="docker-archive")
            write_docker_archive(image, out, dest.ref or image.name)
        return image
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_aci_to(aci: Path, to: str) -> OciImage:
    """`acbuild convert IMAGE.aci --to DEST`: the .aci as an OCI image at DEST, with
    `created` from $SOURCE_DATE_EPOCH (as `build` does)."""
    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.errors import NotFoundError

    dest = parse_destination(to)
    if not Path(aci).is_file():
        raise NotFoundError(f"convert: {aci}: no such file")
    return export_aci(Path(aci), dest, source_date_epoch_from_env())
