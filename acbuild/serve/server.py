"""`acbuild serve`: a read-only HTTP(S) image repository over a directory.

Every request rescans the directory (cheap: only new or changed images are read,
see repository.Scanner) and is answered from the resulting table of URL paths;
the request path is never joined onto the directory. A file is opened without
following a final symlink and must still be the file the scan saw (same device,
inode, size and mtime), else it is not served. Files get Content-Length, an ETag
(inode-size-mtime, as nginx makes them), Last-Modified, If-None-Match and single
byte ranges (`Range`, `If-Range`); multiple ranges get the whole file. Only GET
and HEAD exist. One thread per connection (ThreadingHTTPServer); TLS handshakes
happen in that thread, so a slow client never holds up the others.
"""

from __future__ import annotations

import email.utils
import os
import re
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from acbuild.errors import AcbuildError
from acbuild.serve.repository import Repository, Scanner, ServedFile

CHUNK = 1 << 16
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RepositoryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scanner: Scanner, address: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None, base_url: str | None = None, log=sys.stderr):
        self.scanner, self.base_url, self.log = scanner, base_url, log
        self.scheme = "https" if tls else "http"
        try:
            super().__init__((address, port), RepositoryHandler)
        except OSError as e:
            raise AcbuildError(f"cannot listen on {address}:{port}: {e.strerror}") from e
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host}:{port}/"

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up or fails the TLS handshake is one log line, not a traceback.
        err = sys.exc_info()[1]
        print(f"{client_address[0]} - {type(err).__name__}: {err}", file=self.log, flush=True)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise AcbuildError(f"--tls-cert {cert} --tls-key {key}: {getattr(e, 'strerror', None) or e}") from e
    return context


class RepositoryHandler(BaseHTTPRequestHandler):
    server: RepositoryServer
    protocol_version = "HTTP/1.1"
    server_version = "acbuild-serve"
    sys_version = ""
    timeout = 60  # seconds a connection may sit idle

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = _clean_path(self.path)
        if path is None:
            return self._text(400, "bad path\n")
        repo = self.server.scanner.scan()
        base = self._base()
        if base is None:
            return self._text(400, "bad Host header\n")
        if path == "/index.json":
            return self._bytes(200, repo.index_json(base), "application/json")
        page_path = "/" if path == "/index.html" else (path.removesuffix("/index.html").rstrip("/") or "/")
        page = repo.discovery_page(page_path, base)
        if page is not None:
            return self._bytes(200, page, "text/html; charset=utf-8")
        served = repo.files.get(path)
        if served is None:
            return self._text(404, "not found\n")
        self._file(served)

    def _base(self) -> str | None:
        if self.server.base_url:
            return self.server.base_url
        host = self.headers.get("Host")
        if host is None:
            return self.server.url
        return f"{self.server.scheme}://{host}" if _HOST.match(host) else None

    def _file(self, served: ServedFile) -> None:
        try:
            fd = os.open(served.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return self._text(404, "not found\n")
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != served.identity:
                return self._text(404, "changed on disk; ask again\n")
            size = st.st_size
            etag = f'"{st.st_ino:x}-{size:x}-{st.st_mtime_ns:x}"'
            headers = {"ETag": etag, "Accept-Ranges": "bytes",
                       "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
            if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
                return self._reply(304, headers, None)
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            if wanted and self.headers.get("If-Range", etag) == etag:
                span = _parse_range(wanted, size)
                if span == "unsatisfiable":
                    return self._reply(416, {**headers, "Content-Range": f"bytes */{size}"}, b"")
                if span is not None:
                    start, end = span
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Type"] = served.content_type
            status = 206 if "Content-Range" in headers else 200
            self._reply(status, {**headers, "Content-Length": str(end - start + 1)}, None)
            if self.command == "HEAD":
                return
            f.seek(start)
            left = end - start + 1
            while left > 0:
                piece = f.read(min(CHUNK, left))
                if not piece:
                    break  # the file shrank: the client sees a short body
                self.wfile.write(piece)
                left -= len(piece)

    def _text(self, status: int, text: str) -> None:
        self._bytes(status, text.encode(), "text/plain; charset=utf-8")

    def _bytes(self, status: int, body: bytes, content_type: str) -> None:
        self._reply(status, {"Content-Type": content_type, "Content-Length": str(len(body))}, body)

    def _reply(self, status: int, headers: dict[str, str], body: bytes | None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        print(f"{self.client_address[0]} - {format % args}", file=self.server.log, flush=True)


def _clean_path(raw: str) -> str | None:
    """The decoded path of a request target, or None if it tries to leave the table:
    `..` or `.` segments, empty segments, hidden names, backslashes, NUL."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(raw).path)
    if not path.startswith("/") or "\\" in path or "\0" in path:
        return None
    segments = path[1:].split("/")
    inner = segments[:-1] if segments[-1] == "" else segments  # a trailing "/" is fine
    if path != "/" and any(s == "" or s.startswith(".") for s in inner):
        return None
    return path


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) for one byte range, "unsatisfiable", or None to send it all."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # several ranges or a form we do not serve: the whole file
    first, last = m.group(1), m.group(2)
    if not first:  # the last N bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n and size else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable" if start >= size else None
    return start, end


def serve_forever(server: RepositoryServer, repo: Repository, out=sys.stdout) -> None:
    """Print what is served and where, then answer requests until interrupted."""
    for problem in repo.problems:
        print(f"acbuild serve: warning: {problem}", file=server.log, flush=True)
    n = len(repo.images)
    print(f"serving {repo.root} ({n} image{'' if n == 1 else 's'}) at {server.url}", file=out, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
