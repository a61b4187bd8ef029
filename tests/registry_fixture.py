"""A real registry for tests: Debian's docker-registry on 127.0.0.1 and a free
port, storage in a temp dir, optionally with TLS (netfixtures' test CA),
htpasswd Basic auth (bcrypt cost 4, so logins stay fast) or bearer-token auth
from `TokenServer`, a small token server written here (it issues JWTs signed
with a test key by `openssl dgst`; the registry checks them with its
`auth: token` config). `BlobProxy` sits in front of a registry to count blob
downloads and to serve a tampered blob. Nothing is mocked: acbuild talks HTTP
to these servers as it would to any registry.

Use the `registries` fixture (module scope): `registries(tls=True, basic=True)`
returns a running `Registry`; all are stopped when the module ends. `push()`
puts an image in with skopeo.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netfixtures import TestCA, make_test_ca

USER, PASSWORD = "tester", "s3cret-pw"
SERVICE = "acbuild-test-registry"
ISSUER = "acbuild-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _openssl(*args: str | Path, input: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, input=input).stdout


# ---------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry bearer tokens (RS256 JWTs whose x5c header carries the
    signing certificate, which the registry trusts through `rootcertbundle`).
    With `require_basic`, a token is only given for USER:PASSWORD. `requests`
    records the scopes asked for, so tests can see the client's token cache."""

    def __init__(self, dir: Path, require_basic: bool = True):
        dir.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = dir / "token.key", dir / "token.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                 "-days", "2", "-subj", "/CN=acbuild test token issuer")
        der = _openssl("x509", "-in", self.cert, "-outform", "DER")
        self.x5c = base64.b64encode(der).decode()
        self.require_basic = require_basic
        self.requests: list[list[str]] = []
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                scopes = query.get("scope", [])
                server.requests.append(scopes)
                want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if server.require_basic and self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": server.issue(scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def issue(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            if kind == "repository":
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": hashlib.sha256(os.urandom(16)).hexdigest(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = _openssl("dgst", "-sha256", "-sign", self.key, input=signing_input.encode())
        return f"{signing_input}.{_b64url(signature)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- the registry


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    proc: subprocess.Popen
    ca: TestCA | None = None
    basic: bool = False
    token: TokenServer | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def needs_creds(self) -> bool:
        return self.basic or (self.token is not None and self.token.require_basic)

    def acbuild_flags(self) -> list[str]:
        """The acbuild options that reach this registry."""
        flags = ["--ca-file", str(self.ca.ca)] if self.ca else ["--insecure"]
        if self.needs_creds:
            flags += ["--creds", f"{USER}:{PASSWORD}"]
        return flags

    def skopeo_dest_flags(self) -> list[str]:
        flags = ["--dest-tls-verify=false"]
        if self.needs_creds:
            flags += ["--dest-creds", f"{USER}:{PASSWORD}"]
        return flags

    def skopeo_src_flags(self) -> list[str]:
        flags = ["--src-tls-verify=false"]
        if self.needs_creds:
            flags += ["--src-creds", f"{USER}:{PASSWORD}"]
        return flags

    def push(self, source: str, name: str, *extra: str) -> None:
        """`skopeo copy SOURCE docker://HOST/NAME` (e.g. source oci:DIR:TAG)."""
        subprocess.run(["skopeo", "copy", "-q", *self.skopeo_dest_flags(), *extra, source,
                        f"docker://{self.host}/{name}"], check=True, capture_output=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(dir: Path, *, ca: TestCA | None = None, basic: bool = False,
                   token: TokenServer | None = None) -> Registry:
    """docker-registry serving `dir/storage` on a free 127.0.0.1 port."""
    require(shutil.which("docker-registry") is not None, "docker-registry not installed (apt-get install docker-registry)")
    dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http_conf: dict = {"addr": f"127.0.0.1:{port}", "secret": "acbuild-test"}
    if ca:
        http_conf["tls"] = {"certificate": str(ca.cert), "key": str(ca.key)}
    config: dict = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(dir / "storage")}, "delete": {"enabled": True}},
        "http": http_conf,
    }
    if basic:
        require(shutil.which("htpasswd") is not None, "htpasswd not installed (apt-get install apache2-utils)")
        subprocess.run(["htpasswd", "-Bbc", "-C", "4", str(dir / "htpasswd"), USER, PASSWORD],
                       check=True, capture_output=True)
        config["auth"] = {"htpasswd": {"realm": "acbuild-test", "path": str(dir / "htpasswd")}}
    elif token:
        config["auth"] = {"token": {"realm": token.realm, "service": SERVICE, "issuer": ISSUER,
                                    "rootcertbundle": str(token.cert)}}
    (dir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(dir / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(dir / "config.yml")], stdout=log, stderr=log,
                            env=dict(os.environ, OTEL_TRACES_EXPORTER="none"))
    log.close()
    try:
        wait_for_port(port, proc)
    except RuntimeError as e:
        proc.kill()
        raise RuntimeError(f"docker-registry: {e}: {(dir / 'registry.log').read_text()[-2000:]}") from None
    return Registry(f"127.0.0.1:{port}", dir / "storage", proc, ca, basic, token)


# ---------------------------------------------------------------- a proxy in front


class BlobProxy:
    """Plain-HTTP proxy to a plain-HTTP registry that counts blob GETs and, for
    digests in `tamper`, flips one byte of the body (what a bad mirror or a
    disk fault would serve)."""

    def __init__(self, upstream: Registry):
        assert not upstream.tls
        self.upstream = upstream.host
        self.blob_gets: list[str] = []
        self.tamper: set[str] = set()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                digest = self.path.rsplit("/", 1)[-1]
                if "/blobs/" in self.path and self.command == "GET" and resp.status == 200:
                    proxy.blob_gets.append(digest)
                    if digest in proxy.tamper and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def registries(tmp_path_factory) -> Iterator[Callable[..., Registry]]:
    """`registries(tls=False, basic=False, bearer=False)` -> a running Registry
    (bearer: with its own TokenServer asking for USER:PASSWORD)."""
    started: list = []
    base = tmp_path_factory.mktemp("registries")
    ca_holder: list[TestCA] = []

    def make(*, tls: bool = False, basic: bool = False, bearer: bool = False, anonymous_tokens: bool = False) -> Registry:
        n = len(started)
        ca = None
        if tls:
            if not ca_holder:
                (base / "ca").mkdir()
                ca_holder.append(make_test_ca(base / "ca"))
            ca = ca_holder[0]
        token = None
        if bearer:
            token = TokenServer(base / f"token{n}", require_basic=not anonymous_tokens)
            started.append(token)
        reg = start_registry(base / f"registry{n}", ca=ca, basic=basic, token=token)
        started.append(reg)
        return reg

    yield make
    for thing in reversed(started):
        thing.stop()
