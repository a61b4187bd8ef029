"""A small HTTP(S) client on the standard library (http.client + ssl), for
discovery pages, images, signatures and keys.

    from acbuild.net.http import HttpOptions, NetError, open_url, read_url

    opts = HttpOptions(ca_file=Path("ca.pem"), timeout=30)   # all fields optional
    page = read_url("https://example.com/app?ac-discovery=1", opts, limit=1 << 20)
    with open_url("https://example.com/app.aci", opts, start=4096, limit=pinned) as resp:
        resp.status      # 200, or 206 when the Range request was honoured
        resp.offset      # where the body starts in the file: `start` on 206, 0 on 200
        resp.length      # bytes the body will carry (Content-Length), or None
        resp.total       # the whole file's size when the server says it, or None
        resp.url         # the URL after redirects
        for chunk in resp.chunks():   # streams; raises NetError on a short or too-long body
            ...

`open_url(url, options, method="GET", start=0, limit=None, headers=None, body=None,
raise_for_status=True, pool=None)` is the one request function (any method; `body` is
sent as it is); `read_url` reads a whole (small) body. Contract:

- Only http:// and https:// URLs. Redirects (301, 302, 303, 307, 308) of GET and
  HEAD are followed up to `options.max_redirects` (10, as Go's client); an https URL
  that redirects to http:// is refused unless `options.insecure`; an Authorization
  header is not sent on to another host.
- TLS: certificates and host names are checked against `options.ca_file` if given,
  else the system store (OpenSSL's default paths, so SSL_CERT_FILE and SSL_CERT_DIR
  are honoured). `options.insecure` turns the check off.
- Proxies: HTTPS_PROXY / HTTP_PROXY (any case) and NO_PROXY are honoured as urllib
  reads them; an https URL goes through the proxy with CONNECT.
- `timeout` bounds connecting and every read (seconds).
- `start` > 0 sends `Range: bytes=START-`. A 206 reply must start exactly there;
  a 200 reply means the server sent the whole file (resp.offset == 0).
- `limit` caps the file's size (offset + body): a Content-Length above it is
  refused before any byte is read, and a body without one is cut off and refused
  once it passes the limit.
- A body shorter than its Content-Length raises NetError when it ends (so a
  caller can resume it with `start`).
- A non-2xx status raises HttpStatusError (a NetError with `.status`), unless
  raise_for_status=False, which returns the reply for the caller to read.
- Without a `pool` each request has its own connection. With a ConnectionPool (a
  client making many requests to one host: a registry pull) a connection whose
  reply was read to its end and that the server keeps open goes back to the pool
  and the next request to the same host (same scheme, port, proxy and TLS
  settings) reuses it: HTTP/1.1 keep-alive, no new TCP and TLS handshake. A
  small unread body (an error page, a 401) is read first so the connection can
  be reused; a pooled connection the server has closed meanwhile is replaced by
  a new one, once, before anything is reported.
- Every failure is a NetError whose message starts with the URL, e.g.
  "https://host/x: certificate verify failed: unable to get local issuer
  certificate (unknown CA; pass --ca-file or set SSL_CERT_FILE, or --insecure)".
  Nothing else escapes: no socket, ssl or http.client exception, no traceback.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from acbuild import __version__
from acbuild.errors import AcbuildError
from acbuild.records import dataclass

# http.client, ssl, socket and urllib.request are imported where a request needs them:
# they cost ~15 ms, and most commands import this module (for its options and errors)
# without sending anything, a cached build among them.
if TYPE_CHECKING:
    import http.client
    import ssl

REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 1 << 16
USER_AGENT = f"acbuild/{__version__}"
# OpenSSL verify codes that mean "this certificate's issuer is not one we trust".
_UNKNOWN_CA_CODES = {18, 19, 20, 21}


class NetError(AcbuildError):
    """A network request failed: connection, TLS, status, size, redirects."""

    def __init__(self, url: str, message: str):
        super().__init__(message, path=url)  # reads "URL: message"; .detail is the message alone
        self.url = url


class HttpStatusError(NetError):
    """The server answered with a status we do not accept (404, 500...)."""

    def __init__(self, url: str, status: int, reason: str):
        super().__init__(url, f"HTTP {status} {reason}".rstrip())
        self.status = status


@dataclass(frozen=True)
class HttpOptions:
    """How to reach servers. The same options serve discovery and downloads."""

    ca_file: Path | None = None  # a PEM bundle replacing the system store
    insecure: bool = False  # no certificate check; https -> http redirects allowed
    timeout: float = 30.0
    max_redirects: int = 10


# The largest unread body read to keep its connection open (error pages, 401s).
_DRAIN_LIMIT = 64 << 10


class ConnectionPool:
    """Idle keep-alive connections, by what they were opened for (see the module
    docstring). Safe to share between threads; `close()` closes the idle ones."""

    def __init__(self) -> None:
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.opened = 0  # connections made (for the benchmark and the tests)
        self.reused = 0  # requests sent on a pooled connection

    def take(self, key: tuple) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection:
    """A connection with the pool it may go back to, under its key."""

    def __init__(self, conn: http.client.HTTPConnection, pool: ConnectionPool | None, key: tuple):
        self.conn, self.pool, self.key = conn, pool, key

    def close(self) -> None:
        self.conn.close()

    def release(self, reply: http.client.HTTPResponse) -> None:
        """Back to the pool if the server keeps it open and the reply is read to
        its end (a small rest is read now); otherwise closed."""
        if self.pool is None or reply.will_close:
            reply.close()
            self.conn.close()
            return
        if not reply.isclosed() and reply.length is not None and reply.length <= _DRAIN_LIMIT:
            import http.client

            try:
                reply.read()
            except (OSError, http.client.HTTPException):
                pass
        if reply.isclosed():
            self.pool.give(self.key, self.conn)
        else:
            reply.close()
            self.conn.close()


class Response:
    """An open reply. Use it as a context manager; `chunks()` streams the body."""

    def __init__(self, url: str, conn: _Connection, reply: http.client.HTTPResponse,
                 offset: int, limit: int | None, timeout: float, head: bool = False):
        self.url = url
        self._head = head  # a HEAD reply has a Content-Length but no body
        self.status = reply.status
        self.headers = reply.headers
        self.offset = offset
        self._conn, self._reply, self._limit, self._timeout = conn, reply, limit, timeout
        length = reply.getheader("Content-Length")
        self.length = int(length) if length and length.isdigit() else None
        self.total = _total_size(reply, self.length, offset)
        if limit is not None and self.length is not None and offset + self.length > limit:
            self.close()
            raise NetError(url, f"the server offers {offset + self.length} bytes, more than the {limit} allowed")

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body in pieces; NetError if it ends early or grows past the limit."""
        import http.client

        got = 0
        try:
            while True:
                piece = self._reply.read(size)
                if not piece:
                    break
                got += len(piece)
                if self._limit is not None and self.offset + got > self._limit:
                    raise NetError(self.url, f"the server sent more than the {self._limit} bytes allowed")
                yield piece
        except (OSError, http.client.HTTPException) as e:
            raise NetError(self.url, f"connection lost after {got} bytes of the body: {_describe(e, self._timeout)}") from e
        finally:
            self.close()
        if self.length is not None and got < self.length and not self._head:
            raise NetError(self.url, f"connection closed after {got} of {self.length} bytes")

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self._reply)

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_url(url: str, options: HttpOptions = HttpOptions(), limit: int = 1 << 20) -> bytes:
    """The whole body of a GET (pages, signatures, keys), at most `limit` bytes."""
    with open_url(url, options, limit=limit) as resp:
        return resp.read()


