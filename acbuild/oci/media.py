"""Media types acbuild writes beyond the image-spec ones (those are in
acbuild.oci.manifests): the empty config, the appc artifact and the shared step
cache (README, "Docker and OCI")."""

from __future__ import annotations

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"

# An .aci kept as it is in a registry: an OCI image manifest whose artifactType is
# APPC_ARTIFACT, config the empty descriptor, layer 0 the .aci bytes (APPC_ACI) and,
# when signed, layer 1 its detached armored signature (APPC_SIGNATURE).
APPC_ARTIFACT = "application/vnd.appc.image.v1"
APPC_ACI = "application/vnd.appc.aci"
APPC_SIGNATURE = "application/vnd.appc.aci.signature.v1+pgp"

# The step cache shared through a registry: one manifest whose layers are cache entries.
ACBUILD_CACHE = "application/vnd.acbuild.cache.v1"
ACBUILD_CACHE_ENTRY = "application/vnd.acbuild.cache.entry.v1.tar+gzip"
ACBUILD_CACHE_KEY = "dev.acbuild.cache.key"


def artifact_type(manifest_bytes: bytes, what: str) -> str:
    """A manifest's artifactType (or, as older tools wrote it, its config's media type)."""
    from acbuild.oci.manifests import json_object

    doc = json_object(manifest_bytes, what)
    config = doc.get("config")
    return str(doc.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else "") or "")
