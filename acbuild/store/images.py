"""The image store: fetched and imported images, kept by image ID.

Layout (ROOT: --store-dir, else $ACBUILD_STORE_DIR, else $XDG_DATA_HOME/acbuild/images;
made mode 0700, as it holds what the user chose to trust):

    ROOT/lock                             flock: shared to add or read, exclusive for rm and gc
    ROOT/entries/<image ID>/image.aci     the bytes exactly as fetched (what the signature covers)
                            image.aci.asc the signature (absent when fetched with --insecure-skip-verify)
                            info.json     name, labels, size, sha512 of the file, import time, origin,
                                          its dependencies as the manifest gives them, and the image
                                          IDs they resolved to
                            used          its mtime: the last time a build or launch used the image
    ROOT/tmp/                             staging dirs and partial downloads (kept for resume)

Contract: an entry appears whole or not at all. It is assembled in tmp/ and renamed into
entries/; two processes adding the same image race on that rename and the loser drops its
copy, so the store holds one entry and both get it. An entry's image is never rewritten
(only info.json's list of resolved dependencies is, atomically). `get` and
`find` check the file against the sha512 recorded when it was added: a damaged entry is
removed and reported absent, so the caller fetches it again and never uses it. Signatures
are not checked here: acbuild.fetch checks them before `add`, the engine again on use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from acbuild.aci.types import image_id_problem
from acbuild.atomic import fsync_dir, write_atomic
from acbuild.dirs import private_dir
from acbuild.errors import ImageError, NotFoundError, UsageError
from acbuild.files import flock, remove_tree
from acbuild.records import dataclass, field
from acbuild.report import Reporter

ACI = "image.aci"
ASC = "image.aci.asc"
INFO = "info.json"
USED = "used"
SHORT_ID = 19  # "sha512-" and 12 hex digits, as `image list` shows it


@dataclass(frozen=True)
class StoredImage:
    """One entry of the store, as its info.json describes it."""

    image_id: str
    name: str
    labels: dict[str, str]
    size: int  # bytes of the .aci file
    sha512: str  # of the .aci file's bytes (the image ID hashes the uncompressed tar)
    imported: float  # seconds since the epoch
    used: float
    path: Path  # the entry directory
    origin: dict = field(default_factory=dict)  # {"aci": URL, "etag": ..., "asc": URL} or {"file": PATH}
    requires: tuple[dict, ...] = ()  # the manifest's dependencies: {"name", "labels", "image-id", "size"}
    dependencies: tuple[str, ...] = ()  # the image IDs they resolved to
    signer: str = ""  # who signed it, as verified when it was stored; "" when taken unverified

    @property
    def aci(self) -> Path:
        return self.path / ACI

    @property
    def signature(self) -> Path | None:
        sig = self.path / ASC
        return sig if sig.is_file() else None

    @property
    def short_id(self) -> str:
        return self.image_id[:SHORT_ID]

    def describe(self) -> str:
        version = self.labels.get("version")
        return f"{self.name}{':' + version if version else ''} ({self.short_id})"


class ImageStore:
    def __init__(self, root: Path, reporter: Reporter | None = None):
        self.root = Path(root).absolute()
        self.reporter = reporter or Reporter()
        self.entries_dir = self.root / "entries"
        self.tmp = self.root / "tmp"

    def ensure(self) -> None:
        """Create the store on first use, 0700 as dirs.private_dir makes it (the step
        cache's rule: images and their setuid binaries are out of other users' reach)."""
        try:
            private_dir(self.root)
            for d in (self.entries_dir, self.tmp):
                d.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise ImageError(f"image store {self.root}: {err.strerror}") from err

    def locked(self, exclusive: bool = False):
        """Shared: adding and reading; exclusive: removing (rm, gc)."""
        self.ensure()
        return flock(self.root / "lock", exclusive)

    # -- adding -------------------------------------------------------------------

    def add(self, aci: Path, signature: Path | None, *, image_id: str, name: str, labels: dict[str, str],
            origin: dict, requires: tuple[dict, ...] = (), signer: str = "") -> StoredImage:
        """Move `aci` (and `signature`), files in self.tmp the caller no longer needs, into
        the store as the entry `image_id`; `signer` says who the caller verified them to be
        signed by ("" when unverified). If the entry is already there, the existing one is
        kept and returned, unless it was unverified and this one is verified."""
        with self.locked():
            existing = self.get(image_id)
            if existing is not None and (existing.signer or not signer):
                return existing
            if existing is not None:  # taken unverified before: now it comes verified
                self.discard(existing.path)
            stage = Path(tempfile.mkdtemp(prefix="entry-", dir=self.tmp))
            try:
                os.replace(aci, stage / ACI)
                if signature is not None:
                    os.replace(signature, stage / ASC)
                with open(stage / ACI, "rb") as f:
                    digest = hashlib.file_digest(f, "sha512").hexdigest()
                    os.fsync(f.fileno())
                now = time.time()
                info = {"image-id": image_id, "name": name, "labels": labels, "size": (stage / ACI).stat().st_size,
                        "sha512": digest, "imported": now, "origin": origin, "requires": list(requires), "dependencies": [],
                        "signer": signer}
                write_atomic(stage / INFO, json.dumps(info, indent=1, sort_keys=True).encode(), mode=0o600)
                (stage / USED).touch()
                fsync_dir(stage)
                try:
                    os.rename(stage, self.entries_dir / image_id)
                except OSError:  # another process stored it first: keep theirs
                    stored = self.get(image_id)
                    if stored is None:
                        raise
                    return stored
                fsync_dir(self.entries_dir)
            except OSError as err:
                raise ImageError(f"image store {self.root}: store {image_id[:SHORT_ID]}: {err.strerror}") from err
            finally:
                if stage.exists():
                    remove_tree(stage)
            return self._read(self.entries_dir / image_id)

    def set_dependencies(self, image: StoredImage, dependencies: tuple[str, ...]) -> None:
        """Record the image IDs `image`'s dependencies resolved to (what gc keeps for it)."""
        if image.dependencies == dependencies:
            return
        try:
            info = json.loads((image.path / INFO).read_bytes())
            info["dependencies"] = list(dependencies)
            write_atomic(image.path / INFO, json.dumps(info, indent=1, sort_keys=True).encode(), mode=0o600)
        except (OSError, ValueError):
            pass  # removed meanwhile (rm, gc) or damaged: get() deals with it; this is only gc's hint

    # -- reading -------------------------------------------------------------------

    def get(self, image_id: str) -> StoredImage | None:
        """The entry, checked against its recorded sha512; None if absent or damaged
        (a damaged entry is removed)."""
        entry = self.entries_dir / image_id
        if image_id_problem(image_id) or not entry.is_dir():  # only an image ID names an entry
            return None
        image = self._read(entry)
        if image is not None and self._intact(image):
            return image
        self.discard(entry)
        self.reporter.warning(f"image store: {image_id[:SHORT_ID]} was damaged (its file does not match the "
                              "sha512 recorded when it was stored); removed it")
        return None

    def find(self, name: str, labels: dict[str, str]) -> StoredImage | None:
        """The newest intact image called `name` that has every one of `labels`."""
        for image in sorted(self.matching(name, labels), key=lambda i: i.imported, reverse=True):
            checked = self.get(image.image_id)
            if checked is not None:
                return checked
        return None

    def matching(self, name: str, labels: dict[str, str]) -> list[StoredImage]:
        return [i for i in self.list() if i.name == name and all(i.labels.get(k) == v for k, v in labels.items())]

    def list(self) -> list[StoredImage]:
        """Every entry, by name then import time (not checked: listing reads no images)."""
        if not self.entries_dir.is_dir():
            return []
        images = [i for e in sorted(self.entries_dir.iterdir()) if (i := self._read(e)) is not None]
        return sorted(images, key=lambda i: (i.name, i.imported))

    def lookup(self, ref: str) -> list[StoredImage]:
        """What `image rm/export/cat-manifest` mean by ID|NAME: an image ID or a unique prefix
        of one ("sha512-1a2b..."), else NAME[:VERSION][,LABEL=VALUE...] (every match, newest
        first). NotFoundError when nothing matches."""
        images = self.list()
        if ref.startswith("sha512-"):
            found = [i for i in images if i.image_id.startswith(ref)]
            if len(found) > 1:
                raise UsageError(f"{ref}: ambiguous image ID prefix ({len(found)} images); give more digits")
        else:
            from acbuild.net.discovery import AppRequest

            wanted = AppRequest.parse(ref)
            found = sorted(self.matching(wanted.name, dict(wanted.labels)), key=lambda i: i.imported, reverse=True)
        if not found:
            raise NotFoundError(f"{ref}: no such image in the store {self.root} (see acbuild image list)")
        return found

    def mark_used(self, image: StoredImage) -> None:
        try:
            os.utime(image.path / USED)
        except OSError:
            pass  # only gc's hint

    def _read(self, entry: Path) -> StoredImage | None:
        try:
            info = json.loads((entry / INFO).read_bytes())
            used = (entry / USED).stat().st_mtime if (entry / USED).exists() else info["imported"]
            return StoredImage(image_id=info["image-id"], name=info["name"], labels=dict(info["labels"]),
                               size=int(info["size"]), sha512=info["sha512"], imported=float(info["imported"]),
                               used=used, path=entry, origin=dict(info.get("origin") or {}),
                               requires=tuple(info.get("requires") or ()),
                               dependencies=tuple(info.get("dependencies") or ()), signer=info.get("signer", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-removed or damaged: get() drops it, list() skips it

    def _intact(self, image: StoredImage) -> bool:
        if image.path.name != image.image_id:
            return False
        try:
            with open(image.aci, "rb") as f:
                return hashlib.file_digest(f, "sha512").hexdigest() == image.sha512
        except OSError:
            return False

    # -- removing ------------------------------------------------------------------

    def discard(self, entry: Path) -> None:
        """Remove an entry: renamed out of entries/ first, so nobody finds half of it."""
        trash = self.tmp / f"trash-{entry.name[:40]}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(entry, trash)
        except FileNotFoundError:
            return
        remove_tree(trash)

    def remove(self, image: StoredImage) -> None:
        with self.locked(exclusive=True):
            self.discard(image.path)

    def gc(self, unused_days: float, now: float | None = None) -> list[StoredImage]:
        """Remove the images no name resolves to (another image with the same name and
        labels is newer) that no kept image depends on and that were not used for
        `unused_days`; and partial downloads not touched for as long (a day at least,
        so a download in progress keeps its file and its lock). Returns what was removed."""
        now = time.time() if now is None else now
        cutoff = now - unused_days * 86400
        removed = []
        with self.locked(exclusive=True):
            images = self.list()
            newest: dict[tuple, StoredImage] = {}
            for image in images:  # sorted by import time: the last one wins
                newest[(image.name, tuple(sorted(image.labels.items())))] = image
            keep = {i.image_id for i in newest.values()} | {i.image_id for i in images if i.used >= cutoff}
            by_id = {i.image_id: i for i in images}
            todo = list(keep)
            while todo:  # what kept images depend on is kept too
                kept = by_id.get(todo.pop())
                for dep in kept.dependencies if kept else ():
                    if dep not in keep:
                        keep.add(dep)
                        todo.append(dep)
            for image in images:
                if image.image_id not in keep:
                    self.discard(image.path)
                    removed.append(image)
            stale = now - max(unused_days, 1) * 86400
            for leftover in self.tmp.iterdir():
                if leftover.lstat().st_mtime < stale:
                    remove_tree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        return removed

    def read_manifest(self, image: StoredImage) -> bytes:
        from acbuild.aci.archive import read_aci

        return read_aci(image.aci).manifest_bytes


def copy_out(image: StoredImage, out: Path, reporter: Reporter | None = None) -> None:
    """`image export`: the .aci and its .asc to `out` and `out`.asc, together
    (acbuild.trust.sign.replace_together: never an image beside another's signature)."""
    from acbuild.trust.sign import replace_together, signature_path

    if out.suffix != ".aci":
        raise UsageError(f"{out}: the output file name must end in .aci")
    reporter = reporter or Reporter()
    aci_tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    asc_tmp = signature_path(aci_tmp) if image.signature else None
    try:
        shutil.copyfile(image.aci, aci_tmp)
        if asc_tmp is not None:
            shutil.copyfile(image.signature, asc_tmp)
        replace_together(aci_tmp, asc_tmp, out, reporter=reporter)
    except OSError as err:
        raise ImageError(f"write {out}: {err.strerror}") from err
    finally:
        aci_tmp.unlink(missing_ok=True)
        if asc_tmp is not None:
            asc_tmp.unlink(missing_ok=True)
