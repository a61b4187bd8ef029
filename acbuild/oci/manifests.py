"""OCI and Docker schema 2 manifests, indexes / manifest lists, and picking a
platform out of an index. Pure data: no I/O. Everything decoded here came from
an image or a registry, so a bad document is an ImageError naming what is wrong.
"""

from __future__ import annotations

import json
import os
from typing import Any

from acbuild.errors import ImageError, UsageError
from acbuild.oci.blobs import check_digest_syntax
from acbuild.records import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
# Sent on every manifest request: without it a registry may answer schema 1.
ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST])
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN,
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "application/vnd.oci.image.layer.nondistributable.v1.tar")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform
        if self.annotations:
            d["annotations"] = self.annotations
        return d


@dataclass(frozen=True)
class Manifest:
    """An image manifest: its config and its layers, base first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    """An OCI index or a Docker manifest list."""

    media_type: str
    manifests: list[Descriptor]


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ImageError(f"{where}: not an object")
    media_type, digest, size = obj.get("mediaType", ""), obj.get("digest"), obj.get("size")
    check_digest_syntax(digest, f"{where}: ")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"{where}: bad size {size!r}")
    plat = obj.get("platform") or {}
    annotations = obj.get("annotations") or {}
    if not isinstance(plat, dict) or not isinstance(annotations, dict):
        raise ImageError(f"{where}: bad platform or annotations")
    return Descriptor(str(media_type), digest, size, plat, annotations)


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` decoded as a JSON object (a manifest, an index, an image config)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def parse_document(data: bytes, media_type: str = "") -> Manifest | Index:
    """A manifest or an index. `media_type` is the Content-Type the registry sent
    (or the descriptor's); the document's own mediaType is used when it has one."""
    obj = json_object(data, "manifest")
    kind = obj.get("mediaType") or media_type.split(";")[0].strip()
    if kind in DOCKER_SCHEMA1 or obj.get("schemaVersion") == 1:
        raise ImageError("Docker schema 1 manifests are not supported (push the image again with a current Docker)")
    if not kind:
        kind = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if kind in INDEXES:
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ImageError("index has no manifests list")
        return Index(kind, [_descriptor(d, f"manifests[{i}]") for i, d in enumerate(items)])
    if kind in IMAGE_MANIFESTS:
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ImageError("manifest has no layers list")
        annotations = obj.get("annotations") or {}
        return Manifest(kind, _descriptor(obj.get("config"), "config"),
                        [_descriptor(d, f"layers[{i}]") for i, d in enumerate(layers)],
                        annotations if isinstance(annotations, dict) else {})
    raise ImageError(f"unsupported manifest media type {kind!r}")


# ---------------------------------------------------------------- platforms

# Python's machine() -> the Go GOARCH (and variant) that OCI platforms use.
_GOARCH = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
           "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
           "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    machine = os.uname().machine  # what platform.machine() says, without its 1.6 ms import
    arch, variant = _GOARCH.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """`OS/ARCH[/VARIANT]` as --platform takes it (docker's spelling)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--platform {text!r}: want OS/ARCH[/VARIANT], e.g. linux/amd64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


def choose(index: Index, want: Platform) -> Descriptor:
    """The index entry for `want` (a missing variant in `want` matches any; arm64
    entries without a variant count as v8). ImageError listing what is there."""
    def matches(d: Descriptor) -> bool:
        p = d.platform
        if p.get("os") != want.os or p.get("architecture") != want.architecture:
            return False
        if not want.variant:
            return True
        variant = p.get("variant") or ("v8" if want.architecture == "arm64" else "")
        return variant == want.variant

    images = [d for d in index.manifests if d.media_type in IMAGE_MANIFESTS + INDEXES or not d.media_type]
    for d in images:
        if matches(d):
            return d
    have = ", ".join(str(Platform(d.platform.get("os", "?"), d.platform.get("architecture", "?"),
                                  d.platform.get("variant", ""))) for d in images) or "nothing"
    raise ImageError(f"no image for platform {want} in the index (it has {have}; choose one with --platform)")
