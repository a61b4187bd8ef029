"""Docker/OCI image -> .aci: open the SOURCE, apply its layers, map its config,
write the ACI. The recipe:

    opened = open_source(parse_source("docker://busybox"), options)
    outputs = convert(opened, Path("busybox.aci"), options)

Contract: outputs are written atomically (acbuild.aci.writer's AciSink); the
layers are read once each into the .aci (acbuild.oci.squash), never unpacked; registry blobs go
through the content-addressed BlobCache under the acbuild cache root
(`CACHE/oci/blobs`), so a second pull of the same image downloads no blob.
File mtimes are clamped to $SOURCE_DATE_EPOCH, else to the config's `created`
(so the same image always converts to the same bytes).

--no-squash writes one ACI per layer (see `_write_layers`): the base layer
first, each named NAME-LAYER (LAYER = the first 12 hex digits of the layer's
digest) with a `layer` label; the top one carries the app and depends on all
the others, base first, by image ID; its pathWhitelist lists what exists after
all layers (so whiteouts and opaque dirs hide lower files when rendered).
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.aci.manifest import Dependency, ImageManifest, Label
from acbuild.aci.writer import AciSink, source_date_epoch_from_env, write_manifest
from acbuild.dirs import cache_root
from acbuild.errors import ImageError, UsageError
from acbuild.oci import manifests as mt
from acbuild.oci.blobs import BlobCache, digest_of
from acbuild.oci.layout import Layer, LocalImage, diff_ids, layout_name, read_docker_archive, read_oci
from acbuild.oci.reference import DOCKER, DOCKER_ARCHIVE, Source, parse_reference
from acbuild.oci.registry import RegistryClient, RegistryOptions
from acbuild.oci.squash import Squash, index, paths, write_layer, write_squashed
from acbuild.oci.toaci import Origin, created_epoch, image_manifest, sanitize_identifier
from acbuild.records import dataclass, field
from acbuild.report import Reporter


@dataclass(frozen=True)
class ConvertOptions:
    registry: RegistryOptions = RegistryOptions()
    platform: mt.Platform | None = None
    compression: str = "gzip"
    squash: bool = True
    name: str = ""  # overrides the name taken from the source
    reporter: Reporter = field(default_factory=Reporter)  # where the device-node notice goes


@dataclass(frozen=True)
class Opened:
    image: LocalImage
    origin: Origin
    downloaded: int = 0  # blobs fetched from a registry (0 when all were cached)


def blob_cache() -> BlobCache:
    return BlobCache(cache_root() / "oci" / "blobs")


def open_source(source: Source, options: ConvertOptions = ConvertOptions()) -> Opened:
    """Read (or pull) the image a SOURCE names."""
    if source.transport == DOCKER:
        ref = source.reference
        assert ref is not None
        cache = blob_cache()
        with RegistryClient.for_reference(ref, options.registry) as client:
            pulled = client.pull(ref, cache, options.platform)
        config_digest = pulled.manifest.config.digest
        layer_ids = diff_ids(pulled.config, str(source))
        if len(layer_ids) != len(pulled.manifest.layers):
            raise ImageError(f"{source}: the config's diff_ids do not match the manifest's layers")
        # Checked on the way into the cache, and again as the squash reads them.
        layers = [Layer(d.digest, (lambda p=cache.path(d.digest): open(p, "rb")), d.digest, d.size, diff_id)
                  for d, diff_id in zip(pulled.manifest.layers, layer_ids)]
        image = LocalImage(pulled.config, layers, pulled.manifest_digest, ref.tag or "", ref.name)
        origin = Origin(ref.name, ref.tag or "", source.text, ref.registry, ref.repository,
                        pulled.manifest_digest, config_digest)
        return Opened(image, origin, client.stats.blobs_downloaded)
    if source.transport == DOCKER_ARCHIVE:
        image = read_docker_archive(source.path, source.ref, source.text)
    else:
        image = read_oci(source.path, source.ref, options.platform, source.text)
    name = image.name_hint or layout_name(source.path)
    if image.name_hint:
        try:
            name = parse_reference(image.name_hint).name
        except UsageError:
            pass
    kind = source.transport
    origin = Origin(name, image.tag_hint, source.text, kind, name, image.manifest_digest, digest_of(image.config))
    return Opened(image, origin)


def default_output(origin: Origin) -> Path:
    """docker2aci's file name: REPO with / -> -, then -TAG (library-busybox-latest.aci)."""
    repo = (origin.repository or origin.name).replace("/", "-")
    return Path(sanitize_identifier(f"{repo}-{origin.tag or 'latest'}").replace("/", "-") + ".aci")


def convert(opened: Opened, out: Path, options: ConvertOptions = ConvertOptions()) -> list[tuple[Path, str]]:
    """Write the ACI(s); returns (path, image ID) for each, the image to run last."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    origin = opened.origin
    if options.name:
        origin = Origin(options.name, origin.tag, origin.original, origin.registry, origin.repository,
                        origin.manifest_digest, origin.config_digest)
    manifest = image_manifest(opened.image.config, origin)
    if os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        epoch = source_date_epoch_from_env()
    else:
        epoch = created_epoch(opened.image.config) or 0
    with index(opened.image.layers) as squash:
        if options.squash:
            written = [(out, _write(out, manifest, options, epoch, lambda sink: write_squashed(squash, sink, epoch)))]
        else:
            written = _write_layers(squash, manifest, out, options, epoch)
    if squash.skipped:
        shown = ", ".join(squash.skipped[:5]) + (" ..." if len(squash.skipped) > 5 else "")
        options.reporter.note(f"not kept (device nodes come from the runtime): {shown}")
    return written


def _write(out: Path, manifest: ImageManifest, options: ConvertOptions, epoch: int, rootfs) -> str:
    """An .aci at `out` (atomically): `rootfs(sink)` writes the rootfs entries."""
    with AciSink(out, options.compression) as sink:
        try:
            rootfs(sink)
            write_manifest(sink, manifest.to_json(), epoch)
        except OSError as e:
            raise ImageError(f"write {out}: {e}") from e
        return sink.commit()


def _write_layers(squash: Squash, top: ImageManifest, out: Path, options: ConvertOptions,
                  epoch: int) -> list[tuple[Path, str]]:
    layers = squash.layers
    stem = out.name.removesuffix(".aci")
    written: list[tuple[Path, str]] = []
    deps: list[Dependency] = []
    for i, layer in enumerate(layers):
        layer_id = (layer.digest or layer.diff_id or str(i)).split(":")[-1][:12]
        is_top = i == len(layers) - 1
        name = top.name if is_top else f"{top.name}-{layer_id}"
        if is_top:
            manifest = ImageManifest(name=name, labels=list(top.labels), app=top.app, annotations=top.annotations,
                                     dependencies=list(deps), path_whitelist=paths(squash))
        else:
            labels = [lbl for lbl in top.labels if lbl.name in ("version", "os", "arch")]
            manifest = ImageManifest(name=name, labels=[*labels, Label("layer", layer_id)])
        path = out if is_top else out.with_name(f"{stem}-{layer_id}.aci")
        image_id = _write(path, manifest, options, epoch, lambda sink, i=i: write_layer(squash, i, sink, epoch))
        written.append((path, image_id))
        deps.append(Dependency(name, image_id, [lbl for lbl in manifest.labels if lbl.name != "version"]))
    return written
