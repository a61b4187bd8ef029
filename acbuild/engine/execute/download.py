"""ADD https://...: download one file for the build, checked against --checksum.

Only when the build's network policy allows it (`--network host`): a build with
no network must not reach out, and the step's cache key covers the URL and the
checksum, not the remote content (give --checksum, or --no-cache, to notice a
change). The file is written to a temp dir the caller owns; nothing partial is
left on failure.
"""

from __future__ import annotations

import hashlib
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from acbuild.errors import BuildError, SourcePos

CHUNK = 1 << 20


def url_file_name(url: str) -> str:
    """The name Docker gives a downloaded file: the URL path's last part."""
    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    return name or "index.html"


def download(url: str, checksum: str, directory: Path, network: str, pos: SourcePos) -> Path:
    if network != "host":
        raise BuildError(f'ADD {url}: downloading needs the network; build with --network host to allow it', pos)
    target = directory / url_file_name(url)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as err:
        target.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise BuildError(f"ADD {url}: download failed: {reason}", pos) from None
    if checksum and f"sha256:{digest.hexdigest()}" != checksum:
        target.unlink(missing_ok=True)
        raise BuildError(f"ADD {url}: the download has sha256:{digest.hexdigest()}, not {checksum} (--checksum)", pos)
    return target
