"""Pushes to a real registry (Debian's docker-registry, tests/registry_fixture.py):
`acbuild build --push`, `acbuild push` of OCI images and of .aci files as appc
artifacts (and `pull_aci_artifact` back, verified against the trust store), and the
step cache shared through a registry between two "machines". Every push is checked
by skopeo (inspect, copy back) with the digests recomputed here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from acbuild.errors import ImageError, SignatureError
from acbuild.oci.registry import RegistryOptions
from tests.conftest import require
from tests.registry_fixture import PASSWORD, USER, BlobProxy, registries  # noqa: F401 (fixture)
from tests.test_build import acbuild, example_context

INSECURE = RegistryOptions(insecure=True)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args) -> str:
    require(shutil.which("skopeo") is not None, "skopeo is not installed (Makefile APT_PACKAGES)")
    result = subprocess.run(["skopeo", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def inspect_flags(reg) -> list[str]:
    return ["--tls-verify=false", *(["--creds", f"{USER}:{PASSWORD}"] if reg.needs_creds else [])]


def copy_back_and_verify(reg, name: str, dest: Path, *, want_digest: str) -> dict:
    """skopeo copy docker://... -> an OCI layout; every blob re-hashed; returns the manifest."""
    raw = skopeo("inspect", "--raw", *inspect_flags(reg), f"docker://{reg.host}/{name}").encode()
    assert sha256(raw) == want_digest
    skopeo("copy", "-q", *reg.skopeo_src_flags(), f"docker://{reg.host}/{name}", f"oci:{dest}:copied")
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == want_digest
    manifest = json.loads(raw)
    for desc in [manifest["config"], *manifest["layers"]]:
        data = (dest / "blobs/sha256" / desc["digest"].partition(":")[2]).read_bytes()
        assert sha256(data) == desc["digest"] and len(data) == desc["size"]
    return manifest


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    require(os.geteuid() == 0 and Path("/bin/busybox").exists(), "needs root and busybox-static (RUN steps)")
    base = tmp_path_factory.mktemp("push-example")
    ctx = example_context(base)
    acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", base / "cache", "-q", "-o", base / "example.aci")
    acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", base / "cache", "-q", "-o", f"oci:{base}/layout:v1")
    return base, ctx


def layout_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(m["digest"] for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == tag)


def test_build_push_to_plain_registry_and_skopeo_copies_it_back(example, registries, tmp_path):
    base, ctx = example
    reg = registries()
    result = acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", base / "cache", "-o", f"oci:{tmp_path}/l:v1",
                     "--push", f"docker://{reg.host}/demo/hello:v1", "--push", f"docker://{reg.host}/mirror/hello:v1",
                     *reg.acbuild_flags())
    image_id, digest, digest2 = result.stdout.split()
    assert image_id.startswith("sha512-") and digest == digest2 == layout_digest(tmp_path / "l", "v1")
    assert digest == layout_digest(base / "layout", "v1")  # the same build, the same manifest
    assert f"pushed {reg.host}/demo/hello:v1 ({digest})" in result.stderr
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg.host}/demo/hello:v1"))
    assert info["Digest"] == digest and info["Labels"]["version"] == "1.0.0"
    copy_back_and_verify(reg, "demo/hello:v1", tmp_path / "back", want_digest=digest)
    copy_back_and_verify(reg, "mirror/hello:v1", tmp_path / "back2", want_digest=digest)


def test_push_sends_each_blob_once_mounts_across_repositories_and_chunks(example, registries, tmp_path):
    from acbuild.oci.layout_writer import Layout
    from acbuild.oci.push import push_image

    base, _ = example
    reg = registries()
    layout = Layout(base / "layout")
    manifest = layout.resolve("v1")
    known: dict[str, str] = {}
    first = push_image(layout, manifest, f"docker://{reg.host}/a/img:v1", INSECURE, known=known)
    assert (first.stats.uploaded, first.stats.present, first.stats.mounted) == (2, 0, 0)
    again = push_image(layout, manifest, f"docker://{reg.host}/a/img:v1", INSECURE, known=known)
    assert (again.stats.uploaded, again.stats.present) == (0, 2)  # HEAD first: nothing sent
    mounted = push_image(layout, manifest, f"docker://{reg.host}/b/img:v1", INSECURE, known=known)
    assert (mounted.stats.uploaded, mounted.stats.mounted) == (0, 2)
    chunked = push_image(layout, manifest, f"docker://{reg.host}/c/img:v1", INSECURE, chunk_size=64 << 10)
    assert chunked.stats.uploaded == 2 and chunked.stats.chunks > 10
    for name in ("a/img:v1", "b/img:v1", "c/img:v1"):
        copy_back_and_verify(reg, name, tmp_path / name.replace("/", "-").replace(":", "-"), want_digest=manifest.digest)
    # the CLI says the same
    result = acbuild("push", f"oci:{base}/layout:v1", f"docker://{reg.host}/a/img:v1", *reg.acbuild_flags())
    assert result.stdout.strip() == manifest.digest
    assert "0 blobs uploaded, 2 already there" in result.stderr