def open_url(url: str, options: HttpOptions = HttpOptions(), *, method: str = "GET", start: int = 0,
             limit: int | None = None, headers: dict[str, str] | None = None, body: bytes | None = None,
             raise_for_status: bool = True, pool: ConnectionPool | None = None) -> Response:
    """Send one request, following redirects (GET and HEAD only); the reply is
    open for reading. With raise_for_status=False a non-2xx reply is returned
    too (the registry client reads 401 challenges and error bodies)."""
    current = url
    extra = dict(headers or {})
    for _ in range(options.max_redirects + 1):
        conn, reply = _request_once(current, method, start, extra, options, body, pool)
        if reply.status not in REDIRECTS or method not in ("GET", "HEAD"):
            if not raise_for_status and not (200 <= reply.status < 300):
                return Response(current, conn, reply, 0, limit, options.timeout, method == "HEAD")
            return _accept(current, conn, reply, start, limit, options.timeout, method == "HEAD")
        location = reply.getheader("Location")
        reply.close()
        conn.close()
        if not location:
            raise NetError(current, f"HTTP {reply.status} redirect without a Location")
        target = urllib.parse.urljoin(current, location)
        if current.startswith("https:") and target.startswith("http:") and not options.insecure:
            raise NetError(current, f"redirect from https to plain http ({target}) refused without --insecure")
        if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(current).netloc:
            # Credentials are for the host they were meant for (registries redirect blobs to storage).
            extra = {k: v for k, v in extra.items() if k.lower() != "authorization"}
        current = target
    raise NetError(url, f"more than {options.max_redirects} redirects")


