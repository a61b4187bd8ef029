"""acbuild serve: a real server on 127.0.0.1 over a directory of real .aci files
(written by acbuild's writer). Discovery through it (acbuild's and actool's),
what it refuses (traversal, hidden files, symlinks out), Range, ETag, index.json,
TLS, concurrent clients, and a rescan when an image is published."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from netfixtures import InThread, no_proxy_env, test_ca  # noqa: F401

from acbuild.aci.archive import image_id_of
from acbuild.aci.writer import write_aci
from acbuild.net.discovery import AppRequest, DiscoveryOptions, discover
from acbuild.net.http import HttpOptions, NetError, open_url, read_url
from acbuild.serve.repository import Scanner
from acbuild.serve.server import RepositoryServer, tls_context

pytestmark = pytest.mark.usefixtures("no_proxy_env")

KEYS = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n(test key)\n-----END PGP PUBLIC KEY BLOCK-----\n"


def make_image(path: Path, name: str, labels: dict[str, str], payload: bytes = b"hello\n",
               signed: bool = True) -> Path:
    rootfs = path.parent / f".rootfs-{path.name}"
    rootfs.mkdir(parents=True)
    (rootfs / "payload").write_bytes(payload)
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
                "labels": [{"name": k, "value": v} for k, v in labels.items()]}
    write_aci(path, json.dumps(manifest).encode(), rootfs)
    if signed:
        Path(f"{path}.asc").write_bytes(b"-----BEGIN PGP SIGNATURE-----\n(" + path.name.encode() + b")\n")
    return path


LINUX = {"os": "linux", "arch": "amd64"}


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    make_image(d / "app-1.0.aci", "localhost/app", {"version": "1.0", **LINUX}, b"one\n")
    make_image(d / "app-2.0.aci", "localhost/app", {"version": "2.0.0", **LINUX}, b"two\n" * 5000)
    (d / "sub").mkdir()
    make_image(d / "sub" / "tool.aci", "localhost/team/tool", LINUX, b"tool\n", signed=False)
    make_image(d / "nolabels.aci", "localhost/bare", {}, b"bare\n")
    make_image(d / ".hidden.aci", "localhost/hidden", {"version": "1", **LINUX})
    (d / "leak.aci").symlink_to("/etc/passwd")
    (d / "outdir").symlink_to("/etc")
    (d / "keys").write_bytes(KEYS)
    return d


class Running(InThread):
    """acbuild's RepositoryServer on 127.0.0.1, in a thread; its log is dropped."""

    def __init__(self, root: Path, tls: ssl.SSLContext | None = None, keys: Path | None = None):
        self.server = RepositoryServer(Scanner(root, keys), tls=tls, log=open(os.devnull, "w"))
        self.port = self.server.server_address[1]

    def url(self, path: str = "/", host: str = "localhost") -> str:
        return f"{self.server.scheme}://{host}:{self.port}{path}"

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.server.log.close()


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A request line sent as is (http.client would not send some of these)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_discovery_through_the_server_gives_the_images(repo_dir):
    with Running(repo_dir, keys=repo_dir / "keys") as srv:
        opts = DiscoveryOptions(HttpOptions(insecure=True), port=srv.port)
        found = discover(AppRequest.parse("localhost/app:1.0").with_host_defaults(), opts)
        assert [e.aci for e in found.endpoints] == [srv.url("/localhost/app-1.0-linux-amd64.aci").replace("https", "http")]
        assert found.keys == (srv.url("/pubkeys.gpg"),)
        assert read_url(found.endpoints[0].aci) == (repo_dir / "app-1.0.aci").read_bytes()
        assert read_url(found.endpoints[0].asc) == (repo_dir / "app-1.0.aci.asc").read_bytes()
        assert read_url(found.keys[0]) == KEYS
        latest = discover(AppRequest.parse("localhost/app").with_host_defaults(), opts)
        assert read_url(latest.endpoints[0].aci, limit=1 << 24) == (repo_dir / "app-2.0.aci").read_bytes()
        # An unversioned image is "latest"; a parent path's page carries the keys.
        tool = discover(AppRequest.parse("localhost/team/tool").with_host_defaults(), opts)
        assert read_url(tool.endpoints[0].aci) == (repo_dir / "sub" / "tool.aci").read_bytes()
        with pytest.raises(NetError, match="HTTP 404"):
            read_url(tool.endpoints[0].asc)
        team = discover(AppRequest.parse("localhost/team"), opts)
        assert team.endpoints == () and team.keys == (srv.url("/pubkeys.gpg"),)


