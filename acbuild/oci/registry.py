"""A client for the registry HTTP API v2 (the OCI distribution spec): pulls.

One `RegistryClient` talks to one registry. `request()` is the seam every
call goes through, pushes included (acbuild.oci.push adds HEAD blob, POST/PUT
uploads, cross-repository mounts and manifest PUT on top of it): it sends the
Authorization the registry asked for and, on a 401, answers the
WWW-Authenticate challenge once and retries:
- Basic: the credentials (from --creds or the auth files, acbuild.oci.auth);
- Bearer: a token from the challenge's realm for `service` and the scopes of
  the call (`repository:NAME:pull`, or `pull,push`), fetched with the
  credentials when there are any, anonymously otherwise, and cached per
  (realm, service, scopes) for the life of the client.

Manifest GETs always send the Accept header (OCI and Docker schema 2 manifests
and indexes), and the manifest's digest is checked against the one asked for
and against Docker-Content-Digest. Blobs stream into the BlobCache, which
verifies each digest as the bytes arrive; a blob already in the cache is not
downloaded again. HTTP goes through acbuild.net.http, with one keep-alive
ConnectionPool per client (close() closes it): HTTPS checked against
`ca_file` (or the system roots); `insecure` is Docker's insecure-registry: HTTPS
without a certificate check, and plain HTTP when the registry does not speak
TLS at all (decided on the first request, then kept).

Everything a server says is untrusted: errors are ImageError (NotFoundError
for an unknown manifest), with the registry's own error message when it sent one.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from acbuild.errors import ImageError, NotFoundError
from acbuild.net.http import ConnectionPool, HttpOptions, NetError, Response, open_url
from acbuild.oci import manifests as mt
from acbuild.oci.auth import Credentials, RegistryOptions, find_credentials, parse_challenge
from acbuild.oci.blobs import BlobCache, digest_of, read_verified
from acbuild.oci.reference import Reference
from acbuild.records import dataclass

MAX_MANIFEST = 4 << 20


@dataclass
class PullStats:
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    blobs_cached: int = 0


@dataclass(frozen=True)
class Pulled:
    """A resolved image: its manifest (by digest), config bytes and layer descriptors."""

    reference: Reference
    manifest_digest: str
    manifest: mt.Manifest
    manifest_bytes: bytes
    config: bytes


class RegistryClient:
    def __init__(self, registry: str, options: RegistryOptions = RegistryOptions(),
                 reference_for_creds: Reference | None = None):
        self.registry = registry
        self.options = options
        self.scheme = "https"
        self._scheme_known = not options.insecure
        self.host = registry  # host[:port], Reference.api_host
        self.http = HttpOptions(ca_file=options.ca_file, insecure=options.insecure, timeout=options.timeout)
        self._credentials = options.credentials
        self._creds_ref = reference_for_creds
        self._creds_looked_up = options.credentials is not None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self._challenge: tuple[str, dict[str, str]] | None = None  # the last one answered
        self.stats = PullStats()
        self.pool = ConnectionPool()  # keep-alive: a pull of many blobs reuses its connections

    @classmethod
    def for_reference(cls, ref: Reference, options: RegistryOptions = RegistryOptions()) -> RegistryClient:
        return cls(ref.api_host, options, ref)

    def close(self) -> None:
        """Close the idle keep-alive connections."""
        self.pool.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- credentials and tokens --

    def credentials(self) -> Credentials | None:
        if not self._creds_looked_up:
            self._creds_looked_up = True
            if self._creds_ref is not None:
                self._credentials = find_credentials(self._creds_ref)
        return self._credentials

    def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        if self._challenge is None:
            return None
        scheme, params = self._challenge
        if scheme == "bearer":
            token = self._tokens.get((params.get("realm", ""), params.get("service", ""), scopes))
            return f"Bearer {token}" if token else None
        creds = self.credentials()
        return creds.basic() if creds else None

    def _answer(self, header: str, scopes: tuple[str, ...], what: str) -> None:
        """Get what a 401's challenge asks for (raises when it cannot be met)."""
        challenge = parse_challenge(header)
        if challenge.scheme == "basic":
            if not self.credentials():
                raise ImageError(f"{what}: {self.registry} wants a user name and password "
                                 "(give --creds USER:PASSWORD or log in with skopeo/podman login)")
            self._challenge = ("basic", challenge.params)
        elif challenge.scheme == "bearer":
            realm = challenge.params.get("realm", "")
            service = challenge.params.get("service", "")
            self._tokens[(realm, service, scopes)] = self._fetch_token(realm, service, scopes, what)
            self._challenge = ("bearer", {"realm": realm, "service": service})
        else:
            raise ImageError(f"{what}: {self.registry} asks for unsupported authentication {challenge.scheme!r}")

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...], what: str) -> str:
        url = urllib.parse.urlsplit(realm)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ImageError(f"{what}: bad token realm {realm!r}")
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        token_url = realm + ("&" if url.query else "?") + urllib.parse.urlencode(query)
        headers = {}
        creds = self.credentials()
        if creds:
            headers["Authorization"] = creds.basic()
        with open_url(token_url, self.http, headers=headers, limit=1 << 20, raise_for_status=False,
                      pool=self.pool) as resp:
            body = resp.read()
        if resp.status == 401:
            raise ImageError(f"{what}: the token server {url.netloc} refused the credentials"
                             + (f" from {creds.origin}" if creds else " (none given: try --creds)"))
        if resp.status != 200:
            raise ImageError(f"{what}: token server {url.netloc} answered {resp.status}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(f"{what}: token server {url.netloc} sent no token")
        return token

    # -- the seam --

    def url(self, path: str) -> str:
        """`/v2/...` on this registry; an absolute URL (an upload Location) as it is."""
        return path if path.startswith(("http://", "https://")) else f"{self.scheme}://{self.host}{path}"

    def _open(self, path: str, method: str, headers: dict[str, str], body: bytes | None,
              limit: int | None) -> Response:
        try:
            return open_url(self.url(path), self.http, method=method, headers=headers, body=body, limit=limit,
                            raise_for_status=False, pool=self.pool)
        except NetError as e:
            if self._scheme_known or not isinstance(e.__cause__, ssl.SSLError):
                raise
            self.scheme = "http"  # --insecure and no TLS at all: a plain-HTTP registry
            return open_url(self.url(path), self.http, method=method, headers=headers, body=body, limit=limit,
                            raise_for_status=False, pool=self.pool)
        finally:
            self._scheme_known = True

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, scopes: Iterable[str] = (), what: str = "",
                limit: int | None = None) -> Response:
        """`method` on `path` (see url()) with authentication (see the module
        docstring). Any status is returned, 401 after one answered challenge
        excepted; the caller reads or closes the response."""
        scopes = tuple(scopes)
        what = what or f"{method} {self.registry}{path}"
        answered = False
        while True:
            hdrs = dict(headers or {})
            auth = self._authorization(scopes)
            if auth:
                hdrs["Authorization"] = auth
            resp = self._open(path, method, hdrs, body, limit)
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            if answered:
                creds = self.credentials()
                raise ImageError(f"{what}: {self.registry} refused the credentials"
                                 + (f" from {creds.origin}" if creds else " (none given: try --creds)"))
            if not challenge:
                raise ImageError(f"{what}: 401 Unauthorized without a WWW-Authenticate challenge")
            self._answer(challenge, scopes, what)
            answered = True

    # -- pulls --

    @staticmethod
    def pull_scope(repository: str) -> str:
        return f"repository:{repository}:pull"

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index by tag or digest."""
        what = f"{self.registry}/{repository}:{reference}" if not reference.startswith("sha") \
            else f"{self.registry}/{repository}@{reference}"
        with self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": mt.ACCEPT},
                          scopes=[self.pull_scope(repository)], what=what, limit=MAX_MANIFEST) as resp:
            if resp.status != 200:
                raise status_error(resp, what, "manifest")
            data = resp.read()
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        if reference.startswith(("sha256:", "sha512:")):
            import io

            read_verified(io.BytesIO(data), reference, len(data), what="manifest")
            return data, media_type, reference
        digest = digest_of(data)
        if header_digest.startswith("sha256:") and header_digest != digest:
            raise ImageError(f"{what}: manifest digest {digest} is not the {header_digest} the registry announced")
        return data, media_type, digest

    def open_blob(self, repository: str, digest: str, size: int | None = None) -> Response:
        what = f"{self.registry}/{repository}@{digest}"
        resp = self.request("GET", f"/v2/{repository}/blobs/{digest}", scopes=[self.pull_scope(repository)],
                            what=what, limit=size)
        if resp.status != 200:
            raise status_error(resp, what, "blob")
        return resp

    def fetch_blob(self, repository: str, desc: mt.Descriptor, cache: BlobCache) -> Path:
        """The blob's path in `cache`, downloaded (and verified) only if missing."""
        if cache.has(desc.digest):
            self.stats.blobs_cached += 1
            return cache.path(desc.digest)
        with self.open_blob(repository, desc.digest, desc.size) as resp:
            try:
                path = cache.put_chunks(resp.chunks(), desc.digest, desc.size, what="blob")
            except OSError as e:
                raise ImageError(f"store blob {desc.digest} in {cache.root}: {e}") from e
        self.stats.blobs_downloaded += 1
        self.stats.bytes_downloaded += desc.size
        return path

    def resolve(self, ref: Reference, platform: mt.Platform | None = None) -> tuple[str, mt.Manifest, bytes]:
        """The image manifest `ref` names (through an index to `platform`, the
        host's by default): (digest, manifest, bytes)."""
        data, media_type, digest = self.get_manifest(ref.repository, ref.reference)
        doc = mt.parse_document(data, media_type)
        if isinstance(doc, mt.Index):
            chosen = mt.choose(doc, platform or mt.host_platform())
            data, media_type, digest = self.get_manifest(ref.repository, chosen.digest)
            doc = mt.parse_document(data, chosen.media_type or media_type)
            if isinstance(doc, mt.Index):
                raise ImageError(f"{ref}: an index inside an index is not supported")
        return digest, doc, data

    def pull(self, ref: Reference, cache: BlobCache, platform: mt.Platform | None = None) -> Pulled:
        """Resolve `ref`, fetch its config and layers into `cache`, and return what was pulled."""
        digest, doc, data = self.resolve(ref, platform)
        cache.put_bytes(data, digest, what="manifest")
        config_path = self.fetch_blob(ref.repository, doc.config, cache)
        for layer in doc.layers:
            self.fetch_blob(ref.repository, layer, cache)
        return Pulled(ref, digest, doc, data, config_path.read_bytes())


def status_error(resp: Response, what: str, kind: str) -> ImageError:
    """The registry's own words for a failed call (its JSON `errors` list)."""
    try:
        body = resp.read()
    except NetError:
        body = b""
    message = ""
    try:
        errors = json.loads(body).get("errors") or []
        message = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        pass
    text = f"{what}: {kind} request answered {resp.status}" + (f" ({message})" if message else "")
    return NotFoundError(text) if resp.status == 404 else ImageError(text)
