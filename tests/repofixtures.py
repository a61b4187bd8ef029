"""An appc image repository for the fetch tests: a real HTTPS (or HTTP) server on
127.0.0.1 (netfixtures.Site) with a discovery page, images and signatures, ETag,
If-None-Match and Range, and ways to misbehave on purpose (close mid-body, send more
bytes than it says, leave the signature out). Every request it served is in
`repo.site.requests`, with its headers in `repo.site.request_headers`.

    with Repo(test_ca) as repo:
        repo.publish("localhost/app", "1.0", aci_path)     # .aci and .aci.asc beside it
        acbuild("fetch", "localhost/app:1.0", *repo.flags())
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from netfixtures import Site, TestCA, send


class Repo:
    def __init__(self, tls: TestCA | None):
        self.tls = tls
        self.site = Site(tls=tls)
        self.files: dict[str, bytes] = {}  # URL path -> bytes
        self.truncate_once: set[str] = set()  # paths whose next GET stops half-way
        self.overflow: set[str] = set()  # paths served without Content-Length, with extra bytes
        self.prefixes: set[str] = set()

    def __enter__(self) -> Repo:
        self.site.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.site.__exit__(*exc)

    @property
    def port(self) -> int:
        return self.site.port

    def flags(self) -> list[str]:
        """The discovery options a client needs for this server."""
        flags = ["--port", str(self.port)]
        return flags + (["--ca-file", str(self.tls.ca)] if self.tls else ["--insecure"])

    def image_path(self, name: str, version: str, ext: str = "aci") -> str:
        return f"/images/{name}-{version}.{ext}"

    def publish(self, name: str, version: str, aci: Path, *, signature: bool = True) -> None:
        """Serve `aci` (and `aci`.asc unless signature=False) as NAME, VERSION."""
        self.put(self.image_path(name, version), aci.read_bytes())
        asc = aci.with_name(aci.name + ".asc")
        if signature:
            self.put(self.image_path(name, version, "aci.asc"), asc.read_bytes())
        else:
            self.files.pop(self.image_path(name, version, "aci.asc"), None)
            self.site.routes.pop(self.image_path(name, version, "aci.asc"), None)
        self.discovery_page(name)

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.site.routes[path] = lambda h, path=path: self._serve(h, path)

    def discovery_page(self, name: str) -> None:
        """`https://localhost:PORT/<path>?ac-discovery=1` for the name (and its host's root)."""
        scheme = self.site.scheme
        host_path = name.partition("/")[2]
        template = f"{scheme}://localhost:{self.port}/images/{{name}}-{{version}}.{{ext}}"
        page = (f'<html><head><meta name="ac-discovery" content="{name} {template}">'
                f"</head></html>").encode()
        self.site.routes["/" + host_path] = lambda h: send(h, page, headers={"Content-Type": "text/html"})

    def gets(self, suffix: str) -> list[dict[str, str]]:
        """The headers of each GET whose path ends with `suffix` (query excluded)."""
        return [hdrs for line, hdrs in zip(self.site.requests, self.site.request_headers)
                if line.startswith("GET ") and line.split(" ", 1)[1].split("?")[0].endswith(suffix)]

    def _serve(self, h, path: str) -> None:
        data = self.files[path]
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        if h.headers.get("If-None-Match") == etag:
            h.send_response(304)
            h.send_header("ETag", etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = 0
        wanted = h.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-") and h.headers.get("If-Range", etag) == etag:
            start = int(wanted[6:-1])
            if start >= len(data):
                send(h, b"", 416, {"Content-Range": f"bytes */{len(data)}"})
                return
        body = data[start:]
        if path in self.overflow:  # no Content-Length: the body ends when the connection does
            h.send_response(200)
            h.send_header("ETag", etag)
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body + b"\0" * 65536)
            h.close_connection = True
            return
        h.send_response(206 if start else 200)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if h.command == "HEAD":
            return
        if path in self.truncate_once:  # close the connection half-way through the body
            self.truncate_once.discard(path)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)
