"""Real servers for the network tests, all on 127.0.0.1 (never any other address).

- `test_ca`: a CA and a server certificate for `localhost` and `127.0.0.1`, made
  with openssl in the test set-up (session scope).
- `Site`: a threaded HTTP or HTTPS server whose routes a test writes as small
  functions of the request handler; it records every request line it served.
- `ConnectProxy`: an HTTP proxy that tunnels CONNECT to 127.0.0.1 only and answers
  absolute-URL GETs itself, recording what it was asked.

Import what a test module needs: `from netfixtures import test_ca, Site`.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TestCA:
    dir: Path
    ca: Path  # the CA certificate (PEM): what clients are told to trust
    cert: Path  # server certificate for localhost / 127.0.0.1, signed by the CA
    key: Path

    def server_context(self, wrong_name: bool = False) -> ssl.SSLContext:
        """The server side; `wrong_name` serves a certificate (same CA) for wrong.invalid."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if wrong_name:
            context.load_cert_chain(self.dir / "wrong.pem", self.dir / "wrong.key")
        else:
            context.load_cert_chain(self.cert, self.key)
        return context


def make_test_ca(where: Path) -> TestCA:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3", "-subj", "/CN=acbuild test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, alt in (("server", "DNS:localhost,IP:127.0.0.1"), ("wrong", "DNS:wrong.invalid")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={alt.split(',')[0][4:]}")
        (where / f"{name}.ext").write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                                           "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "3", "-extfile", f"{name}.ext")
    return TestCA(where, where / "ca.pem", where / "server.pem", where / "server.key")


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


Route = Callable[[BaseHTTPRequestHandler], None]


class InThread:
    """A socketserver `self.server` run in a daemon thread while the `with` lasts."""

    server: socketserver.BaseServer

    def __enter__(self):
        self.port = self.server.server_address[1]
        # A short poll interval: shutdown() waits for one, and tests start many servers.
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Site(InThread):
    """A real server on 127.0.0.1:<free port>. `routes` maps a path (query excluded)
    to a function that writes the reply; unknown paths get 404. Use as a context
    manager; `requests` lists "METHOD /path?query" in the order served."""

    def __init__(self, tls: TestCA | None = None, port: int = 0, wrong_name: bool = False):
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.request_headers: list[dict[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                site.requests.append(f"{self.command} {self.path}")
                site.request_headers.append(dict(self.headers))
                route = site.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    send(self, b"not found\n", status=404)
                else:
                    route(self)

            do_HEAD = do_GET

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.server_context(wrong_name).wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]

    def url(self, path: str = "/", host: str = LOOPBACK) -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def send(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200, headers: dict[str, str] | None = None,
         length: int | None = None) -> None:
    """Reply with `body`; `length` overrides Content-Length (to lie about it)."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
    handler.close_connection = length is not None and length != len(body)


def page(body: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Route:
    data = body.encode() if isinstance(body, str) else body
    return lambda h: send(h, data, status, headers)


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: send(h, b"", status, {"Location": location})


class ConnectProxy(InThread):
    """An HTTP proxy on 127.0.0.1: CONNECT tunnels to 127.0.0.1 ports only; a GET with
    an absolute URL is answered by the proxy itself ("proxied <url>")."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode("latin-1").strip()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                proxy.asked.append(line)
                method, target, _ = line.split(" ", 2)
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    if host not in (LOOPBACK, "localhost"):
                        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        return
                    upstream = socket.create_connection((LOOPBACK, int(port)))
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    _relay(self.connection, upstream)
                else:
                    body = f"proxied {target}".encode()
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                                     % (len(body), body))

        self.server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True


def _relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()


@pytest.fixture
def no_proxy_env(monkeypatch) -> Iterator[None]:
    """Tests talk to 127.0.0.1 directly whatever the caller's proxy settings."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield
