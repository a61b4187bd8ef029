"""Images on disk: an OCI image layout (a directory or an oci-archive tar of
one) and a docker-archive (what `docker save` and `skopeo copy ... docker-archive:`
write), read into one shape, `LocalImage`: config bytes and layers, base first.

Every blob of an OCI layout is checked against its digest while it is read
(layers as they stream into the squash); docker-archive layers, which have no
digest of their own, are checked against the config's rootfs.diff_ids there.
Archives are read in place (tarfile random access), never unpacked to disk, and
only member names are looked up, so an archive cannot make us touch other files.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from acbuild.errors import ImageError, NotFoundError
from acbuild.oci import manifests as mt
from acbuild.oci.blobs import DigestReader, check_digest_syntax, digest_of, read_verified
from acbuild.records import dataclass

MAX_JSON = 64 << 20
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Layer:
    """One layer tar (maybe compressed). `open()` gives a reader; `check(reader)`
    after the tar was read refuses a blob whose bytes are not the digest's."""

    what: str
    opener: Callable[[], BinaryIO]
    digest: str | None  # of the blob as stored (None for docker-archive)
    size: int | None
    diff_id: str | None  # of the uncompressed tar, from the config

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        f = self.opener()
        try:
            yield DigestReader(f, self.digest, self.size, what=f"layer {self.what}") if self.digest else f
        finally:
            f.close()


@dataclass(frozen=True)
class LocalImage:
    config: bytes
    layers: list[Layer]
    manifest_digest: str  # docker-archive: the digest of the config (its image ID)
    # The tag or RepoTag the image was found under ("" if none).
    tag_hint: str = ""
    name_hint: str = ""


class _Files:
    """Named files of a directory or of an uncompressed tar."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        try:
            self.tar = tarfile.open(path, "r:")
        except FileNotFoundError:
            raise NotFoundError(f"{what}: no such file") from None
        except (tarfile.TarError, OSError) as e:
            raise ImageError(f"{what}: not a tar archive: {e}") from e
        for m in self.tar.getmembers():
            if m.isreg():
                self.members[posixpath.normpath(m.name.lstrip("/"))] = m

    def open(self, name: str) -> BinaryIO:
        name = posixpath.normpath(name)
        if name.startswith("../") or name == ".." or name.startswith("/"):
            raise ImageError(f"{self.what}: bad path {name!r}")
        if self.tar is None:
            try:
                return open(self.path / name, "rb")
            except FileNotFoundError:
                raise ImageError(f"{self.what}: {name} is missing") from None
            except OSError as e:
                raise ImageError(f"{self.what}: read {name}: {e}") from e
        m = self.members.get(name)
        if m is None:
            raise ImageError(f"{self.what}: {name} is missing")
        f = self.tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def read_json(self, name: str, digest: str | None = None, size: int | None = None) -> tuple[bytes, object]:
        with self.open(name) as f:
            data = read_verified(f, digest, size, MAX_JSON, what=name) if digest else f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.what}: {name} is larger than {MAX_JSON} bytes")
        try:
            return data, json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageError(f"{self.what}: {name} is not JSON: {e}") from None


def _blob_name(digest: str) -> str:
    algo, hexpart = check_digest_syntax(digest)
    return f"blobs/{algo}/{hexpart}"


def diff_ids(config: bytes, what: str) -> list[str]:
    """The config's rootfs.diff_ids: the digests of the uncompressed layer tars."""
    rootfs = mt.json_object(config, f"{what}: the image config").get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ImageError(f"{what}: config rootfs.diff_ids is not a list of digests")
    return ids


