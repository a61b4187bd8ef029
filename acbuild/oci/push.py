"""Pushes over the registry HTTP API v2 (OCI distribution spec), on top of
acbuild.oci.registry.RegistryClient (its `request` does authentication).

For each blob, in manifest order (config, then layers):
  1. HEAD /v2/NAME/blobs/DIGEST: present already -> nothing is sent;
  2. when this push session has put the same blob into another repository of the
     registry, a cross-repository mount (POST ...uploads/?mount=DIGEST&from=REPO):
     201 means done without sending a byte; a registry that does not offer mounts
     answers 202 with an upload session, which step 3 then uses;
  3. an upload: POST opens a session, then one PUT with the whole blob (monolithic,
     blobs up to `chunk_size`) or PATCHes of `chunk_size` bytes with Content-Range
     and a closing PUT ?digest= (chunked). Memory stays below one chunk.
The manifest goes last (PUT /v2/NAME/manifests/TAG), so a tag never names a
manifest whose blobs are missing; the digest the registry reports
(Docker-Content-Digest) must be the one computed here.

Contract: idempotent (pushing the same image twice sends no blob the second time);
every registry error is an ImageError with the registry's own message.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from acbuild.errors import ImageError, UsageError
from acbuild.oci.layout_writer import Layout
from acbuild.oci.manifests import Descriptor, Manifest, parse_document
from acbuild.oci.reference import Reference, parse_reference
from acbuild.oci.registry import RegistryClient, RegistryOptions, status_error
from acbuild.records import dataclass, field

CHUNK_SIZE = 32 << 20


@dataclass
class PushStats:
    uploaded: int = 0  # blobs whose bytes were sent
    present: int = 0  # blobs the registry had (HEAD)
    mounted: int = 0  # blobs mounted from another repository
    chunks: int = 0  # PATCH requests


def docker_reference(text: str) -> Reference:
    """`docker://REGISTRY/NAME[:TAG]` as a Reference (a push needs a tag, not a digest)."""
    if not text.startswith("docker://"):
        raise UsageError(f"{text}: expected docker://REGISTRY/NAME[:TAG]")
    ref = parse_reference(text[len("docker://"):])
    if ref.digest:
        raise UsageError(f"{text}: push to a tag, not a digest (the digest is printed after the push)")
    return ref


@dataclass
class Pusher:
    """Pushes to one repository; remembers, per registry, where each blob already is
    (for mounts), so several pushes from one Pusher chain share blobs."""

    client: RegistryClient
    repository: str
    chunk_size: int = CHUNK_SIZE
    stats: PushStats = field(default_factory=PushStats)
    known: dict[str, str] = field(default_factory=dict)  # "REGISTRY@DIGEST" -> a repository holding it

    @property
    def _scope(self) -> str:
        return f"repository:{self.repository}:pull,push"

    def _call(self, method: str, path: str, expect: tuple[int, ...], what: str, *, scopes: list[str] | None = None,
              headers: dict[str, str] | None = None, body: bytes | None = None):
        """One request whose status must be in `expect` (else the registry's error);
        returns (status, headers) with the body drained."""
        with self.client.request(method, path, headers=headers, body=body, scopes=scopes or [self._scope],
                                 what=what) as resp:
            if resp.status not in expect:
                raise status_error(resp, what, method)
            resp.read()
            return resp.status, resp.headers

    def has_blob(self, desc: Descriptor) -> bool:
        status, _ = self._call("HEAD", f"/v2/{self.repository}/blobs/{desc.digest}", (200, 404),
                               f"{self.client.registry}/{self.repository}@{desc.digest}")
        return status == 200

    def push_blob(self, desc: Descriptor, path: Path) -> None:
        """Make `desc` (bytes in `path`) present in the repository (see the docstring)."""
        if self.has_blob(desc):
            self.stats.present += 1
            self._remember(desc)
            return
        source = self.known.get(f"{self.client.registry}@{desc.digest}")
        query = ""
        scopes = [self._scope]
        if source and source != self.repository:
            query = "?" + urllib.parse.urlencode({"mount": desc.digest, "from": source})
            scopes.append(f"repository:{source}:pull")
        status, headers = self._call("POST", f"/v2/{self.repository}/blobs/uploads/{query}", (201, 202) if query else (202,),
                                     f"{self.client.registry}/{self.repository}: start upload of {desc.digest}",
                                     scopes=scopes, headers={"Content-Length": "0"}, body=b"")
        if status == 201:
            self.stats.mounted += 1
        else:
            self._upload(desc, path, self._location(headers))
            self.stats.uploaded += 1
        self._remember(desc)

    def _remember(self, desc: Descriptor) -> None:
        self.known[f"{self.client.registry}@{desc.digest}"] = self.repository

    def _location(self, headers) -> str:
        """The upload URL the registry gave (absolute or a path), which must be on the registry."""
        loc = headers.get("Location", "")
        url = urllib.parse.urljoin(self.client.url("/"), loc)
        if not loc or urllib.parse.urlsplit(url).netloc != self.client.host:
            raise ImageError(f"{self.client.registry}: upload location {loc!r} is not on the registry")
        return url

    def _upload(self, desc: Descriptor, path: Path, location: str) -> None:
        what = f"upload {desc.digest} to {self.client.registry}/{self.repository}"
        body = b""
        try:
            with open(path, "rb") as f:
                if desc.size <= self.chunk_size:
                    body = f.read()
                else:
                    offset = 0
                    while data := f.read(self.chunk_size):
                        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                                   "Content-Range": f"{offset}-{offset + len(data) - 1}"}
                        _, reply = self._call("PATCH", location, (202,), what, headers=headers, body=data)
                        location = self._location(reply)
                        offset += len(data)
                        self.stats.chunks += 1
        except OSError as e:
            raise ImageError(f"{what}: read {path}: {e.strerror}") from e
        sep = "&" if "?" in location else "?"
        self._call("PUT", f"{location}{sep}digest={urllib.parse.quote(desc.digest)}", (201,), what,
                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}, body=body)

    def put_manifest(self, tag: str, data: bytes, media_type: str, digest: str) -> str:
        what = f"{self.client.registry}/{self.repository}:{tag}: put manifest"
        _, headers = self._call("PUT", f"/v2/{self.repository}/manifests/{tag}", (200, 201), what,
                                headers={"Content-Type": media_type, "Content-Length": str(len(data))}, body=data)
        said = headers.get("Docker-Content-Digest", "")
        if said and said != digest:
            raise ImageError(f"{what}: the registry stored the manifest as {said}, not {digest}")
        return digest

    def push_manifest_from(self, layout: Layout, manifest: Descriptor, tag: str) -> str:
        """Push every blob a manifest of `layout` names, then the manifest itself."""
        data = layout.read_blob(manifest)
        doc = parse_document(data, manifest.media_type)
        if not isinstance(doc, Manifest):
            raise ImageError(f"{layout.root}: {manifest.digest} is an index; push one image manifest")
        for desc in [doc.config, *doc.layers]:
            self.push_blob(desc, layout.blob_path(desc.digest))
        return self.put_manifest(tag, data, manifest.media_type, manifest.digest)


@dataclass(frozen=True)
class Pushed:
    reference: str  # REGISTRY/NAME:TAG
    digest: str  # the manifest's
    stats: PushStats


def push_image(layout: Layout, manifest: Descriptor, target: str, options: RegistryOptions | None = None,
               *, chunk_size: int = CHUNK_SIZE, known: dict[str, str] | None = None) -> Pushed:
    """Push the image `manifest` of `layout` to `docker://REGISTRY/NAME:TAG`. `known`
    (Pusher.known) carries mount sources from one push to the next."""
    ref = docker_reference(target)
    with RegistryClient.for_reference(ref, options or RegistryOptions()) as client:
        pusher = Pusher(client, ref.repository, chunk_size, known=known if known is not None else {})
        tag = ref.tag or "latest"
        digest = pusher.push_manifest_from(layout, manifest, tag)
        return Pushed(f"{ref.name}:{tag}", digest, pusher.stats)
