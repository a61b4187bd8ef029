"""Image references, credentials lookup, and pulls with acbuild.oci.registry from a
real docker-registry (tests/registry_fixture.py): plain HTTP, TLS with a test CA,
htpasswd Basic auth and bearer tokens from a real token server; blobs verified by
digest and cached."""

from __future__ import annotations

import base64
import json

import pytest

from acbuild.errors import AcbuildError, ImageError, UsageError
from acbuild.oci import manifests as mt
from acbuild.oci.auth import Credentials, find_credentials, parse_challenge
from acbuild.oci.blobs import BlobCache
from acbuild.oci.reference import parse_reference, parse_source
from acbuild.oci.registry import RegistryClient, RegistryOptions
from tests.oci_images import TAG, test_images
from tests.registry_fixture import PASSWORD, USER, BlobProxy, registries  # noqa: F401 (fixture)


@pytest.mark.parametrize("text, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("index.docker.io/user/app", "docker.io/user/app:latest"),
    ("quay.io/coreos/etcd:v3", "quay.io/coreos/etcd:v3"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
    ("127.0.0.1:5000/a/b:t@sha256:" + "a" * 64, "127.0.0.1:5000/a/b:t@sha256:" + "a" * 64),
    ("busybox@sha256:" + "b" * 64, "docker.io/library/busybox@sha256:" + "b" * 64),
    ("user/app", "docker.io/user/app:latest"),
])
def test_references_normalise_as_docker_does(text, want):
    assert str(parse_reference(text)) == want


@pytest.mark.parametrize("text", ["BusyBox", "busybox:", "busybox@sha256:abc", "a//b", "busybox:-bad", ""])
def test_bad_references_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_reference(text)


def test_sources_split_into_transports():
    assert parse_source("oci:/tmp/x:v1").path == "/tmp/x"
    assert parse_source("oci:/tmp/x:v1").ref == "v1"
    assert parse_source("docker-archive:img.tar").transport == "docker-archive"
    assert parse_source("docker://busybox").reference.repository == "library/busybox"
    with pytest.raises(UsageError, match="unknown image source"):
        parse_source("ftp://x")


def test_challenge_parsing():
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"').scheme == "basic"


