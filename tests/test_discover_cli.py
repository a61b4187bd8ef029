"""The commands: `acbuild discover` (output as actool prints it, usage errors),
`acbuild serve` and `serve --export` as processes, and `acbuild trust --prefix P`
with keys discovered from a served repository (real GnuPG, real HTTPS on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netfixtures import Site, no_proxy_env, page, test_ca  # noqa: F401
from test_discovery import html, meta
from test_serve import LINUX, make_image

pytestmark = pytest.mark.usefixtures("no_proxy_env")


def acbuild(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=120)


def test_discover_prints_like_actool(test_ca, actool):
    with Site(tls=test_ca) as site:
        site.routes["/app"] = page(html(meta("ac-discovery", "localhost https://a.test/{name}-{version}-{os}-{arch}.{ext}"),
                                        meta("ac-discovery", "localhost https://b.test/{name}.{ext}"),
                                        meta("ac-discovery-pubkeys", "localhost https://k.test/1.gpg"),
                                        meta("ac-discovery-pubkeys", "localhost https://k.test/2.gpg")))
        done = acbuild("discover", "localhost/app:1.0", "--port", str(site.port), "--ca-file", str(test_ca.ca))
        theirs = subprocess.run([actool, "discover", f"--port={site.port}", "localhost/app:1.0"], capture_output=True,
                                text=True, env={**os.environ, "SSL_CERT_FILE": str(test_ca.ca)}, timeout=60)
        as_json = acbuild("discover", "--json", "localhost/app:1.0", "--port", str(site.port),
                          env={"SSL_CERT_FILE": str(test_ca.ca)})
    assert done.returncode == 0, done.stderr
    aci_lines = [line for line in theirs.stdout.splitlines() if line.startswith("ACI: ")]
    assert done.stdout.splitlines() == aci_lines + ["Keys: https://k.test/1.gpg", "Keys: https://k.test/2.gpg"]
    assert theirs.stdout.splitlines()[-1] == "PublicKeys: https://k.test/1.gpg,https://k.test/2.gpg"
    data = json.loads(as_json.stdout)
    assert data["ACIEndpoints"][0] == {"ACI": "https://a.test/localhost/app-1.0-linux-amd64.aci",
                                       "ASC": "https://a.test/localhost/app-1.0-linux-amd64.aci.asc"}
    assert data["PublicKeys"] == ["https://k.test/1.gpg", "https://k.test/2.gpg"]


def test_discover_failure_lists_what_was_tried(test_ca):
    with Site(tls=test_ca) as site:
        done = acbuild("discover", "localhost/x/y", "--port", str(site.port), "--ca-file", str(test_ca.ca))
        plain = acbuild("discover", "localhost/x", "--port", str(site.port))  # no CA: unknown CA
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "acbuild: no image found for localhost/x/y,arch=amd64,os=linux: discovery failed"
    assert lines[1] == f"  https://localhost:{site.port}/x/y?ac-discovery=1: HTTP 404 Not Found"
    assert len(lines) == 4 and "Traceback" not in done.stderr
    assert plain.returncode == 2 and "certificate verify failed" in plain.stderr and "unknown CA" in plain.stderr


@pytest.mark.parametrize("name, why", [
    ("localhost/app:1:2", "a colon may appear at most once"),
    ("localhost/app,channel=beta:1", "a colon may appear only right after the name"),
    ("Bad/Name", "ACIdentifier must contain only"),
    ("localhost/app,novalue", "has no value"),
])
def test_discover_bad_names_are_usage_errors(name, why):
    done = acbuild("discover", name)
    assert done.returncode == 3
    assert done.stderr.startswith(f"acbuild: {name!r}: ") and why in done.stderr
    assert "Traceback" not in done.stderr


def test_discover_options_are_checked():
    assert acbuild("discover", "localhost/app", "--port", "0").returncode == 3
    assert acbuild("discover", "localhost/app", "--timeout", "-1").returncode == 3
    done = acbuild("discover", "localhost/app", "--ca-file", "/nonexistent.pem", "--port", "1")
    assert done.returncode == 1 and "CA bundle /nonexistent.pem" in done.stderr


def test_discovery_settings_from_acbuild_toml(test_ca, tmp_path):
    with Site(tls=test_ca) as site:
        site.routes["/app"] = page(html(meta("ac-discovery", "localhost https://a.test/{name}.{ext}")))
        config = tmp_path / "acbuild.toml"
        config.write_text(f'[discovery]\nport = {site.port}\nca-file = "{test_ca.ca}"\ntimeout = 20\n')
        done = acbuild("discover", "localhost/app", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ACI: https://a.test/localhost/app.aci")
    config.write_text('[discovery]\nport = "x"\n')
    bad = acbuild("discover", "localhost/app", "--config", str(config))
    assert bad.returncode == 3 and "port must be" in bad.stderr


def start_serve(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
    return proc, line.strip().rsplit(" at ", 1)[1]


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    proc.wait(timeout=20)
    return proc.stderr.read()


def test_serve_command_serves_and_logs(tmp_path, test_ca):
    from acbuild.net.http import HttpOptions, read_url

    repo = tmp_path / "repo"
    repo.mkdir()
    make_image(repo / "app.aci", "localhost/app", {"version": "1.0", **LINUX})
    (repo / "bad.aci").write_bytes(b"not an image")
    proc, url = start_serve(str(repo), "--port", "0", "--tls-cert", str(test_ca.cert), "--tls-key", str(test_ca.key))
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        index = json.loads(read_url(f"https://localhost:{port}/index.json", HttpOptions(ca_file=test_ca.ca)))
        assert [e["name"] for e in index["images"]] == ["localhost/app"]
        found = acbuild("discover", "localhost/app:1.0", "--port", str(port), "--ca-file", str(test_ca.ca))
        assert found.stdout.startswith(f"ACI: https://localhost:{port}/localhost/app-1.0-linux-amd64.aci, ")
    finally:
        log = stop(proc)
    assert url.startswith("https://127.0.0.1:")
    assert "warning: bad.aci: not served" in log
    assert '"GET /index.json HTTP/1.1" 200' in log


@pytest.mark.parametrize("args, why", [
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--export"], "serve --export: give DIR and OUT"),
    (["OUT"], "OUT is only for --export"),
    (["--base-url", "localhost"], "must start with https://"),
    (["--keys", "/nonexistent"], "--keys /nonexistent: no such file"),
])
def test_serve_usage_errors(tmp_path, args, why):
    done = acbuild("serve", str(tmp_path), *args)
    assert done.returncode == 3 and why in done.stderr and "Traceback" not in done.stderr


def test_serve_export_command(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    make_image(repo / "app.aci", "localhost/app", {"version": "1.0", **LINUX})
    done = acbuild("serve", "--export", str(repo), str(tmp_path / "site"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"exported 1 image (7 files) to {tmp_path / 'site'} for https://localhost/"
    page_html = (tmp_path / "site" / "app" / "index.html").read_text()
    assert '<meta name="ac-discovery" content="localhost/app https://localhost/{name}-{version}-{os}-{arch}.{ext}">' \
        in page_html
    make_image(repo / "other.aci", "example.com/other", {"version": "1.0", **LINUX})
    several = acbuild("serve", "--export", str(repo), str(tmp_path / "site"))
    assert several.returncode == 3 and "give --base-url" in several.stderr


# ---------------------------------------------------------------- trust --prefix, keys discovered


@pytest.fixture
def signer(gpg_homes, tmp_path) -> tuple[str, Path]:
    home = gpg_homes()
    fingerprint = home.make_key("Repo Signer <signer@localhost>")
    keys = tmp_path / "pubkeys.asc"
    keys.write_bytes(home.export(fingerprint))
    return fingerprint, keys


def test_trust_prefix_discovers_the_keys(tmp_path, test_ca, signer):
    fingerprint, keys = signer
    repo = tmp_path / "repo"
    repo.mkdir()
    make_image(repo / "app.aci", "localhost/app", {"version": "1.0", **LINUX})
    trust = tmp_path / "trust"
    proc, url = start_serve(str(repo), "--port", "0", "--tls-cert", str(test_ca.cert), "--tls-key", str(test_ca.key),
                            "--keys", str(keys))
    port = url.rsplit(":", 1)[1].strip("/")
    common = ["--port", port, "--ca-file", str(test_ca.ca), "--trust-dir", str(trust)]
    try:
        declined = acbuild("trust", "--prefix", "localhost/app", *common, input="n\n")
        assert declined.returncode == 1 and not trust.exists()
        assert f"key {fingerprint}" in declined.stderr and "Repo Signer <signer@localhost>" in declined.stderr
        assert f"from https://localhost:{port}/pubkeys.gpg" in declined.stderr
        done = acbuild("trust", "--prefix", "localhost/app", *common, "--yes")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"trusted {fingerprint} (Repo Signer <signer@localhost>) for prefix localhost/app")
        assert (trust / "prefix.d" / "localhost" / "app" / fingerprint).is_file()
        # A prefix above every image name: the key walk reaches the root page.
        above = acbuild("trust", "--prefix", "localhost", *common, "--yes")
        assert above.returncode == 0, above.stderr
        assert (trust / "prefix.d" / "localhost" / fingerprint).is_file()
        unknown_ca = acbuild("trust", "--prefix", "localhost/app", "--port", port, "--trust-dir", str(trust), "--yes")
        assert unknown_ca.returncode == 2 and "unknown CA" in unknown_ca.stderr
    finally:
        stop(proc)


def test_trust_prefix_refusals(tmp_path, test_ca):
    trust = tmp_path / "trust"
    with Site(tls=test_ca) as site:
        site.routes["/app"] = page(html(meta("ac-discovery-pubkeys", "localhost http://127.0.0.1:1/k.gpg")))
        common = ["--port", str(site.port), "--ca-file", str(test_ca.ca), "--trust-dir", str(trust), "--yes"]
        plain = acbuild("trust", "--prefix", "localhost/app", *common)
        assert plain.returncode == 1
        assert "http://127.0.0.1:1/k.gpg: a key over plain http is refused without --insecure" in plain.stderr
        none = acbuild("trust", "--prefix", "localhost/none", *common)
        assert none.returncode == 2 and "no public keys found for localhost/none: discovery failed" in none.stderr
        site.routes["/junk"] = page(html(meta("ac-discovery-pubkeys", f"localhost {site.url('/k.gpg', 'localhost')}")))
        site.routes["/k.gpg"] = page("not a key")
        junk = acbuild("trust", "--prefix", "localhost/junk", *common)
        assert junk.returncode == 1 and "holds no OpenPGP public key" in junk.stderr
        root = acbuild("trust", "--root", *common)
        assert root.returncode == 3 and "--root needs a KEYFILE" in root.stderr
    assert not trust.exists() or not any(trust.rglob("*"))
    assert "Traceback" not in plain.stderr + none.stderr + junk.stderr + root.stderr


def test_signed_image_from_serve_verifies_after_trust_by_discovery(tmp_path, test_ca, gpg_homes):
    """The pieces the fetch loop joins: sign -> serve -> trust --prefix (discovered)
    -> download by discovery -> verify against the trust store."""
    from acbuild.net.discovery import AppRequest, DiscoveryOptions, discover
    from acbuild.net.http import HttpOptions, read_url

    home = gpg_homes()
    fingerprint = home.make_key("Publisher <pub@localhost>")
    keys = tmp_path / "pubkeys.asc"
    keys.write_bytes(home.export(fingerprint))
    repo = tmp_path / "repo"
    repo.mkdir()
    image = make_image(repo / "hello.aci", "localhost/hello", {"version": "1.0", **LINUX}, signed=False)
    signed = acbuild("sign", str(image), "--key", fingerprint, "--gpg-home", str(home.path))
    assert signed.returncode == 0, signed.stderr
    trust = tmp_path / "trust"
    proc, url = start_serve(str(repo), "--port", "0", "--tls-cert", str(test_ca.cert), "--tls-key", str(test_ca.key),
                            "--keys", str(keys))
    port = url.rsplit(":", 1)[1].strip("/")
    try:
        trusted = acbuild("trust", "--prefix", "localhost/hello", "--port", port, "--ca-file", str(test_ca.ca),
                          "--trust-dir", str(trust), "--yes")
        assert trusted.returncode == 0, trusted.stderr
        options = DiscoveryOptions(HttpOptions(ca_file=test_ca.ca), int(port))
        endpoint = discover(AppRequest.parse("localhost/hello:1.0").with_host_defaults(), options).require_endpoints()[0]
        got = tmp_path / "got.aci"
        got.write_bytes(read_url(endpoint.aci, options.http, limit=1 << 24))
        Path(f"{got}.asc").write_bytes(read_url(endpoint.asc, options.http))
    finally:
        stop(proc)
    verified = acbuild("verify", str(got), "--trust-dir", str(trust))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("signature verified: Publisher <pub@localhost>")
    elsewhere = acbuild("verify", str(got), "--trust-dir", str(tmp_path / "empty-trust"))
    assert elsewhere.returncode != 0 and "Traceback" not in elsewhere.stderr
