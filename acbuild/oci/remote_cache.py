"""The step cache kept in a registry (`--cache-to/--cache-from docker://REG/NAME:TAG`,
BuildKit's type=registry): transport only; what an entry holds is the engine's
business (acbuild.engine.cache.share packs and unpacks them).

In the registry the cache is one OCI image manifest:
    {"artifactType": ACBUILD_CACHE, "config": the empty descriptor,
     "layers": [{"mediaType": ACBUILD_CACHE_ENTRY, "digest": ..., "size": ...,
                 "annotations": {"dev.acbuild.cache.key": STEP KEY}}, ...]}
with the layers sorted by key, so the same entries give the same manifest. Keys
are the local cache's content keys; every entry is verified against its layer
digest while it downloads (a registry is as trusted as the tag it serves).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from acbuild.errors import ImageError, NotFoundError
from acbuild.oci import media
from acbuild.oci.blobs import Digester
from acbuild.oci.layout_writer import Layout, canonical_json
from acbuild.oci.manifests import OCI_MANIFEST, Descriptor, Manifest, parse_document
from acbuild.oci.push import Pushed, Pusher, docker_reference
from acbuild.oci.registry import RegistryClient, RegistryOptions


class RemoteCache:
    """The cache manifest at `docker://REG/NAME:TAG` (a reference string)."""

    def __init__(self, target: str, options: RegistryOptions | None = None):
        self.target = target
        self.ref = docker_reference(target)
        self.client = RegistryClient.for_reference(self.ref, options or RegistryOptions())
        self.tag = self.ref.tag or "latest"

    def entries(self) -> dict[str, Descriptor]:
        """Step key -> the layer holding its entry; {} when the tag does not exist yet."""
        try:
            data, _, _ = self.client.get_manifest(self.ref.repository, self.tag)
        except NotFoundError:
            return {}
        kind = media.artifact_type(data, f"{self.target} manifest")
        if kind != media.ACBUILD_CACHE:
            raise ImageError(f"{self.target}: not an acbuild cache (artifactType {kind!r}); "
                             "give --cache-to/--cache-from a tag of its own")
        doc = parse_document(data, OCI_MANIFEST)
        if not isinstance(doc, Manifest):
            raise ImageError(f"{self.target}: an index, not a cache manifest")
        return {d.annotations[media.ACBUILD_CACHE_KEY]: d for d in doc.layers
                if d.media_type == media.ACBUILD_CACHE_ENTRY and d.annotations.get(media.ACBUILD_CACHE_KEY)}

    def download(self, layer: Descriptor, out: Path) -> None:
        """The entry blob into `out` (created), its digest and size checked as it streams."""
        digester = Digester(layer.digest, layer.size, what=f"cache entry {self.target}")
        try:
            with self.client.open_blob(self.ref.repository, layer.digest, layer.size) as resp, open(out, "xb") as f:
                for piece in resp.chunks():
                    digester.update(piece)
                    f.write(piece)
                digester.check()
        except OSError as e:
            raise ImageError(f"write {out}: {e.strerror}") from e

    def push(self, entries: dict[str, Path], scratch: Path) -> Pushed:
        """Upload the entry blobs (key -> file), then the manifest naming them; `scratch`
        is a directory for the empty config blob."""
        empty_layout = Layout(scratch).create()
        empty = empty_layout.add_bytes(media.EMPTY_JSON, media.OCI_EMPTY)
        pusher = Pusher(self.client, self.ref.repository)
        pusher.push_blob(empty, empty_layout.blob_path(empty.digest))
        layers = []
        for key in sorted(entries):
            try:
                with open(entries[key], "rb") as f:
                    digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
                    size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise ImageError(f"read {entries[key]}: {e.strerror}") from e
            desc = Descriptor(media.ACBUILD_CACHE_ENTRY, digest, size, annotations={media.ACBUILD_CACHE_KEY: key})
            pusher.push_blob(desc, entries[key])
            layers.append(desc.to_dict())
        data = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "artifactType": media.ACBUILD_CACHE, "config": empty.to_dict(), "layers": layers})
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        pusher.put_manifest(self.tag, data, OCI_MANIFEST, digest)
        return Pushed(f"{self.ref.name}:{self.tag}", digest, pusher.stats)
