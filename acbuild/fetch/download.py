"""Downloads into the image store's temp area, resumed with HTTP Range after an interruption.

    with url_lock(store.tmp, url):
        got = download(url, store.tmp, http_options, limit=N, etag=None, progress=Progress(reporter))

A download of URL writes tmp/dl-<hash of URL>.part. The caller holds url_lock (an
exclusive flock on tmp/dl-<hash>.lock) around it, so two fetchers of the same URL never
write one file: the second waits, then finds the first one's image in the store. A finished
download is renamed to a file of its own, which the caller then owns (it verifies it and
hands it to the store, or deletes it). An interrupted one stays as the .part file with
the server's ETag beside it; the next download of the URL asks for the rest
(`Range: bytes=N-`, `If-Range: ETAG`), and starts over if the server sends the whole
file instead. Nothing here decides whether the bytes can be trusted: acbuild.fetch.fetcher does.

With `etag` (the ETag the store recorded for the image at URL), the request is
conditional (If-None-Match) and a 304 reply returns None: nothing was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from acbuild.files import flock
from acbuild.net.http import HttpOptions, HttpStatusError, NetError, open_url
from acbuild.report import QUIET, Reporter


class Progress:
    """What a download shows, through a Reporter (acbuild.report): a bar redrawn in
    place when the reporter writes to a terminal, plain lines otherwise (JSON events
    under --progress json), nothing when it is quiet."""

    def __init__(self, reporter: Reporter | None = None):
        self.reporter = reporter or QUIET
        mode = getattr(self.reporter, "mode", None)  # engine.progress.Progress says how it prints
        if self.reporter.quiet:
            self.mode = "quiet"
        elif mode in ("tty", "plain", "json"):
            self.mode = "tty" if mode == "tty" else "plain"
        else:
            self.mode = "tty" if self.reporter.stream.isatty() else "plain"
        self._last = 0.0

    def start(self, url: str, offset: int, total: int | None) -> None:
        if self.mode == "plain":
            resumed = f" (resuming at byte {offset})" if offset else ""
            self.reporter.info(f"downloading {url}{resumed}{f', {total} bytes' if total else ''}")

    def advance(self, url: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.mode != "tty" or now - self._last < 0.1:
            return
        self._last = now
        share = f" {done * 100 // total:3d}%" if total else ""
        self.reporter.stream.write(f"\r{_short(url)} {_mib(done)}{f' / {_mib(total)}' if total else ''}{share}\033[K")
        self.reporter.stream.flush()

    def interrupted(self) -> None:
        if self.mode == "tty":
            self.reporter.stream.write("\n")

    def finish(self, url: str, size: int) -> None:
        if self.mode == "tty":
            self.reporter.stream.write("\r\033[K")
        if self.mode != "quiet":
            self.reporter.info(f"downloaded {url} ({size} bytes)")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _short(url: str) -> str:
    return url if len(url) <= 60 else "..." + url[-57:]


def _key(url: str) -> str:
    return "dl-" + hashlib.sha256(url.encode()).hexdigest()[:32]


def url_lock(tmp: Path, url: str):
    """Held while `url` is downloaded and its result stored."""
    return flock(tmp / f"{_key(url)}.lock", exclusive=True)


def download(url: str, tmp: Path, options: HttpOptions, *, limit: int, etag: str | None = None,
             progress: Progress | None = None) -> tuple[Path, str] | None:
    """Fetch `url` into a new file in `tmp`; returns (file, ETag or "") or None on 304."""
    progress = progress or Progress()
    part, meta_path = tmp / f"{_key(url)}.part", tmp / f"{_key(url)}.part.json"
    for _attempt in range(2):
        start, if_range = _resume_point(part, meta_path, url)
        headers = {"If-None-Match": etag} if etag else {}
        if start and if_range:
            headers["If-Range"] = if_range
        try:
            response = open_url(url, options, start=start, limit=limit, headers=headers)
        except HttpStatusError as err:
            if err.status == 304 and etag:
                return None
            if err.status == 416 and start:  # our partial file is not a prefix of theirs
                _forget(part, meta_path)
                continue
            raise
        with response:
            served_etag = response.headers.get("ETag", "") or ""
            _save_meta(meta_path, url, served_etag)
            _receive(response, part, progress)
        done = part.with_name(f"{part.stem}.{os.getpid()}.{time.monotonic_ns()}.aci")
        os.replace(part, done)
        meta_path.unlink(missing_ok=True)
        progress.finish(url, done.stat().st_size)
        return done, served_etag
    raise NetError(url, "the server refused to resume the download, twice")


def _receive(response, part: Path, progress: Progress) -> None:
    """Append (206) or write (200) the body to `part`, fsynced as it grows, so an
    interruption keeps every byte received for the next attempt."""
    mode = "ab" if response.offset else "wb"
    done = response.offset
    progress.start(response.url, response.offset, response.total)
    with open(part, mode) as f:
        if not response.offset:
            f.truncate(0)
        try:
            for chunk in response.chunks():
                f.write(chunk)
                done += len(chunk)
                progress.advance(response.url, done, response.total)
        except NetError as err:
            f.flush()
            os.fsync(f.fileno())
            progress.interrupted()
            raise NetError(err.url, err.message.removeprefix(f"{err.url}: ") +
                           f"; {done} bytes kept, the next fetch resumes from there") from err
        f.flush()
        os.fsync(f.fileno())


def _resume_point(part: Path, meta_path: Path, url: str) -> tuple[int, str]:
    """(bytes already here, the ETag they came with) for a partial download of `url`."""
    try:
        meta = json.loads(meta_path.read_bytes())
        size = part.stat().st_size
    except (OSError, ValueError):
        _forget(part, meta_path)
        return 0, ""
    if meta.get("url") != url or not size:
        _forget(part, meta_path)
        return 0, ""
    return size, meta.get("etag", "")


def _save_meta(meta_path: Path, url: str, etag: str) -> None:
    from acbuild.atomic import write_atomic

    write_atomic(meta_path, json.dumps({"url": url, "etag": etag}).encode(), mode=0o600)


def _forget(part: Path, meta_path: Path) -> None:
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