def read_oci(path: str, ref: str, platform: mt.Platform | None, what: str) -> LocalImage:
    """The image `ref` (an org.opencontainers.image.ref.name; may be empty when
    the index holds one image) of the OCI layout at `path` (a dir or a tar)."""
    files = _Files(Path(path), what)
    _, layout = files.read_json("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageError(f"{what}: oci-layout has no imageLayoutVersion (not an OCI image layout)")
    index_bytes, _ = files.read_json("index.json")
    doc = mt.parse_document(index_bytes, mt.OCI_INDEX)
    if not isinstance(doc, mt.Index):
        raise ImageError(f"{what}: index.json is not an image index")
    entries = doc.manifests
    if ref:
        entries = [d for d in entries if d.annotations.get(REF_NAME) == ref]
        if not entries:
            names = sorted({d.annotations.get(REF_NAME, "") for d in doc.manifests} - {""})
            raise NotFoundError(f"{what}: no image named {ref!r} (the layout has {', '.join(names) or 'no names'})")
    if len(entries) > 1 and all(d.media_type in mt.IMAGE_MANIFESTS for d in entries):
        if not any(d.platform for d in entries):
            raise ImageError(f"{what}: the layout holds {len(entries)} images; name one as {what}:REF")
    desc = mt.choose(mt.Index(mt.OCI_INDEX, entries), platform or mt.host_platform()) if len(entries) > 1 \
        else (entries[0] if entries else None)
    if desc is None:
        raise ImageError(f"{what}: index.json lists no image")
    tag = desc.annotations.get(REF_NAME, ref)
    for _ in range(4):  # an index may point at an index (e.g. a multi-platform image)
        data, _ = files.read_json(_blob_name(desc.digest), desc.digest, desc.size)
        doc = mt.parse_document(data, desc.media_type)
        if isinstance(doc, mt.Manifest):
            break
        desc = mt.choose(doc, platform or mt.host_platform())
    else:
        raise ImageError(f"{what}: indexes nested too deep")
    config, _ = files.read_json(_blob_name(doc.config.digest), doc.config.digest, doc.config.size)
    layer_ids = diff_ids(config, what)
    if len(layer_ids) != len(doc.layers):
        raise ImageError(f"{what}: {len(doc.layers)} layers but {len(layer_ids)} diff_ids in the config")
    layers = [Layer(d.digest, (lambda n=_blob_name(d.digest): files.open(n)), d.digest, d.size, diff_id)
              for d, diff_id in zip(doc.layers, layer_ids)]
    for d in doc.layers:
        if d.media_type and d.media_type not in mt.LAYER_TYPES:
            raise ImageError(f"{what}: layer {d.digest} has media type {d.media_type!r}, not a layer tar")
    return LocalImage(config, layers, desc.digest, tag, "")


def read_docker_archive(path: str, ref: str, what: str) -> LocalImage:
    """The image `ref` (a RepoTag; may be empty when the archive holds one image)
    of the docker-archive at `path`."""
    files = _Files(Path(path), what)
    if files.tar is None:
        raise ImageError(f"{what}: a docker-archive is a tar file, not a directory")
    _, manifest = files.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
        raise ImageError(f"{what}: manifest.json is not a list of images (not a docker-archive?)")
    entries = manifest
    if ref:
        entries = [e for e in manifest if ref in (e.get("RepoTags") or []) or
                   any(t.endswith(f"/{ref}") for t in e.get("RepoTags") or [])]
        if not entries:
            tags = sorted(t for e in manifest for t in e.get("RepoTags") or [])
            raise NotFoundError(f"{what}: no image tagged {ref!r} (the archive has {', '.join(tags) or 'no tags'})")
    if len(entries) > 1:
        raise ImageError(f"{what}: the archive holds {len(entries)} images; name one as {what}:NAME:TAG")
    entry = entries[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageError(f"{what}: manifest.json entry without Config and Layers")
    config, _ = files.read_json(config_name)
    layer_ids = diff_ids(config, what)
    if len(layer_ids) != len(layer_names):
        raise ImageError(f"{what}: {len(layer_names)} layers but {len(layer_ids)} diff_ids in the config")
    layers = [Layer(str(n), (lambda n=str(n): files.open(n)), None, None, diff_id)
              for n, diff_id in zip(layer_names, layer_ids)]
    repo_tags = entry.get("RepoTags") or []
    tag_hint = ref or (repo_tags[0] if repo_tags else "")
    name, _, tag = tag_hint.rpartition(":") if ":" in tag_hint.rsplit("/", 1)[-1] else (tag_hint, "", "")
    return LocalImage(config, layers, digest_of(config), tag, name)


def layout_name(path: str) -> str:
    """A name for an image found only by its file or directory name."""
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".tar", ".tar.gz", ".oci", ".docker"):
        base = base.removesuffix(suffix)
    return base or "image"
