"""acbuild.net.http against real servers on 127.0.0.1 (plain HTTP, and HTTPS with a
test CA made by openssl): TLS trust, redirects, Range, size limits, short bodies,
proxies, timeouts, and that every failure is one clear NetError line."""

from __future__ import annotations

import socket
import threading

import pytest
from netfixtures import ConnectProxy, Site, no_proxy_env, page, redirect, send, test_ca  # noqa: F401

from acbuild.net.http import ConnectionPool, HttpOptions, HttpStatusError, NetError, open_url, read_url

pytestmark = pytest.mark.usefixtures("no_proxy_env")

FILE = bytes(range(256)) * 40  # 10240 bytes


def ranged(h):
    """Serves FILE, honouring `Range: bytes=N-` as a real file server does."""
    spec = h.headers.get("Range", "")
    if spec.startswith("bytes=") and spec.endswith("-"):
        start = int(spec[6:-1])
        send(h, FILE[start:], 206, {"Content-Range": f"bytes {start}-{len(FILE) - 1}/{len(FILE)}"})
    else:
        send(h, FILE)


def test_https_with_the_test_ca_and_with_ssl_cert_file(test_ca, monkeypatch):
    with Site(tls=test_ca) as site:
        site.routes["/x"] = page("hello")
        assert read_url(site.url("/x"), HttpOptions(ca_file=test_ca.ca)) == b"hello"
        assert read_url(site.url("/x", host="localhost"), HttpOptions(ca_file=test_ca.ca)) == b"hello"
        monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca))
        assert read_url(site.url("/x")) == b"hello"


def test_unknown_ca_is_refused_with_a_clear_message(test_ca, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with Site(tls=test_ca) as site:
        site.routes["/x"] = page("hello")
        with pytest.raises(NetError) as err:
            read_url(site.url("/x"))
        message = str(err.value)
        print(message)
        assert message.startswith(site.url("/x") + ": certificate verify failed: ")
        assert "unknown CA" in message and "--ca-file" in message
        assert read_url(site.url("/x"), HttpOptions(insecure=True)) == b"hello"


def test_wrong_host_name_is_refused(test_ca):
    with Site(tls=test_ca, wrong_name=True) as site:  # a certificate for wrong.invalid
        site.routes["/x"] = page("hello")
        with pytest.raises(NetError, match="certificate verify failed: Hostname mismatch"):
            read_url(site.url("/x", host="localhost"), HttpOptions(ca_file=test_ca.ca))


def test_redirects_followed_and_bounded(test_ca):
    with Site(tls=test_ca) as site, Site() as plain:
        options = HttpOptions(ca_file=test_ca.ca)
        site.routes["/a"] = redirect("/b", 301)
        site.routes["/b"] = redirect(site.url("/c"), 307)
        site.routes["/c"] = page("end")
        with open_url(site.url("/a"), options) as resp:
            assert resp.read() == b"end"
            assert resp.url == site.url("/c")
        site.routes["/loop"] = redirect("/loop")
        with pytest.raises(NetError, match=r"/loop: more than 10 redirects"):
            read_url(site.url("/loop"), options)
        plain.routes["/p"] = page("plain")
        site.routes["/down"] = redirect(plain.url("/p"))
        with pytest.raises(NetError, match="redirect from https to plain http .* refused without --insecure"):
            read_url(site.url("/down"), options)
        assert read_url(site.url("/down"), HttpOptions(insecure=True)) == b"plain"


def test_range_resume_and_a_server_that_ignores_range():
    with Site() as site:
        site.routes["/f"] = ranged
        site.routes["/whole"] = page(FILE)
        with open_url(site.url("/f"), start=1000) as resp:
            assert (resp.status, resp.offset, resp.length, resp.total) == (206, 1000, len(FILE) - 1000, len(FILE))
            assert resp.read() == FILE[1000:]
        assert site.request_headers[-1]["Range"] == "bytes=1000-"
        with open_url(site.url("/whole"), start=1000) as resp:
            assert (resp.status, resp.offset) == (200, 0)
            assert resp.read() == FILE
        site.routes["/wrong"] = lambda h: send(h, FILE[10:], 206, {"Content-Range": f"bytes 10-{len(FILE) - 1}/*"})
        with pytest.raises(NetError, match="asked for bytes from 1000, the server sent a range from 10"):
            open_url(site.url("/wrong"), start=1000)


def test_head():
    with Site() as site:
        site.routes["/f"] = page(FILE)
        with open_url(site.url("/f"), method="HEAD") as resp:
            assert resp.length == len(FILE)
            assert resp.read() == b""


def test_short_body_is_an_error_that_names_the_bytes():
    with Site() as site:
        site.routes["/cut"] = lambda h: send(h, FILE[:3000], length=len(FILE))
        with pytest.raises(NetError, match=f"connection closed after 3000 of {len(FILE)} bytes"):
            read_url(site.url("/cut"), limit=1 << 20)


def test_size_limit_refuses_before_reading_and_while_reading():
    with Site() as site:
        site.routes["/big"] = page(FILE)
        with pytest.raises(NetError, match=f"offers {len(FILE)} bytes, more than the 4096 allowed"):
            open_url(site.url("/big"), limit=4096)

        def unbounded(h):  # no Content-Length: the body ends when the connection closes
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(FILE)
            h.close_connection = True

        site.routes["/nolength"] = unbounded
        with pytest.raises(NetError, match="sent more than the 4096 bytes allowed"):
            read_url(site.url("/nolength"), limit=4096)
        assert read_url(site.url("/nolength"), limit=len(FILE)) == FILE
        with pytest.raises(NetError, match="offers 10240 bytes, more than the 10000 allowed"):
            open_url(site.url("/big"), start=0, limit=10000)


def test_status_errors_carry_the_status():
    with Site() as site:
        with pytest.raises(HttpStatusError) as err:
            read_url(site.url("/missing"))
        assert err.value.status == 404
        assert str(err.value) == f"{site.url('/missing')}: HTTP 404 Not Found"


def test_connection_refused_and_timeout_are_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NetError) as err:
        read_url(f"http://127.0.0.1:{port}/x")
    assert str(err.value) == f"http://127.0.0.1:{port}/x: Connection refused"

    silent = socket.socket()  # accepts (the kernel's backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(NetError, match=r"timed out after 0.3 s"):
            read_url(f"http://127.0.0.1:{silent.getsockname()[1]}/x", HttpOptions(timeout=0.3))
    finally:
        silent.close()


