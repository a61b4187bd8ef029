"""An OCI image layout on disk (image-spec `image-layout.md`): `oci-layout`,
`index.json` and content-addressed `blobs/sha256/HEX`; written the way the export
and push stages need it.

Contract: a blob appears whole or not at all (temp file in `blobs/sha256/`, fsync,
rename; its name is the sha256 of its bytes, computed while they stream, so adding a
blob twice is harmless). `index.json` is replaced atomically and written last, so a
reader never sees a manifest whose blobs are missing. Tagging keeps the layout's other
tags and replaces only the entry of the same tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from acbuild.atomic import fsync_dir, write_atomic
from acbuild.errors import ImageError
from acbuild.oci.blobs import check_digest_syntax
from acbuild.oci.manifests import OCI_INDEX, Descriptor, Index, parse_document

LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(value) -> bytes:
    """The bytes acbuild writes for every OCI JSON document: sorted keys, compact,
    UTF-8 (so the same content always has the same digest)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BlobWriter:
    """Bytes streamed into a temp file under blobs/sha256/, hashed as they pass;
    `commit(media_type)` renames the file to its digest and returns the descriptor.
    Leaving the `with` block without commit removes the temp file."""

    def __init__(self, layout: Layout):
        self._layout = layout
        self._hash = hashlib.sha256()
        self.size = 0
        fd, name = tempfile.mkstemp(prefix=".blob.", suffix=".tmp", dir=layout.blob_dir)
        self._tmp: Path | None = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()

    def commit(self, media_type: str) -> Descriptor:
        assert self._tmp is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        os.fchmod(self._file.fileno(), 0o644)
        self._file.close()
        digest = "sha256:" + self._hash.hexdigest()
        os.replace(self._tmp, self._layout.blob_path(digest))
        self._tmp = None
        return Descriptor(media_type, digest, self.size)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


class Layout:
    """The OCI image layout at `root` (created on first write)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"

    def create(self) -> Layout:
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            marker = self.root / "oci-layout"
            if not marker.exists():
                write_atomic(marker, LAYOUT_VERSION)
        except OSError as e:
            raise ImageError(f"write {self.root}: {e.strerror or e}") from e
        return self

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = check_digest_syntax(digest)
        if algorithm != "sha256":
            raise ImageError(f"{self.root}: only sha256 blobs are written here, not {digest}")
        return self.blob_dir / hexpart

    def has_blob(self, desc: Descriptor) -> bool:
        try:
            return self.blob_path(desc.digest).stat().st_size == desc.size
        except FileNotFoundError:
            return False

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        with self.writer() as w:
            w.write(data)
            return w.commit(media_type)

    def read_blob(self, desc: Descriptor) -> bytes:
        try:
            data = self.blob_path(desc.digest).read_bytes()
        except OSError as e:
            raise ImageError(f"{self.root}: blob {desc.digest}: {e.strerror or e}") from e
        if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise ImageError(f"{self.root}: blob {desc.digest} does not match its digest or size")
        return data

    # -- index.json ------------------------------------------------------------------

    def index(self) -> dict:
        try:
            raw = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except OSError as e:
            raise ImageError(f"read {self.root}/index.json: {e.strerror}") from e
        try:
            index = json.loads(raw)
            if not isinstance(index.get("manifests"), list):
                raise ValueError("no manifests list")
        except (ValueError, AttributeError) as e:
            raise ImageError(f"{self.root}/index.json: not an OCI index ({e})") from e
        return index

    def tag(self, manifest: Descriptor, ref: str | None) -> None:
        """Name `manifest` `ref` in index.json (or add it untagged), dropping the old
        entry of that name; written last and atomically."""
        index = self.index()
        index.setdefault("schemaVersion", 2)
        index["mediaType"] = OCI_INDEX
        kept = [m for m in index["manifests"]
                if not (ref and (m.get("annotations") or {}).get(REF_NAME) == ref)
                and not (not ref and m.get("digest") == manifest.digest)]
        entry = manifest.to_dict()
        if ref:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: ref}
        index["manifests"] = kept + [entry]
        try:
            fsync_dir(self.blob_dir)  # the blobs' renames are durable before the index names them
            write_atomic(self.root / "index.json", canonical_json(index))
        except OSError as e:
            raise ImageError(f"write {self.root}/index.json: {e.strerror or e}") from e

    def resolve(self, ref: str | None) -> Descriptor:
        """The manifest descriptor tagged `ref` (or the only one when ref is None)."""
        index = parse_document(canonical_json(self.index()), OCI_INDEX)
        assert isinstance(index, Index)
        found = [d for d in index.manifests if not ref or d.annotations.get(REF_NAME) == ref]
        if len(found) != 1:
            what = f"tag {ref!r}" if ref else "a single manifest"
            raise ImageError(f"{self.root}: {what} not found in index.json ({len(found)} matches)")
        return found[0]
