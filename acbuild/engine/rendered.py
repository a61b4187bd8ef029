"""Rendered images for `launch`: an image is extracted once into a tree keyed by its image
ID, and every launch runs over an overlay of it (engine.execute.layer's upper-dir mode),
so nothing an app writes reaches the tree and the next launch skips the extraction.

Layout under CACHE (--cache-dir, $ACBUILD_CACHE_DIR, else the XDG cache dir):

    launch/ids/SHA256             the image ID of the .aci whose bytes have this sha256
    launch/trees/ID/rootfs/       the rendered rootfs (ID: the image ID's hex digest)
    launch/trees/ID/manifest      the image manifest
    launch/trees/ID/listing.json  every entry: path, type, mode, owner, inode; size, mtime, ctime
    launch/seen/H                 the sha256 of the .aci at path hash H, with its stat then
    launch/trees/ID/done.json     written last: the image ID and the listing's sha256

Contract: a tree is made in a temp dir beside the others and renamed into place when
complete, so an interrupted render leaves no tree (its temp dir holds an flock; the next
render removes it once free). A tree is used only when done.json names the image ID the
bytes being launched map to (recorded when those very bytes were extracted and hashed)
and every entry still matches the listing (one lstat each: a changed, replaced or removed
file is found and the tree rendered again; a file added to the 0700 tree is not). Images with dependencies are rendered per launch, as before: what their
dependencies resolve to is not fixed by the image ID.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from acbuild.atomic import write_atomic
from acbuild.dirs import private_dir
from acbuild.files import remove_tree, trash, walk

_FORMAT = 1


def tree_root(cache: Path) -> Path:
    return cache / "launch"


def cached_tree(source: Path, cache: Path) -> tuple[Path, bytes] | None:
    """(rootfs, manifest bytes) of the tree for the bytes of `source`, when it is there and sound."""
    digest = _digest(source, cache)
    try:
        image_id = (tree_root(cache) / "ids" / digest).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    tree = _tree_dir(cache, image_id)
    if tree is None or not _sound(tree, image_id):
        return None
    return tree / "rootfs", (tree / "manifest").read_bytes()


def render_tree(source: Path, cache: Path, extract) -> tuple[Path, bytes] | None:
    """Render `source` with `extract(source, rootfs) -> AciContents` into a new tree and
    install it; (rootfs, manifest bytes), or None when the image has dependencies (the
    caller renders it per launch) or the tree could not be installed."""
    root = private_dir(tree_root(cache))
    trees = private_dir(root / "trees")
    digest = _digest(source, cache)
    _remove_stale(trees)
    tmp, lock = _locked_temp(trees)
    try:
        rootfs = tmp / "rootfs"
        contents = extract(source, rootfs)
        if json.loads(contents.manifest_bytes).get("dependencies"):
            return None
        (tmp / "manifest").write_bytes(contents.manifest_bytes)
        listing = json.dumps(_listing(rootfs), separators=(",", ":")).encode("utf-8", "surrogateescape")
        (tmp / "listing.json").write_bytes(listing)
        done = {"version": _FORMAT, "image_id": contents.image_id, "listing": hashlib.sha256(listing).hexdigest()}
        (tmp / "done.json").write_bytes(json.dumps(done).encode())
        final = trees / _hex(contents.image_id)
        if os.path.lexists(final) and not _sound(final, contents.image_id):
            trash(final)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not _sound(final, contents.image_id):  # another launch installed it first: it must be sound
                return None
        private_dir(root / "ids")
        write_atomic(root / "ids" / digest, contents.image_id.encode())
        return final / "rootfs", (final / "manifest").read_bytes()
    finally:
        remove_tree(tmp)
        os.close(lock)


def _hex(image_id: str) -> str:
    return image_id.removeprefix("sha512-")


def _tree_dir(cache: Path, image_id: str) -> Path | None:
    name = _hex(image_id)
    if not name or "/" in name or name.startswith("."):
        return None
    return tree_root(cache) / "trees" / name


def _sound(tree: Path, image_id: str) -> bool:
    try:
        done = json.loads((tree / "done.json").read_bytes())
        listing = (tree / "listing.json").read_bytes()
    except (OSError, ValueError):
        return False
    if not isinstance(done, dict) or done.get("version") != _FORMAT or done.get("image_id") != image_id:
        return False
    if hashlib.sha256(listing).hexdigest() != done.get("listing"):
        return False
    root = os.fspath(tree / "rootfs")
    try:
        return all(_state(os.lstat(root + rel)) == recorded
                   for rel, *recorded in json.loads(listing.decode("utf-8", "surrogateescape")))
    except OSError:
        return False


def _listing(rootfs: Path) -> list[list]:
    root = os.fspath(rootfs)
    return [["", *_state(os.lstat(root))]] + [["/" + rel, *_state(st)] for _, rel, st, _ in walk(root)]


def _state(st: os.stat_result) -> list[int]:
    """What one lstat tells of an entry that must not have changed: type, mode, owner and
    inode, and for a non-directory its size, mtime and ctime (no write, chmod or utime
    leaves ctime alone). Not a directory's times, which a mount point made for a launch moves."""
    if stat.S_ISDIR(st.st_mode):
        return [st.st_mode, st.st_uid, st.st_gid, st.st_ino, 0, 0, 0]
    return [st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _digest(path: Path, cache: Path) -> str:
    """The sha256 of `path`'s bytes; remembered by (device, inode, size, mtime, ctime) in
    launch/seen/, so an unchanged file is not read again (any write moves its ctime)."""
    signature = _signature(path)
    seen = tree_root(cache) / "seen" / hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()
    try:
        known = json.loads(seen.read_bytes())
        if known["stat"] == signature:
            return known["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if signature == _signature(path):  # unchanged while read
        private_dir(seen.parent)
        write_atomic(seen, json.dumps({"stat": signature, "sha256": digest}).encode())
    return digest


def _signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _locked_temp(trees: Path) -> tuple[Path, int]:
    import fcntl
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=trees))
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return tmp, fd


def _remove_stale(trees: Path) -> None:
    """Temp trees of killed renders: their lock is free."""
    import fcntl

    for entry in trees.glob(".*"):
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its render is alive
        finally:
            os.close(fd)
        remove_tree(entry)

