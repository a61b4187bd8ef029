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


def layer_tar(entries: list[tuple[str, bytes, dict]]) -> bytes:
    """An image layer (a plain tar) of (name, content, fields) entries; fields set
    TarInfo attributes (type, linkname, mode, devmajor...). Regular files carry
    `content`; directories default to mode 0755, other entries to 0644."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, fields in entries:
            info = tarfile.TarInfo(name)
            info.type = fields.get("type", tarfile.REGTYPE)
            info.mode = 0o755 if info.type == tarfile.DIRTYPE else 0o644
            info.mtime = 1_700_000_000
            for key, value in fields.items():
                setattr(info, key, value)
            regular = info.type == tarfile.REGTYPE
            info.size = len(data) if regular else 0
            tf.addfile(info, io.BytesIO(data) if regular else None)
    return buf.getvalue()
