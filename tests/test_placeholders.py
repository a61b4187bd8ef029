"""Device placeholders (acbuild.placeholders): a mark with this user's HMAC is the
device it stands for, in the writer's tar; a forged or malformed mark (what any RUN
step or host tree can set: user xattrs need no privilege) is the empty file it is.
Real xattrs on the real file system; the key lives in the test's private cache dir."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from acbuild import placeholders
from acbuild.aci.writer import write_aci

MANIFEST = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/p"}'


def mark(path: Path, text: str, mac: str | None = None) -> None:
    path.write_bytes(b"")
    key = placeholders._key(create=True)
    os.setxattr(path, placeholders.XATTR, f"{text} {mac or placeholders._mac(key, text)}".encode())


def written(tmp_path: Path, rootfs: Path) -> dict[str, tarfile.TarInfo]:
    write_aci(tmp_path / "out.aci", MANIFEST, rootfs)
    with tarfile.open(tmp_path / "out.aci") as t:
        return {i.name: i for i in t.getmembers()}


def test_a_placeholder_is_written_as_its_device_and_a_forged_mark_as_an_empty_file(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    mark(rootfs / "null", "c 1 3")
    os.chmod(rootfs / "null", 0o666)
    mark(rootfs / "forged", "b 8 0", mac="0" * 32)  # what a RUN step can set
    mark(rootfs / "huge", f"c {placeholders.MAX_MAJOR + 1} 0")  # a right MAC, numbers dev_t cannot hold
    (rootfs / "plain").write_bytes(b"")
    os.setxattr(rootfs / "plain", placeholders.XATTR, b"nonsense")
    entries = written(tmp_path, rootfs)
    null = entries["rootfs/null"]
    assert null.ischr() and (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)
    for name in ("forged", "huge", "plain"):
        assert entries[f"rootfs/{name}"].isreg() and entries[f"rootfs/{name}"].size == 0, name


def test_a_mark_only_counts_on_an_empty_regular_file(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    mark(rootfs / "written-into", "c 1 3")
    (rootfs / "written-into").write_bytes(b"data")  # the RUN wrote into it: a file now
    assert written(tmp_path, rootfs)["rootfs/written-into"].isreg()


def test_the_step_cache_records_a_placeholder_as_its_device(tmp_path):
    """So that an entry shared through a registry (files as blobs, no xattrs) still
    holds the device (engine.cache.share packs tree.json and files/)."""
    import json

    from acbuild.engine.cache.stepcache import _snapshot

    work, entry = tmp_path / "work", tmp_path / "entry"
    work.mkdir()
    entry.mkdir()
    mark(work / "null", "c 1 3")
    _snapshot(work, entry)
    rows = {row[0]: row for row in json.loads((entry / "tree.json").read_text())}
    assert rows["/null"][1] == "c" and rows["/null"][8] == os.makedev(1, 3)
    assert not (entry / "files").exists()  # no empty file stands in for it
