"""An .aci kept as it is in any OCI registry: an OCI artifact, so a registry can be an
appc repository.

The manifest (media types in acbuild.oci.media, documented in the README):
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": APPC_ARTIFACT,
     "config": the empty descriptor (OCI_EMPTY, `{}`),
     "layers": [the .aci bytes (APPC_ACI), its .asc when signed (APPC_SIGNATURE)],
     "annotations": {"org.opencontainers.image.title": the appc name, ...version}}
Each layer's `org.opencontainers.image.title` annotation is its file name. The
manifest holds no time, so the same .aci (and signature) pushes to the same digest.

`pull_aci_artifact` is the way back: the bytes are verified against the layer
digests while they stream, then the signature is verified against the trust store
(as `acbuild verify` does) before anything appears in the destination directory;
the .aci and .asc are renamed into place together (sign.replace_together).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from acbuild.errors import ImageError, SignatureError, UsageError
from acbuild.oci import media
from acbuild.oci.blobs import Digester
from acbuild.oci.layout_writer import Layout, canonical_json
from acbuild.oci.manifests import OCI_MANIFEST, Descriptor, Manifest, parse_document
from acbuild.oci.push import CHUNK_SIZE, Pushed, Pusher, docker_reference
from acbuild.oci.registry import RegistryClient, RegistryOptions
from acbuild.report import Reporter

TITLE = "org.opencontainers.image.title"
MAX_SIGNATURE = 1 << 20


def _describe(path: Path, media_type: str) -> Descriptor:
    try:
        with open(path, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from e
    return Descriptor(media_type, digest, size, annotations={TITLE: path.name})


def artifact_manifest(aci: Descriptor, asc: Descriptor | None, name: str, version: str | None) -> bytes:
    annotations = {TITLE: name}
    if version:
        annotations["org.opencontainers.image.version"] = version
    empty = Descriptor(media.OCI_EMPTY, "sha256:" + hashlib.sha256(media.EMPTY_JSON).hexdigest(), len(media.EMPTY_JSON))
    return canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": media.APPC_ARTIFACT,
        "config": empty.to_dict(), "layers": [d.to_dict() for d in (aci, asc) if d is not None],
        "annotations": annotations,
    })


def push_aci_artifact(aci: Path, target: str, options: RegistryOptions | None = None, *,
                      signature: Path | None = None, chunk_size: int = CHUNK_SIZE) -> Pushed:
    """Push `aci` (and `signature`, default: `aci`.asc when it exists) as it is to
    `docker://REGISTRY/NAME:TAG`; returns the manifest digest."""
    from acbuild.trust.sign import signature_path
    from acbuild.trust.verify import image_name_of

    aci = Path(aci)
    ref = docker_reference(target)
    sig = signature if signature is not None else signature_path(aci)
    if signature is not None and not sig.is_file():
        raise UsageError(f"--signature {sig}: no such file")
    name = image_name_of(aci)
    version = _label(aci, "version")
    aci_desc = _describe(aci, media.APPC_ACI)
    asc_desc = _describe(sig, media.APPC_SIGNATURE) if sig.is_file() else None
    data = artifact_manifest(aci_desc, asc_desc, name, version)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="acbuild-artifact-") as tmp:
        layout = Layout(Path(tmp)).create()
        empty = layout.add_bytes(media.EMPTY_JSON, media.OCI_EMPTY)
        with RegistryClient.for_reference(ref, options or RegistryOptions()) as client:
            pusher = Pusher(client, ref.repository, chunk_size)
            pusher.push_blob(empty, layout.blob_path(empty.digest))
            pusher.push_blob(aci_desc, aci)
            if asc_desc is not None:
                pusher.push_blob(asc_desc, sig)
            tag = ref.tag or "latest"
            pusher.put_manifest(tag, data, OCI_MANIFEST, digest)
            return Pushed(f"{ref.name}:{tag}", digest, pusher.stats)


def _label(aci: Path, name: str) -> str | None:
    from acbuild.aci.archive import read_aci
    from acbuild.aci.manifest import ImageManifest

    return ImageManifest.from_json(read_aci(aci).manifest_bytes).label(name)


def _safe_name(title: str, fallback: str, suffix: str) -> str:
    """A layer's title as a plain file name in the destination (never a path)."""
    name = title if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}", title or "") else fallback
    return name if name.endswith(suffix) else name + suffix