def test_not_http_urls_are_refused():
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "https:///nohost"):
        with pytest.raises(NetError, match="not an http:// or https:// URL"):
            read_url(url)


def test_https_proxy_and_no_proxy_are_honoured(test_ca, monkeypatch):
    with Site(tls=test_ca) as site, ConnectProxy() as proxy:
        site.routes["/x"] = page("through the tunnel")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        assert read_url(site.url("/x", host="localhost"), HttpOptions(ca_file=test_ca.ca)) == b"through the tunnel"
        assert proxy.asked == [f"CONNECT localhost:{site.port} HTTP/1.0"]
        assert read_url("http://localhost:1/y") == b"proxied http://localhost:1/y"
        assert proxy.asked[-1] == "GET http://localhost:1/y HTTP/1.1"
        monkeypatch.setenv("NO_PROXY", "localhost")
        assert read_url(site.url("/x", host="localhost"), HttpOptions(ca_file=test_ca.ca)) == b"through the tunnel"
        assert len(proxy.asked) == 2


def test_concurrent_requests():
    with Site() as site:
        site.routes["/f"] = page(FILE)
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(read_url(site.url("/f")))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [FILE] * 8


def test_bad_ca_file_is_a_clear_error(tmp_path):
    from acbuild.errors import AcbuildError

    with pytest.raises(AcbuildError, match=f"CA bundle {tmp_path}/none.pem: No such file"):
        read_url("https://127.0.0.1:1/", HttpOptions(ca_file=tmp_path / "none.pem"))


def test_a_pool_keeps_connections_alive_and_replaces_one_the_server_closed(test_ca):
    """Seen from the server: the client's port stays the same while the pool reuses
    the connection (a 404's unread body is read so that it can); a connection the
    server closed after its reply (saying nothing) is replaced by a new one."""
    ports: list[int] = []

    def note(h, body=b"hello", status=200, close=False):
        ports.append(h.client_address[1])
        send(h, body, status)
        h.close_connection = close

    with Site(tls=test_ca) as site, ConnectionPool() as pool:
        site.routes["/x"] = note
        site.routes["/gone"] = lambda h: note(h, b"no such thing\n", 404)
        site.routes["/bye"] = lambda h: note(h, b"bye", close=True)
        options = HttpOptions(ca_file=test_ca.ca)
        for _ in range(3):
            with open_url(site.url("/x"), options, pool=pool) as resp:
                assert resp.read() == b"hello"
        with open_url(site.url("/gone"), options, pool=pool, raise_for_status=False) as resp:
            assert resp.status == 404  # body left unread
        with open_url(site.url("/x"), options, pool=pool, method="HEAD") as resp:
            assert resp.status == 200
        assert len(set(ports)) == 1 and (pool.opened, pool.reused) == (1, 4)
        assert read_url(site.url("/x"), options) == b"hello"  # no pool: a connection of its own
        assert len(set(ports)) == 2
        with open_url(site.url("/bye"), options, pool=pool) as resp:
            assert resp.read() == b"bye"
        with open_url(site.url("/x"), options, pool=pool) as resp:
            assert resp.read() == b"hello"
        assert len(set(ports)) == 3 and ports[-2] != ports[-1]
        assert pool.opened == 2