def test_actool_discovers_the_same_urls(repo_dir, actool, test_ca):
    import subprocess

    with Running(repo_dir, tls=tls_context(test_ca.cert, test_ca.key), keys=repo_dir / "keys") as srv:
        for name in ("localhost/app:1.0", "localhost/app", "localhost/team/tool:latest"):
            done = subprocess.run([actool, "discover", "--json", f"--port={srv.port}", name], capture_output=True,
                                  text=True, env={**os.environ, "SSL_CERT_FILE": str(test_ca.ca)}, timeout=60)
            assert done.returncode == 0, done.stderr
            theirs = json.loads(done.stdout[done.stdout.index("{"):])
            ours = discover(AppRequest.parse(name).with_host_defaults(),
                            DiscoveryOptions(HttpOptions(ca_file=test_ca.ca), srv.port)).as_json()
            assert ours["ACIEndpoints"] == theirs["ACIEndpoints"] and ours["PublicKeys"] == theirs["PublicKeys"]
            print(name, "->", theirs["ACIEndpoints"][0]["ACI"])


@pytest.mark.parametrize("target", [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/localhost/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd", "//etc/passwd", "/leak.aci", "/outdir/passwd", "/.hidden.aci",
    "/localhost/hidden-1-linux-amd64.aci", "/keys", "/app-1.0.aci", "/sub/tool.aci", "/..\\..\\etc\\passwd",
    "/localhost/app-1.0-linux-amd64.aci%00.html", "http://localhost/../etc/passwd",
])
def test_nothing_outside_the_table_is_reachable(repo_dir, target):
    with Running(repo_dir) as srv:
        status, body = raw_get(srv.port, target)
    assert status in (400, 404), (target, status)
    assert b"root:" not in body


def test_what_is_not_served_is_said_once(repo_dir):
    repo = Scanner(repo_dir).scan()
    problems = "\n".join(repo.problems)
    assert "leak.aci: a symlink out of the directory, not served" in problems
    assert "localhost/bare not served: no os label" in problems
    assert "hidden" not in problems  # hidden files are simply not looked at
    assert sorted(i.name for i in repo.images) == ["localhost/app", "localhost/app", "localhost/team/tool"]