def pull_aci_artifact(ref_text: str, dest_dir: Path, *, options: RegistryOptions | None = None,
                      trust_dirs: list[Path] | None = None, insecure_skip_verify: bool = False,
                      reporter: Reporter | None = None) -> tuple[Path, Path | None]:
    """Fetch the appc artifact `docker://REGISTRY/NAME[:TAG|@DIGEST]` into `dest_dir`:
    returns (aci_path, asc_path or None). The .aci's bytes are exactly those pushed
    (digests checked while streaming); its signature is verified against the trust
    store (`trust_dirs`, default: system + user) unless `insecure_skip_verify`, and
    an artifact without one is refused then too. (`acbuild fetch docker://...`
    takes the same download, `download_artifact`, into the image store.)"""
    from acbuild.trust.sign import replace_together
    from acbuild.dirs import default_trust_dirs
    from acbuild.trust.store import TrustStore
    from acbuild.trust.verify import image_name_of, verify_image

    ref = artifact_reference(ref_text)
    dest_dir = Path(dest_dir)
    if not dest_dir.is_dir():
        raise UsageError(f"{dest_dir}: not a directory")
    with RegistryClient.for_reference(ref, options or RegistryOptions()) as client:
        data, _, _ = client.get_manifest(ref.repository, ref.reference)
        if _appc_layers(data, ref_text)[1] is None and not insecure_skip_verify:
            raise SignatureError(f"{ref_text}: the artifact has no signature layer "
                                 "(--insecure-skip-verify to take it unsigned)")
        with tempfile.TemporaryDirectory(prefix=".acbuild-artifact.", dir=dest_dir) as tmp:
            aci_tmp, asc_tmp = download_artifact(client, ref, data, Path(tmp), ref_text)
            if not insecure_skip_verify:
                store = TrustStore(trust_dirs or default_trust_dirs())
                verify_image(aci_tmp, asc_tmp, image_name_of(aci_tmp), store)
            out = dest_dir / aci_tmp.name
            try:
                replace_together(aci_tmp, asc_tmp, out, reporter=reporter or Reporter())
            except OSError as e:
                raise ImageError(f"write {out}: {e.strerror}") from e
    return out, (Path(str(out) + ".asc") if asc_tmp is not None else None)


def artifact_reference(ref_text: str):
    """The Reference of `docker://REGISTRY/NAME[:TAG|@DIGEST]`."""
    from acbuild.oci.reference import parse_reference

    if not ref_text.startswith("docker://"):
        raise UsageError(f"{ref_text}: expected docker://REGISTRY/NAME[:TAG|@DIGEST]")
    return parse_reference(ref_text[len("docker://"):])


def is_appc_artifact(manifest: bytes, what: str) -> bool:
    """Is this manifest (any kind: image, index, artifact) an appc image artifact?"""
    return media.artifact_type(manifest, f"{what} manifest") == media.APPC_ARTIFACT


def download_artifact(client: RegistryClient, ref, manifest: bytes, into: Path,
                      what: str) -> tuple[Path, Path | None]:
    """The .aci and .asc layers of the appc artifact `manifest` into the directory
    `into`, as they were pushed (each digest and size checked while it streams),
    named by the layer's title: (aci, asc or None). Not verified: the caller does."""
    aci_desc, asc_desc = _appc_layers(manifest, what)
    base = ref.repository.rsplit("/", 1)[-1] + (f"-{ref.tag}" if ref.tag else "")
    aci_name = _safe_name(aci_desc.annotations.get(TITLE, ""), base, ".aci")
    aci = _download(client, ref.repository, aci_desc, into / aci_name)
    asc = _download(client, ref.repository, asc_desc, into / (aci_name + ".asc"), MAX_SIGNATURE) \
        if asc_desc is not None else None
    return aci, asc


def _appc_layers(data: bytes, what: str) -> tuple[Descriptor, Descriptor | None]:
    kind = media.artifact_type(data, f"{what} manifest")
    if kind != media.APPC_ARTIFACT:
        raise ImageError(f"{what}: not an appc image artifact (artifactType {kind!r}, want {media.APPC_ARTIFACT})")
    doc = parse_document(data, OCI_MANIFEST)
    if not isinstance(doc, Manifest):
        raise ImageError(f"{what}: an index, not an appc artifact manifest")
    acis = [d for d in doc.layers if d.media_type == media.APPC_ACI]
    ascs = [d for d in doc.layers if d.media_type == media.APPC_SIGNATURE]
    if len(acis) != 1 or len(ascs) > 1:
        raise ImageError(f"{what}: an appc artifact has one {media.APPC_ACI} layer and at most one signature")
    return acis[0], (ascs[0] if ascs else None)


def _download(client: RegistryClient, repository: str, desc: Descriptor, out: Path, limit: int | None = None) -> Path:
    """The blob into `out`, its digest and size checked as it streams."""
    if limit is not None and desc.size > limit:
        raise ImageError(f"{desc.digest}: {desc.size} bytes is too large for a signature")
    digester = Digester(desc.digest, desc.size, what=f"{client.registry}/{repository} blob")
    try:
        with client.open_blob(repository, desc.digest, desc.size) as resp, open(out, "wb") as f:
            for piece in resp.chunks():
                digester.update(piece)
                f.write(piece)
            digester.check()
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ImageError(f"write {out}: {e.strerror}") from e
    return out