def test_credentials_from_auth_files_most_specific_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    enc = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker/config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": enc("hub:pw")},
        "reg.example:5000": {"auth": enc("host:pw")},
        "reg.example:5000/team": {"auth": enc("team:pw")},
    }}))
    assert find_credentials(parse_reference("busybox")) == Credentials("hub", "pw", str(tmp_path / ".docker/config.json"))
    assert find_credentials(parse_reference("reg.example:5000/team/app")).username == "team"
    assert find_credentials(parse_reference("reg.example:5000/other/app")).username == "host"
    assert find_credentials(parse_reference("quay.io/x/y")) is None
    # containers' auth.json comes before Docker's file; $REGISTRY_AUTH_FILE before both.
    (tmp_path / "config/containers").mkdir(parents=True)
    (tmp_path / "config/containers/auth.json").write_text(json.dumps({"auths": {"reg.example:5000": {"auth": enc("podman:pw")}}}))
    assert find_credentials(parse_reference("reg.example:5000/other/app")).username == "podman"
    (tmp_path / "override.json").write_text(json.dumps({"auths": {"reg.example:5000": {"auth": enc("override:pw")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "override.json"))
    assert find_credentials(parse_reference("reg.example:5000/other/app")).username == "override"


# ---------------------------------------------------------------- against a real registry


@pytest.fixture(scope="module")
def images():
    return test_images()


def _options(reg, with_creds: bool = True) -> RegistryOptions:
    return RegistryOptions(insecure=not reg.tls, ca_file=reg.ca.ca if reg.ca else None,
                           credentials=Credentials(USER, PASSWORD) if with_creds and reg.needs_creds else None)


def _layout_manifest(images) -> tuple[str, mt.Manifest]:
    index = json.loads((images.layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    data = (images.layout / "blobs/sha256" / digest.split(":")[1]).read_bytes()
    return digest, mt.parse_document(data)


def _requests(reg, manifest: mt.Manifest) -> int:
    """The HTTP requests of test_pull_by_tag_and_digest's two pulls: manifest,
    config and layers, then the manifest by digest; a 401 and a retry on the first
    call with auth, and the token request with bearer auth."""
    return 1 + 1 + len(manifest.layers) + 1 + (1 if reg.needs_creds or reg.token else 0) + bool(reg.token)


@pytest.mark.parametrize("kind", ["plain", "tls", "basic", "bearer", "tls+bearer"])
def test_pull_by_tag_and_digest(kind, registries, images, tmp_path):  # noqa: F811
    reg = registries(tls="tls" in kind, basic="basic" in kind, bearer="bearer" in kind)
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    if reg.token:
        reg.token.requests.clear()  # skopeo's own
    digest, manifest = _layout_manifest(images)
    cache = BlobCache(tmp_path / "blobs")
    with RegistryClient.for_reference(parse_reference(f"{reg.host}/busybox:latest"), _options(reg)) as client:
        pulled = client.pull(parse_reference(f"{reg.host}/busybox:latest"), cache)
        assert pulled.manifest_digest == digest  # skopeo pushed the manifest bytes unchanged
        assert [layer.digest for layer in pulled.manifest.layers] == [layer.digest for layer in manifest.layers]
        assert client.stats.blobs_downloaded == len(manifest.layers) + 1
        for layer in manifest.layers:
            assert cache.path(layer.digest).read_bytes() == (images.layout / "blobs/sha256" / layer.digest[7:]).read_bytes()
        # By digest, with everything cached: nothing is downloaded again.
        again = client.pull(parse_reference(f"{reg.host}/busybox@{digest}"), cache)
        assert again.manifest_digest == digest
        assert client.stats.blobs_downloaded == len(manifest.layers) + 1
        # Keep-alive: every request after the first goes over the same connection
        # (plus one to the token server; a plain registry is first tried with TLS).
        opened = 1 + bool(reg.token) + (not reg.tls)
        assert (client.pool.opened, client.pool.reused) == (opened, _requests(reg, manifest) - 1 - bool(reg.token))
    if reg.token:
        # One token per scope: the token server was asked once, for this repository's pull scope.
        assert reg.token.requests == [["repository:busybox:pull"]]


def test_missing_or_wrong_credentials_are_refused(registries, images, tmp_path):  # noqa: F811
    for reg in (registries(basic=True), registries(bearer=True)):
        reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
        ref = parse_reference(f"{reg.host}/busybox:latest")
        with RegistryClient.for_reference(ref, _options(reg, with_creds=False)) as client, \
                pytest.raises(ImageError, match="--creds"):
            client.pull(ref, BlobCache(tmp_path / "blobs"))
        wrong = RegistryOptions(insecure=True, credentials=Credentials(USER, "wrong"))
        with RegistryClient.for_reference(ref, wrong) as client, pytest.raises(ImageError, match="refused"):
            client.pull(ref, BlobCache(tmp_path / "blobs"))


def test_tls_without_the_ca_is_refused(registries, images, tmp_path):  # noqa: F811
    reg = registries(tls=True)
    ref = parse_reference(f"{reg.host}/busybox:latest")
    with RegistryClient.for_reference(ref) as client, \
            pytest.raises(AcbuildError, match="certificate verify failed.*--ca-file"):
        client.get_manifest(ref.repository, ref.reference)
    # --insecure: HTTPS without the certificate check (it does not fall back to plain HTTP).
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    with RegistryClient.for_reference(ref, RegistryOptions(insecure=True)) as client:
        client.get_manifest(ref.repository, ref.reference)
        assert client.scheme == "https"


def test_a_tampered_blob_is_refused_and_not_cached(registries, images, tmp_path):  # noqa: F811
    reg = registries()
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    proxy = BlobProxy(reg)
    try:
        _, manifest = _layout_manifest(images)
        bad = manifest.layers[1].digest
        proxy.tamper.add(bad)
        ref = parse_reference(f"{proxy.host}/busybox:latest")
        cache = BlobCache(tmp_path / "blobs")
        with RegistryClient.for_reference(ref, RegistryOptions(insecure=True)) as client, \
                pytest.raises(ImageError, match=f"{bad}: digest mismatch"):
            client.pull(ref, cache)
        assert not cache.has(bad)
        assert not list(cache.path(bad).parent.glob(".*part"))  # no partial file left
    finally:
        proxy.stop()


def test_unknown_manifest_is_not_found(registries, tmp_path):  # noqa: F811
    from acbuild.errors import NotFoundError

    reg = registries()
    ref = parse_reference(f"{reg.host}/nothing:here")
    with RegistryClient.for_reference(ref, RegistryOptions(insecure=True)) as client, \
            pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        client.get_manifest(ref.repository, ref.reference)


def test_credentials_from_registry_auth_file_reach_a_real_registry(registries, images, tmp_path, monkeypatch):  # noqa: F811
    reg = registries(basic=True)
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {reg.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    ref = parse_reference(f"{reg.host}/busybox:latest")
    with RegistryClient.for_reference(ref, RegistryOptions(insecure=True)) as client:
        assert client.get_manifest(ref.repository, ref.reference)[2].startswith("sha256:")
        assert client.credentials().origin == str(auth)