def test_range_requests(repo_dir):
    data = (repo_dir / "app-2.0.aci").read_bytes()
    with Running(repo_dir) as srv:
        url = srv.url("/localhost/app-2.0.0-linux-amd64.aci")
        with open_url(url, start=100) as resp:
            assert (resp.status, resp.offset, resp.total) == (206, 100, len(data))
            assert resp.read() == data[100:]

        def get(headers):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", "/localhost/app-2.0.0-linux-amd64.aci", headers=headers)
            r = conn.getresponse()
            out = r.status, dict(r.getheaders()), r.read()
            conn.close()
            return out

        status, headers, body = get({"Range": "bytes=10-19"})
        assert (status, headers["Content-Range"], body) == (206, f"bytes 10-19/{len(data)}", data[10:20])
        status, headers, body = get({"Range": "bytes=-7"})
        assert (status, body) == (206, data[-7:])
        status, headers, _ = get({"Range": f"bytes={len(data)}-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
        status, _, body = get({"Range": "bytes=0-1,5-6"})
        assert (status, body) == (200, data)
        status, _, body = get({"Range": "bytes=10-19", "If-Range": '"stale"'})
        assert (status, body) == (200, data)
        etag = headers["ETag"]
        status, _, body = get({"Range": "bytes=10-19", "If-Range": etag})
        assert (status, body) == (206, data[10:20])


def test_etag_and_conditional_get(repo_dir):
    with Running(repo_dir) as srv:
        url = srv.url("/localhost/app-1.0-linux-amd64.aci")
        with open_url(url) as resp:
            etag = resp.headers["ETag"]
            assert resp.length == (repo_dir / "app-1.0.aci").stat().st_size
            resp.read()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/localhost/app-1.0-linux-amd64.aci", headers={"If-None-Match": etag})
        assert conn.getresponse().status == 304
        conn.close()
        # Published again (a new file renamed into place): a new ETag, the new bytes.
        new = make_image(repo_dir / "new.tmp", "localhost/app", {"version": "1.0", **LINUX}, b"one again\n")
        os.replace(new, repo_dir / "app-1.0.aci")
        with open_url(url) as resp:
            assert resp.headers["ETag"] != etag
            assert resp.read() == (repo_dir / "app-1.0.aci").read_bytes()


def test_index_json_lists_ids_labels_sizes(repo_dir):
    with Running(repo_dir, keys=repo_dir / "keys") as srv:
        index = json.loads(read_url(srv.url("/index.json")))
        page = read_url(srv.url("/")).decode()
    by_file = {e["file"]: e for e in index["images"]}
    assert set(by_file) == {"app-1.0.aci", "app-2.0.aci", "sub/tool.aci"}
    for rel, entry in by_file.items():
        assert entry["imageID"] == image_id_of(repo_dir / rel)
        assert entry["size"] == (repo_dir / rel).stat().st_size
    assert by_file["app-2.0.aci"]["labels"] == {"version": "2.0.0", **LINUX}
    assert by_file["app-2.0.aci"]["latest"] == srv.url("/localhost/app-latest-linux-amd64.aci")
    assert by_file["app-1.0.aci"]["latest"] is None
    assert by_file["sub/tool.aci"]["signature"] is None
    assert index["keys"] == srv.url("/pubkeys.gpg")
    assert "localhost/team/tool" in page and by_file["app-1.0.aci"]["imageID"][:19] in page


def test_only_get_and_head(repo_dir):
    with Running(repo_dir) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("PUT", "/localhost/app-1.0-linux-amd64.aci", body=b"x")
        assert conn.getresponse().status == 501
        conn.close()
        with open_url(srv.url("/localhost/app-1.0-linux-amd64.aci"), method="HEAD") as resp:
            assert resp.status == 200 and resp.read() == b""


def test_concurrent_clients_and_a_stalled_tls_handshake(repo_dir, test_ca):
    data = (repo_dir / "app-2.0.aci").read_bytes()
    with Running(repo_dir, tls=tls_context(test_ca.cert, test_ca.key)) as srv:
        stalled = socket.create_connection(("127.0.0.1", srv.port))  # connects, never says hello
        try:
            results, errors = [], []

            def fetch():
                try:
                    results.append(read_url(srv.url("/localhost/app-2.0.0-linux-amd64.aci"),
                                            HttpOptions(ca_file=test_ca.ca, timeout=20), limit=1 << 24))
                except NetError as e:
                    errors.append(e)

            threads = [threading.Thread(target=fetch) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            stalled.close()
    assert errors == [] and results == [data] * 8


def test_https_from_an_unknown_ca_is_refused_clearly(repo_dir, test_ca, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with Running(repo_dir, tls=tls_context(test_ca.cert, test_ca.key)) as srv:
        with pytest.raises(NetError) as err:
            read_url(srv.url("/index.json"))
    assert str(err.value).startswith(srv.url("/index.json") + ": certificate verify failed:")
    assert "unknown CA" in str(err.value)


def test_a_published_image_is_served_without_a_restart(repo_dir):
    with Running(repo_dir) as srv:
        opts = DiscoveryOptions(HttpOptions(insecure=True), port=srv.port)  # plain HTTP
        assert discover(AppRequest.parse("localhost/fresh").with_host_defaults(), opts).endpoints == ()
        make_image(repo_dir / "fresh.aci", "localhost/fresh", {"version": "0.1", **LINUX})
        found = discover(AppRequest.parse("localhost/fresh").with_host_defaults(), opts)
        assert read_url(found.endpoints[0].aci) == (repo_dir / "fresh.aci").read_bytes()


def test_signatures_are_looked_at_on_every_scan_and_never_through_a_symlink_out(repo_dir):
    with Running(repo_dir) as srv:
        asc = srv.url("/localhost/team/tool-latest-linux-amd64.aci.asc")
        with pytest.raises(NetError, match="HTTP 404"):
            read_url(asc)
        (repo_dir / "sub" / "tool.aci.asc").write_bytes(b"signed later\n")  # acbuild sign after the build
        assert read_url(asc) == b"signed later\n"
        (repo_dir / "sub" / "tool.aci.asc").unlink()
        (repo_dir / "sub" / "tool.aci.asc").symlink_to("/etc/passwd")
        with pytest.raises(NetError, match="HTTP 404"):
            read_url(asc)
        index = json.loads(read_url(srv.url("/index.json")))
    assert [e["signature"] for e in index["images"] if e["file"] == "sub/tool.aci"] == [None]
