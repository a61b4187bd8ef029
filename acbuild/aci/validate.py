"""Validate whatever a path holds: an .aci file, an image layout directory, or
a JSON image or pod manifest. One string per problem, prefixed with where it
is ("manifest: ...", "archive: ...", "layout: ...", "pod manifest: ...").

The archive checks themselves live in acbuild.aci.archive (read_aci reports
layout problems: duplicates, traversal, link escapes, missing parts); this
module only routes and labels. Never raises for a bad image: an unreadable one
is a problem too. A missing path raises NotFoundError."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from acbuild.aci.manifest import ImageManifest
from acbuild.aci.pod import PodManifest
from acbuild.aci.types import field_of, loads
from acbuild.errors import AcbuildError, ManifestError, NotFoundError

_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def validate_path(path: str | os.PathLike, strict: bool = True) -> list[str]:
    """The problems of the image, layout or manifest at `path` ([] = valid)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise NotFoundError(f"{path}: no such file or directory") from e
    except OSError as e:
        return [f"cannot read: {e.strerror}"]
    if stat.S_ISDIR(st.st_mode):
        return validate_layout(p, strict)
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return [f"cannot read: {e.strerror}"]
    if _is_archive(head):
        return validate_aci(p, strict)
    if head.lstrip()[:1] == b"{":
        return validate_manifest_file(p, strict)
    return ["not an ACI (gzip, bzip2, xz or ustar tar), an image layout or a JSON manifest"]


def _is_archive(head: bytes) -> bool:
    return head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def manifest_problems(data: bytes, strict: bool = True, prefix: str = "manifest") -> list[str]:
    """Decode and check image manifest bytes."""
    try:
        return [f"{prefix}: {p}" for p in ImageManifest.from_json(data).problems(strict)]
    except ManifestError as e:
        return [f"{prefix}: {p}" for p in e.problems]


def validate_manifest_file(path: Path, strict: bool = True) -> list[str]:
    """A JSON file: an image or a pod manifest, by its acKind."""
    try:
        data = path.read_bytes()
        obj = loads(data, "manifest")
    except OSError as e:
        return [f"cannot read: {e.strerror}"]
    except ManifestError as e:
        return [f"manifest: {p}" for p in e.problems]
    kind = field_of(obj, "acKind") if isinstance(obj, dict) else None
    if kind == "PodManifest":
        try:
            return [f"pod manifest: {p}" for p in PodManifest.from_json(obj).problems(strict)]
        except ManifestError as e:
            return [f"pod manifest: {p}" for p in e.problems]
    return manifest_problems(obj, strict)


def validate_layout(path: Path, strict: bool = True) -> list[str]:
    """An image layout directory: exactly DIR/manifest and DIR/rootfs/."""
    out = []
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return [f"layout: cannot list: {e.strerror}"]
    for name in names:
        if name not in ("manifest", "rootfs"):
            out.append(f'layout: unrecognized file path in layout: "{name}"')
    rootfs = path / "rootfs"
    if "rootfs" not in names:
        out.append("layout: no rootfs found in layout")
    elif rootfs.is_symlink() or not rootfs.is_dir():
        out.append("layout: rootfs is not a directory")
    manifest = path / "manifest"
    if "manifest" not in names:
        out.append("layout: no image manifest found in layout")
        return out
    if not manifest.is_file():
        return out + ["layout: manifest is not a regular file"]
    try:
        data = manifest.read_bytes()
    except OSError as e:
        return out + [f"layout: cannot read manifest: {e.strerror}"]
    return out + manifest_problems(data, strict)


def validate_aci(path: Path, strict: bool = True) -> list[str]:
    """An .aci archive: layout problems found while reading, then the manifest."""
    from acbuild.aci.archive import read_aci

    try:
        aci = read_aci(path)
    except AcbuildError as e:
        return [f"archive: {e.message}"]
    out = [f"archive: {p}" for p in aci.problems]
    missing = aci.manifest_bytes is None or (not aci.manifest_bytes and any("manifest" in p for p in aci.problems))
    if not missing:
        out += manifest_problems(aci.manifest_bytes, strict)
    return out
