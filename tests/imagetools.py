"""Hand-made images for tests that need an archive acbuild's writer would never
produce (odd manifests, a chosen entry order): a plain tarfile, nothing clever."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path


def hand_made_aci(path: Path, manifest: bytes, files: dict[str, bytes] | None = None, *, compress: bool = True) -> Path:
    """`rootfs/`, then each of `files` (name under rootfs -> content), then `manifest`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        root = tarfile.TarInfo("rootfs")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(f"rootfs/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("manifest")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0) if compress else raw.getvalue())
    return path
