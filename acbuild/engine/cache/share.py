"""The step cache shared through a registry (`--cache-to`, `--cache-from`): entries of
engine.cache.stepcache packed as blobs, moved by acbuild.oci.remote_cache.

An entry blob is a gzip tar (acbuild's deterministic dialect: sorted names, mtime
0, owner 0:0; gzip by aci.pgzip) of the entry's files: `manifest`, `meta.json`
(with `created` zeroed, so an unchanged entry packs to the same bytes and is not
uploaded twice), `tree.json` and `files/N` for a snapshot or a layer (its parent entries travel too). The modes, owners and
mtimes of files/N travel in tree.json, which meta.json pins by sha256, and are set
again on import, so the imported entry passes the same checks a local one does.

Import takes, for each stage, the last step whose key the registry has and this
machine lacks (and the entry holding its tree): that is all a build needs to start
after it, and every step up to it is a hit. Unpacking writes only the entry's own
names, regular files, into a temp dir inside the cache, and the entry appears by
rename only after its manifest, listing and files match meta.json (cache.py's
contract); anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from acbuild.errors import ImageError
from acbuild.records import dataclass

_NAMES = ("manifest", "meta.json", "tree.json")


@dataclass(frozen=True)
class SharedCache:
    """--cache-from / --cache-to registry references and how to reach the registry
    (acbuild.oci.registry.RegistryOptions)."""

    cache_from: str | None = None
    cache_to: str | None = None
    registry: object | None = None


def pack_entry(cache, key: str, out: Path) -> None:
    """Entry `key` of `cache` (engine.cache.stepcache.StepCache) as a .tar.gz at `out`."""
    from acbuild.aci.tarformat import file_member
    from acbuild.aci.writer import AciSink

    entry = cache.steps / key
    meta = json.loads((entry / "meta.json").read_bytes())
    meta["created"] = 0
    names = [n for n in _NAMES if (entry / n).exists() and n != "meta.json"]
    files = sorted((entry / "files").iterdir(), key=lambda p: int(p.name)) if (entry / "files").is_dir() else []
    with AciSink(out, "gzip") as sink:
        sink.write(file_member(b"meta.json", json.dumps(meta, sort_keys=True).encode()))
        for name in names:
            sink.write(file_member(name.encode(), (entry / name).read_bytes()))
        for path in files:
            sink.write(file_member(f"files/{path.name}".encode(), path.read_bytes()))
        sink.commit()


def unpack_entry(cache, key: str, blob: Path) -> bool:
    """Install the packed entry `blob` as `key` in `cache`; ImageError when it is not
    a sound entry for that key. False when another build installed it first."""
    cache.steps.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=cache.steps))
    try:
        (tmp / "files").mkdir()
        try:
            with tarfile.open(blob, "r:gz") as tf:
                for m in tf:
                    _extract_member(tf, m, tmp, key)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"cache entry {key}: {e}") from e
        _check_and_restamp(tmp, key)
        return cache.install(tmp, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_member(tf: tarfile.TarFile, m: tarfile.TarInfo, tmp: Path, key: str) -> None:
    name = m.name
    allowed = name in _NAMES or (name.startswith("files/") and name[6:].isdigit() and len(name) < 20)
    if not m.isreg() or not allowed:
        raise ImageError(f"cache entry {key}: unexpected member {name!r}")
    with tf.extractfile(m) as src, open(tmp / name, "xb") as dst:
        while data := src.read(1 << 20):
            dst.write(data)


def _check_and_restamp(tmp: Path, key: str) -> None:
    """meta.json names this key, the manifest and tree.json match it; files/N get the
    mode, owner and mtime tree.json records for them."""
    from acbuild.engine.cache.stepcache import FORMAT_VERSION

    def bad(why: str) -> ImageError:
        return ImageError(f"cache entry {key} from the registry is not sound: {why}")

    try:
        meta = json.loads((tmp / "meta.json").read_bytes())
        manifest = (tmp / "manifest").read_bytes()
    except (OSError, ValueError) as e:
        raise bad(f"meta.json or manifest: {e}") from e
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
        raise bad("meta.json is for another key or cache version")
    if hashlib.sha256(manifest).hexdigest() != meta.get("manifest"):
        raise bad("the manifest does not match meta.json")
    meta["created"] = time.time()
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    if meta.get("tree") != key:
        return
    try:
        listing = (tmp / "tree.json").read_bytes()
    except OSError as e:
        raise bad(f"tree.json: {e.strerror}") from e
    if hashlib.sha256(listing).hexdigest() != meta.get("listing"):
        raise bad("tree.json does not match meta.json")
    for record in json.loads(listing.decode("utf-8", "surrogateescape")):  # "w" rows (a layer's deletions) hold no file
        _rel, kind, mode, uid, gid, mtime_ns, size, number, *_ = record
        if kind != "f":
            continue
        path = tmp / "files" / str(number)
        if not isinstance(number, int) or not path.is_file() or path.stat().st_size != size:
            raise bad(f"files/{number} is missing or has the wrong size")
        try:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        except OSError as e:
            raise bad(f"files/{number}: cannot give it owner {uid}:{gid} and mode {mode:o}: {e.strerror}") from e


# -- with the registry ------------------------------------------------------------------


def import_entries(cache, stage_keys: list[list[str]], source: str, registry_options) -> int:
    """--cache-from: fetch what the build lacks (see the module docstring); returns
    the number of entries imported."""
    from acbuild.engine.cache.stepcache import LAYER_DEPTH_LIMIT
    from acbuild.oci.remote_cache import RemoteCache

    remote = RemoteCache(source, registry_options)
    offered = remote.entries()
    imported = 0
    with tempfile.TemporaryDirectory(prefix="acbuild-cache-from-") as tmp:
        def fetch(key: str) -> None:
            nonlocal imported
            blob = Path(tmp) / f"{imported}.tar.gz"
            remote.download(offered[key], blob)
            if unpack_entry(cache, key, blob):
                imported += 1
            blob.unlink()

        for keys in stage_keys:
            for key in reversed(keys):
                if cache.has(key):
                    break
                if key not in offered:
                    continue
                if cache.meta(key) is None:
                    fetch(key)
                needed = cache.meta(key)
                needed = needed and (needed["tree"] if needed["tree"] != key else needed.get("parent"))
                for _ in range(LAYER_DEPTH_LIMIT + 1):  # the tree it shares, and the layers below that
                    if not needed:
                        break
                    if cache.meta(needed) is None and needed in offered:
                        fetch(needed)
                    below = cache.meta(needed)
                    needed = below and below.get("parent")
                if cache.has(key):
                    break
    return imported


def export_entries(cache, keys: list[str], target: str, registry_options):
    """--cache-to: every entry of `keys` this cache holds (and the trees they share),
    pushed as one cache manifest. Returns acbuild.oci.push.Pushed."""
    from acbuild.oci.remote_cache import RemoteCache

    wanted: list[str] = []
    for key in keys:
        meta = cache.meta(key)
        if meta is None:
            continue
        for k in [m["key"] for m in cache.chain(key) or ()] + [key]:  # its tree and the layers below
            if k not in wanted and cache.meta(k) is not None:
                wanted.append(k)
    if not wanted:
        raise ImageError(f"--cache-to {target}: the build left no cache entries to export")
    with tempfile.TemporaryDirectory(prefix="acbuild-cache-to-") as tmp:
        blobs = {}
        for n, key in enumerate(wanted):
            blobs[key] = Path(tmp) / f"{n}.tar.gz"
            try:
                pack_entry(cache, key, blobs[key])
            except (OSError, ValueError) as e:
                raise ImageError(f"--cache-to {target}: pack cache entry {key}: {e}") from e
        return RemoteCache(target, registry_options).push(blobs, Path(tmp) / "config")