@pytest.mark.parametrize("kind", ["tls-basic", "bearer"])
def test_push_with_tls_and_authentication(example, registries, tmp_path, kind):
    base, _ = example
    reg = registries(tls=True, basic=True) if kind == "tls-basic" else registries(bearer=True)
    target = f"docker://{reg.host}/secure/hello:v1"
    result = acbuild("push", "--as-image", base / "example.aci", target, *reg.acbuild_flags())
    digest = result.stdout.strip()
    assert digest == layout_digest(base / "layout", "v1")  # --as-image is the same OCI image as build -o oci:
    copy_back_and_verify(reg, "secure/hello:v1", tmp_path / "back", want_digest=digest)
    tls_only = ["--ca-file", str(reg.ca.ca)] if reg.tls else ["--insecure"]
    no_creds = acbuild("push", "--as-image", base / "example.aci", target, *tls_only, check=False)
    assert no_creds.returncode == 1 and ("--creds" in no_creds.stderr or "refused" in no_creds.stderr), no_creds.stderr


def test_podman_runs_the_pushed_image(example, registries):
    """podman (as root) pulls the pushed image and runs its own exec, which prints the
    greeting and starts httpd as user hello. podman keeps its images in a storage of
    the test's own (vfs), so nothing touches the machine's containers storage. The
    explicit ulimits are for sandboxes like this machine's, where runc may not raise
    RLIMIT_NOFILE/NPROC to podman's defaults."""
    require(os.geteuid() == 0, "podman runs as root here")
    require(shutil.which("podman") is not None, "podman is not installed (Makefile APT_PACKAGES)")
    base, _ = example
    reg = registries()
    acbuild("push", "--as-image", base / "example.aci", f"docker://{reg.host}/run/hello:v1", "--insecure")
    home = Path(tempfile.mkdtemp(prefix="acb-podman.", dir="/tmp"))  # podman wants a short runroot
    podman = ["podman", "--root", str(home / "storage"), "--runroot", str(home / "run"), "--storage-driver", "vfs"]
    name = f"acbuild-push-test-{os.getpid()}"
    started = subprocess.run([*podman, "run", "-d", "--name", name, "--tls-verify=false", "--network", "none",
                              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", f"{reg.host}/run/hello:v1"],
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        for _ in range(100):
            logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True).stdout
            if logs:
                break
            time.sleep(0.1)
        assert logs == "Hello AppC\n"
        user = subprocess.run([*podman, "exec", name, "id", "-un"], capture_output=True, text=True)
        assert user.stdout == "hello\n", user.stderr
    finally:
        subprocess.run([*podman, "rm", "-f", "-t", "0", name], capture_output=True)
        subprocess.run([*podman, "rmi", "-af"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------- appc artifacts


@pytest.fixture()
def signed_example(example, gpg_homes, tmp_path):
    base, _ = example
    home = gpg_homes()
    fpr = home.make_key("Alice <alice@example.com>")
    aci = tmp_path / "signed" / "example.aci"
    aci.parent.mkdir()
    shutil.copy(base / "example.aci", aci)
    acbuild("sign", aci, "--key", fpr, "--gpg-home", home.path)
    trust = tmp_path / "trust"
    key = tmp_path / "alice.asc"
    key.write_bytes(home.export(fpr))
    acbuild("trust", "--trust-dir", trust, "--prefix", "example.com/busybox-hello", key, "--yes")
    return aci, trust


def test_aci_artifact_round_trip_is_byte_identical_and_verified(signed_example, registries, tmp_path):
    from acbuild.oci import media
    from acbuild.oci.artifact import pull_aci_artifact

    aci, trust = signed_example
    reg = registries()
    result = acbuild("push", aci, f"docker://{reg.host}/appc/busybox-hello:1.0.0", "--insecure")
    digest = result.stdout.strip()
    again = acbuild("push", aci, f"docker://{reg.host}/appc/busybox-hello:1.0.0", "--insecure")
    assert again.stdout.strip() == digest and "0 blobs uploaded, 3 already there" in again.stderr
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg.host}/appc/busybox-hello:1.0.0").encode()
    assert sha256(raw) == digest
    manifest = json.loads(raw)
    assert manifest["artifactType"] == media.APPC_ARTIFACT == "application/vnd.appc.image.v1"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [media.APPC_ACI, media.APPC_SIGNATURE]
    assert manifest["layers"][0]["digest"] == sha256(aci.read_bytes())
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"

    dest = tmp_path / "fetched"
    dest.mkdir()
    got_aci, got_asc = pull_aci_artifact(f"docker://{reg.host}/appc/busybox-hello:1.0.0", dest, options=INSECURE,
                                         trust_dirs=[trust])
    assert got_aci.read_bytes() == aci.read_bytes()
    assert got_asc.read_bytes() == Path(f"{aci}.asc").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["example.aci", "example.aci.asc"]
    by_digest = pull_aci_artifact(f"docker://{reg.host}/appc/busybox-hello@{digest}", tmp_path, options=INSECURE,
                                  trust_dirs=[trust])
    assert by_digest[0].read_bytes() == aci.read_bytes()


def test_artifact_pull_refuses_untrusted_unsigned_and_tampered(signed_example, registries, tmp_path):
    from acbuild.oci.artifact import pull_aci_artifact

    aci, trust = signed_example
    reg = registries()
    acbuild("push", aci, f"docker://{reg.host}/appc/hello:signed", "--insecure")
    dest = tmp_path / "dest"
    dest.mkdir()
    empty_trust = tmp_path / "no-keys"
    empty_trust.mkdir()
    with pytest.raises(SignatureError):
        pull_aci_artifact(f"docker://{reg.host}/appc/hello:signed", dest, options=INSECURE, trust_dirs=[empty_trust])
    assert list(dest.iterdir()) == []  # nothing appears unless verified

    unsigned = tmp_path / "unsigned.aci"
    shutil.copy(aci, unsigned)
    acbuild("push", unsigned, f"docker://{reg.host}/appc/hello:unsigned", "--insecure")
    with pytest.raises(SignatureError, match="no signature"):
        pull_aci_artifact(f"docker://{reg.host}/appc/hello:unsigned", dest, options=INSECURE, trust_dirs=[trust])
    got, asc = pull_aci_artifact(f"docker://{reg.host}/appc/hello:unsigned", dest, options=INSECURE,
                                 insecure_skip_verify=True)
    assert got.read_bytes() == aci.read_bytes() and asc is None

    dest2 = tmp_path / "dest2"
    dest2.mkdir()
    proxy = BlobProxy(reg)
    try:
        proxy.tamper.add(sha256(aci.read_bytes()))
        with pytest.raises(ImageError, match="digest mismatch"):
            pull_aci_artifact(f"docker://{proxy.host}/appc/hello:signed", dest2, options=INSECURE, trust_dirs=[trust])
        assert list(dest2.iterdir()) == []
    finally:
        proxy.stop()

    acbuild("push", "--as-image", aci, f"docker://{reg.host}/appc/hello:image", "--insecure")
    with pytest.raises(ImageError, match="not an appc image artifact"):
        pull_aci_artifact(f"docker://{reg.host}/appc/hello:image", dest2, options=INSECURE, trust_dirs=[trust])


# ---------------------------------------------------------------- the shared step cache


def test_cache_through_registry_gives_a_second_machine_every_step(registries, tmp_path):
    """Two machines: separate contexts, caches and work dirs. The first builds with
    --cache-to; the second, with an empty cache and --cache-from, hits every step
    (runs no RUN) and writes the same image ID and bytes."""
    require(os.geteuid() == 0 and Path("/bin/busybox").exists(), "needs root and busybox-static (RUN steps)")
    reg = registries()
    ref = f"docker://{reg.host}/ci/example:cache"
    machines = []
    for n in (1, 2):
        m = tmp_path / f"machine{n}"
        ctx = example_context(m)
        machines.append((m, ctx))
    (m1, ctx1), (m2, ctx2) = machines
    first = acbuild("build", "-f", ctx1 / "ACIfile", "--cache-dir", m1 / "cache", "-o", m1 / "out.aci",
                    "--cache-to", ref, "--metadata-file", m1 / "meta.json", *reg.acbuild_flags(), cwd=m1)
    assert "exported the step cache" in first.stderr
    assert json.loads((m1 / "meta.json").read_text())["steps"][6]["cache"] == "miss"  # it did run the RUNs
    again = acbuild("build", "-f", ctx1 / "ACIfile", "--cache-dir", m1 / "cache", "-o", m1 / "out.aci",
                    "--cache-to", ref, *reg.acbuild_flags(), cwd=m1)
    assert "(0 blobs uploaded" in again.stderr  # unchanged entries pack to the same blobs

    second = acbuild("build", "-f", ctx2 / "ACIfile", "--cache-dir", m2 / "cache", "-o", m2 / "out.aci",
                     "--cache-from", ref, "--metadata-file", m2 / "meta.json", "--progress", "plain",
                     *reg.acbuild_flags(), cwd=m2)
    meta = json.loads((m2 / "meta.json").read_text())
    assert [s["cache"] for s in meta["steps"]] == ["hit"] * len(meta["steps"])
    assert [s["instruction"] for s in meta["steps"] if s["instruction"].startswith("RUN")]  # RUNs among the hits
    assert second.stdout.split()[-1] == first.stdout.split()[-1]
    assert (m2 / "out.aci").read_bytes() == (m1 / "out.aci").read_bytes()
    # the last step's entry and the chain of layers its tree needs (engine.cache.stepcache), not every step
    imported = len(list((m2 / "cache/steps").glob("*/meta.json")))
    assert f"imported {imported} cache entries" in second.stderr and imported < len(meta["steps"])


def test_tampered_cache_entry_is_refused(registries, tmp_path):
    require(os.geteuid() == 0, "needs root")
    reg = registries()
    ref = f"{reg.host}/ci/small:cache"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/small\nCOPY data /data\n")
    (ctx / "data").write_text("payload\n")
    acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", tmp_path / "c1", "-o", tmp_path / "a.aci",
            "--cache-to", f"docker://{ref}", "--insecure", "-q")
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    proxy = BlobProxy(reg)
    try:
        proxy.tamper |= {layer["digest"] for layer in manifest["layers"]}
        result = acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", tmp_path / "c2", "-o", tmp_path / "b.aci",
                         "--cache-from", f"docker://{proxy.host}/ci/small:cache", "--insecure", check=False)
    finally:
        proxy.stop()
    assert result.returncode == 1 and "digest mismatch" in result.stderr
    assert not (tmp_path / "b.aci").exists()
    steps = tmp_path / "c2" / "steps"
    assert not steps.exists() or not [p for p in steps.iterdir()]