def _accept(url: str, conn: _Connection, reply: http.client.HTTPResponse, start: int,
            limit: int | None, timeout: float, head: bool) -> Response:
    if reply.status == 206 and start:
        first = _range_start(reply.getheader("Content-Range", ""))
        if first != start:
            conn.close()
            raise NetError(url, f"asked for bytes from {start}, the server sent a range from {first}")
        return Response(url, conn, reply, start, limit, timeout, head)
    if 200 <= reply.status < 300 and reply.status != 206:
        return Response(url, conn, reply, 0, limit, timeout, head)
    conn.close()
    raise HttpStatusError(url, reply.status, reply.reason)


def _request_once(url: str, method: str, start: int, extra: dict[str, str], options: HttpOptions,
                  body: bytes | None = None, pool: ConnectionPool | None = None
                  ) -> tuple[_Connection, http.client.HTTPResponse]:
    import http.client

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NetError(url, "not an http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise NetError(url, f"bad port: {e}") from e
    host = parts.hostname
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **extra}
    if start:
        headers["Range"] = f"bytes={start}-"
    proxy = _proxy_for(parts.scheme, host)
    if parts.scheme == "http" and proxy:
        target = url.split("#", 1)[0]  # a plain-http proxy gets the absolute URL
    key = (parts.scheme, host, port, proxy, options.ca_file, options.insecure, options.timeout)
    if pool is not None:
        while (idle := pool.take(key)) is not None:
            try:
                idle.request(method, target, body=body, headers=headers)
                reply = idle.getresponse()
                pool.reused += 1
                return _Connection(idle, pool, key), reply
            except (OSError, http.client.HTTPException):
                idle.close()  # the server closed it while it was idle: take another, or a new one
        pool.opened += 1
    conn: http.client.HTTPConnection | None = None
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                *(proxy or (host, port)), timeout=options.timeout, context=_tls_context(options))
            if proxy:
                conn.set_tunnel(host, port)
        elif proxy:
            conn = http.client.HTTPConnection(*proxy, timeout=options.timeout)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=options.timeout)
        conn.request(method, target, body=body, headers=headers)
        return _Connection(conn, pool, key), conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        if conn is not None:
            conn.close()
        raise NetError(url, _describe(e, options.timeout)) from e


def _tls_context(options: HttpOptions) -> ssl.SSLContext:
    # Loading the system store takes tens of ms: one context per setting, reused
    # (SSLContext is safe to share between threads).
    return _cached_context(options.ca_file, options.insecure, os.environ.get("SSL_CERT_FILE"),
                           os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=8)
def _cached_context(ca_file: Path | None, insecure: bool, _cert_file: str | None, _cert_dir: str | None) -> ssl.SSLContext:
    import ssl

    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_file is None:
        return ssl.create_default_context()  # OpenSSL's default paths: SSL_CERT_FILE/DIR
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise AcbuildError(f"CA bundle {ca_file}: {getattr(e, 'strerror', None) or e}") from e


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    if scheme not in proxies or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    proxy = urllib.parse.urlsplit(proxies[scheme] if "://" in proxies[scheme] else "http://" + proxies[scheme])
    if not proxy.hostname:
        return None
    return proxy.hostname, proxy.port or 80


def _describe(e: BaseException, timeout: float) -> str:
    """A one-line account of a connection failure."""
    import http.client
    import socket
    import ssl

    if isinstance(e, ssl.SSLCertVerificationError):
        hint = "pass --ca-file FILE or set SSL_CERT_FILE, or --insecure"
        why = e.verify_message or str(e)
        if e.verify_code in _UNKNOWN_CA_CODES:
            return f"certificate verify failed: {why} (unknown CA; {hint})"
        return f"certificate verify failed: {why} ({hint})"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed: {e.reason or e}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host name: {e.strerror}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} bytes"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without a reply"
    return str(e) or type(e).__name__


def _range_start(content_range: str) -> int | None:
    # "bytes 100-199/200"
    unit, _, spec = content_range.partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _total_size(reply: http.client.HTTPResponse, length: int | None, offset: int) -> int | None:
    if reply.status == 206:
        total = reply.getheader("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    return offset + length if length is not None else None
