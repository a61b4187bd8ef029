"""`acbuild serve --export` behind Debian's nginx: the test writes an nginx config with
the two lines README documents, starts nginx on 127.0.0.1 (HTTPS with the test CA;
no daemon, pid and logs in a temp dir) and stops it afterwards. Discovery through
nginx (acbuild's and actool's) finds the images, and nginx serves them with
Range and ETag. Also: what export refuses, and that it replaces only its own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require
from netfixtures import no_proxy_env, test_ca  # noqa: F401
from test_serve import KEYS, LINUX, make_image

from acbuild.errors import UsageError
from acbuild.net.discovery import AppRequest, DiscoveryOptions, discover
from acbuild.net.http import HttpOptions, open_url, read_url
from acbuild.serve.export import export
from acbuild.serve.repository import Scanner

pytestmark = pytest.mark.usefixtures("no_proxy_env")

NGINX_LINES = "root {out};\n        try_files $uri $uri/index.html =404;"  # as in README


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """Debian's nginx in the foreground with a config written here."""

    def __init__(self, work: Path, out: Path, tls, port: int):
        self.work, self.port = work, port
        work.mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dirs
        (work / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        {NGINX_LINES.format(out=out)}
    }}
}}
""")

    def __enter__(self) -> Nginx:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", str(self.work), "-e", str(self.work / "error.log"),
                                      "-c", str(self.work / "nginx.conf")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(200):  # wait until it listens (not a timing assertion)
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.proc.stdout.read().decode()}"
                                     f"{(self.work / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start listening")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    make_image(d / "app-1.0.aci", "localhost/app", {"version": "1.0", **LINUX}, b"one\n")
    make_image(d / "app-2.0.aci", "localhost/app", {"version": "2.0", **LINUX}, b"two\n" * 3000)
    make_image(d / "tool.aci", "localhost/team/tool", {"version": "0.1", **LINUX}, b"tool\n")
    (d / "keys").write_bytes(KEYS)
    return d


def test_export_behind_nginx(repo_dir, tmp_path, test_ca, actool):
    require(bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")), "nginx is not installed (apt-get install nginx)")
    port = free_port()
    out = tmp_path / "site"
    export(Scanner(repo_dir, repo_dir / "keys").scan(), out, f"https://localhost:{port}")
    assert (out / "app" / "index.html").is_file() and (out / "team" / "tool" / "index.html").is_file()
    assert (out / "localhost" / "app-2.0-linux-amd64.aci").is_file()
    opts = DiscoveryOptions(HttpOptions(ca_file=test_ca.ca), port=port)
    with Nginx(tmp_path / "nginx", out, test_ca, port):
        for name, file in (("localhost/app:1.0", "app-1.0.aci"), ("localhost/app", "app-2.0.aci"),
                           ("localhost/team/tool:0.1", "tool.aci")):
            found = discover(AppRequest.parse(name).with_host_defaults(), opts)
            assert read_url(found.endpoints[0].aci, opts.http, limit=1 << 24) == (repo_dir / file).read_bytes()
            assert read_url(found.endpoints[0].asc, opts.http) == Path(repo_dir / f"{file}.asc").read_bytes()
            assert read_url(found.keys[0], opts.http) == KEYS
            done = subprocess.run([actool, "discover", "--json", f"--port={port}", name], capture_output=True,
                                  text=True, env={**os.environ, "SSL_CERT_FILE": str(test_ca.ca)}, timeout=60)
            theirs = json.loads(done.stdout[done.stdout.index("{"):])
            assert theirs["ACIEndpoints"] == found.as_json()["ACIEndpoints"], name
            assert theirs["PublicKeys"] == list(found.keys), name
        data = (repo_dir / "app-2.0.aci").read_bytes()
        with open_url(found_url := f"https://localhost:{port}/localhost/app-2.0-linux-amd64.aci", opts.http,
                      start=50) as resp:
            assert (resp.status, resp.offset, resp.total) == (206, 50, len(data))
            assert resp.headers["ETag"]
            assert resp.read() == data[50:]
        index = json.loads(read_url(f"https://localhost:{port}/index.json", opts.http))
        assert {e["file"] for e in index["images"]} == {"app-1.0.aci", "app-2.0.aci", "tool.aci"}
        assert found_url in [e["url"] for e in index["images"]]


def test_export_replaces_only_an_earlier_export(repo_dir, tmp_path):
    repo = Scanner(repo_dir).scan()
    out = tmp_path / "site"
    export(repo, out, "https://localhost")
    make_image(repo_dir / "new.aci", "localhost/new", {"version": "1", **LINUX})
    export(Scanner(repo_dir).scan(), out, "https://localhost")
    assert (out / "localhost" / "new-1-linux-amd64.aci").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "site"]  # no temp dirs left
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious").write_text("x")
    with pytest.raises(UsageError, match="exists and is not an earlier export"):
        export(repo, other, "https://localhost")
    assert (other / "precious").read_text() == "x"