def test_cache_from_an_empty_tag_builds_normally(registries, tmp_path):
    """The first CI run: --cache-from names a tag nobody pushed yet."""
    reg = registries()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/small\nCOPY data /data\n")
    (ctx / "data").write_text("payload\n")
    result = acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", tmp_path / "c", "-o", tmp_path / "a.aci",
                     "--cache-from", f"docker://{reg.host}/ci/none:cache", "--insecure", "--metadata-file",
                     tmp_path / "m.json")
    assert result.stdout.startswith("sha512-") and "imported" not in result.stderr
    assert [s["cache"] for s in json.loads((tmp_path / "m.json").read_text())["steps"]] == ["miss"] * 3
    bad = acbuild("build", "-f", ctx / "ACIfile", "--cache-dir", tmp_path / "c", "-o", tmp_path / "a.aci",
                  "--cache-from", f"{reg.host}/ci/none:cache", check=False)
    assert bad.returncode == 3 and "expected docker://" in bad.stderr


def test_an_upload_location_off_the_registry_is_refused(example, tmp_path):
    """A registry (here a small hostile one written for the test) that sends the upload
    to another host gets no blob: acbuild refuses before sending any byte there."""
    import http.server
    import threading

    from acbuild.oci.layout_writer import Layout
    from acbuild.oci.push import push_image

    seen: list[str] = []

    class Hostile(http.server.BaseHTTPRequestHandler):
        answers = {"HEAD": (404, {}), "POST": (202, {"Location": "http://127.0.0.2:9/steal"}),
                   "PUT": (201, {}), "PATCH": (202, {})}

        def log_message(self, *args):
            pass

        def answer(self):
            seen.append(f"{self.command} {self.path}")
            status, headers = self.answers[self.command]
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        do_HEAD = do_POST = do_PUT = do_PATCH = answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base, _ = example
        layout = Layout(base / "layout")
        with pytest.raises(ImageError, match="not on the registry"):
            push_image(layout, layout.resolve("v1"), f"docker://127.0.0.1:{server.server_port}/x/y:v1", INSECURE)
    finally:
        server.shutdown()
        server.server_close()
    assert [line.split()[0] for line in seen] == ["HEAD", "POST"]
