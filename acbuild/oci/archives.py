"""Single-file forms of an OCI image: oci-archive (a tar of the OCI layout) and
docker-archive (`docker save`'s format: manifest.json, the config as HEX.json, each
layer uncompressed as HEX.tar), written as deterministic tars in the dialect of
acbuild.aci.writer (sorted names, ustar, mtime 0, owner 0:0).

Contract: the archive appears atomically or not at all (writer.AciSink: temp file,
fsync, rename; the temp file is removed on any failure)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from acbuild.aci.tarformat import file_member, tar_header
from acbuild.aci.writer import AciSink, copy_file
from acbuild.errors import ImageError
from acbuild.oci.layout_writer import Layout, canonical_json


def _add_dir(sink: AciSink, name: str) -> None:
    sink.write(tar_header(name.encode(), tarfile.DIRTYPE, mode=0o755))


def _add_file(sink: AciSink, name: str, path: Path) -> None:
    size = path.stat().st_size
    sink.write(tar_header(name.encode(), tarfile.REGTYPE, mode=0o644, size=size))
    copy_file(sink, path, size)


def write_oci_archive(layout: Layout, out: Path) -> None:
    """`out` = a tar of the layout: oci-layout, index.json, blobs/sha256/* (sorted)."""
    with AciSink(out, "none") as sink:
        try:
            _add_dir(sink, "blobs")
            _add_dir(sink, "blobs/sha256")
            for blob in sorted(layout.blob_dir.iterdir()):
                if not blob.name.startswith("."):
                    _add_file(sink, f"blobs/sha256/{blob.name}", blob)
            _add_file(sink, "index.json", layout.root / "index.json")
            _add_file(sink, "oci-layout", layout.root / "oci-layout")
        except OSError as e:
            raise ImageError(f"write {out}: {e.strerror or e}") from e
        sink.commit()


def write_docker_archive(image, out: Path, repo_tag: str) -> None:
    """`out` = `docker save`'s layout for `image` (an export.OciImage with
    uncompressed layers), tagged `repo_tag` when given."""
    config_name = f"{image.config.digest.partition(':')[2]}.json"
    layer_names = [f"{diff_id.partition(':')[2]}.tar" for diff_id in image.diff_ids]
    entry = {"Config": config_name, "RepoTags": [repo_tag] if repo_tag else [], "Layers": layer_names}
    with AciSink(out, "none") as sink:
        try:
            _add_file(sink, config_name, image.layout.blob_path(image.config.digest))
            for name, layer in sorted(zip(layer_names, image.layers)):
                _add_file(sink, name, image.layout.blob_path(layer.digest))
            sink.write(file_member(b"manifest.json", canonical_json([entry])))
        except OSError as e:
            raise ImageError(f"write {out}: {e.strerror or e}") from e
        sink.commit()
