"""What an image repository serves: a scan of a directory of .aci files (and their
.asc signatures) into a fixed table of URL paths. Nothing else is ever served, so a
request path is looked up, never joined onto the directory: `..`, symlinks that
leave the directory and hidden files cannot be reached by construction.

URL layout (the same for `acbuild serve` and `serve --export`):

    /NAME-VERSION-OS-ARCH.aci (.aci.asc)   each image, NAME its full name (host included);
                                           also as VERSION "latest" for the newest one
    /PATH                                  the discovery page of every image name
                                           HOST/PATH and of each parent path
    /                                      index.html: the image list (and the page of HOST)
    /index.json                            the same list for scripts
    /pubkeys.gpg                           the signing keys (--keys FILE)

A discovery page for PATH carries, for each image named HOST/PATH,
`<meta name="ac-discovery" content="HOST/PATH BASE/{name}-{version}-{os}-{arch}.{ext}">`
and, with keys, `<meta name="ac-discovery-pubkeys" content="HOST/PATH BASE/pubkeys.gpg">`
for every host with names at or under PATH (the root page: prefix HOST).
BASE is the URL clients reach the repository at (the request's scheme and Host,
or --base-url).

"latest" is the image without a version label if there is one, else the highest
version (semver order; versions that are not semver sort below, by text).
Images without os or arch labels, with a label value that cannot be a URL path
segment, or that would take a path already taken are listed in `problems` and
not served. A scan is cheap to repeat: images are only read again when their
size, mtime or inode changed.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
from pathlib import Path

from acbuild.aci.archive import read_aci
from acbuild.aci.manifest import ImageManifest
from acbuild.errors import AcbuildError
from acbuild.records import dataclass, field, replace

LATEST = "latest"
KEYS_PATH = "/pubkeys.gpg"
_SEGMENT = re.compile(r"^[A-Za-z0-9_+~-][A-Za-z0-9._+~-]*$")  # a label value usable in a file name
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


Identity = tuple[int, int, int, int]  # (dev, ino, size, mtime_ns): changes when the file does


@dataclass(frozen=True)
class ServedFile:
    file: Path
    content_type: str
    identity: Identity


@dataclass(frozen=True)
class Image:
    file: Path  # where it is in DIR (resolved, inside DIR)
    relative: str  # its path relative to DIR, for listings
    signature: ServedFile | None  # IMAGE.aci.asc beside it, if DIR has one (looked at on every scan)
    image_id: str
    name: str
    labels: tuple[tuple[str, str], ...]
    size: int
    identity: Identity

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def path(self, version: str | None = None) -> str:
        os_, arch = self.label("os"), self.label("arch")
        return f"/{self.name}-{version or self.label('version') or LATEST}-{os_}-{arch}.aci"


@dataclass(frozen=True)
class Repository:
    root: Path
    images: tuple[Image, ...] = ()
    files: dict[str, ServedFile] = field(default_factory=dict)  # URL path -> file in DIR
    page_paths: frozenset[str] = frozenset()  # discovery pages ("/" included)
    problems: tuple[str, ...] = ()
    has_keys: bool = False
    latest: frozenset[Path] = frozenset()  # the image files also served as version "latest"

    def discovery_page(self, path: str, base: str) -> bytes | None:
        """The HTML discovery page at URL `path` ("/" is the index), for clients at `base`."""
        if path not in self.page_paths:
            return None
        base = base.rstrip("/")
        sub = path.strip("/")
        tags = []
        for name in sorted({i.name for i in self.images if _name_path(i.name) == sub}):
            template = f"{base}/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}"
            tags.append(_meta("ac-discovery", f"{name} {template}"))
        if self.has_keys:
            for host in sorted({i.name.split("/")[0] for i in self.images if _under(_name_path(i.name), sub)}):
                tags.append(_meta("ac-discovery-pubkeys", f"{host}/{sub} {base}{KEYS_PATH}" if sub
                                  else f"{host} {base}{KEYS_PATH}"))
        title = "acbuild image repository" if path == "/" else f"{sub}: acbuild image repository"
        body = self._index_table(base) if path == "/" else f"<p>Discovery page for {html.escape(sub)}.</p>\n"
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
                + "".join(t + "\n" for t in tags) + f"</head><body>\n<h1>{html.escape(title)}</h1>\n{body}"
                "</body></html>\n").encode()

    def _index_table(self, base: str) -> str:
        rows = []
        for e in self.index(base)["images"]:
            labels = ", ".join(f"{k}={v}" for k, v in e["labels"].items())
            sig = f' (<a href="{html.escape(e["signature"])}">asc</a>)' if e["signature"] else " (unsigned)"
            rows.append(f"<tr><td><a href=\"{html.escape(e['url'])}\">{html.escape(e['name'])}</a>{sig}</td>"
                        f"<td>{html.escape(labels)}</td><td>{e['size']}</td><td><code>{e['imageID'][:19]}</code></td></tr>")
        keys = f'<p>Signing keys: <a href="{html.escape(base + KEYS_PATH)}">pubkeys.gpg</a></p>\n' if self.has_keys else ""
        return (keys + "<table>\n<tr><th>image</th><th>labels</th><th>size</th><th>ID</th></tr>\n"
                + "\n".join(rows) + "\n</table>\n")

    def index(self, base: str) -> dict:
        """index.json: every served image with its ID, labels, size and URLs."""
        base = base.rstrip("/")
        images = []
        for image in self.images:
            path = image.path()
            images.append({
                "name": image.name, "imageID": image.image_id, "labels": dict(image.labels), "size": image.size,
                "url": base + path, "signature": base + path + ".asc" if image.signature else None,
                "latest": base + image.path(LATEST) if image.file in self.latest else None,
                "file": image.relative,
            })
        return {"generator": "acbuild serve", "images": images, "keys": base + KEYS_PATH if self.has_keys else None}

    def index_json(self, base: str) -> bytes:
        return (json.dumps(self.index(base), indent=2, sort_keys=True) + "\n").encode()


def _meta(name: str, content: str) -> str:
    return f'<meta name="{name}" content="{html.escape(content)}">'


def _name_path(name: str) -> str:
    return name.partition("/")[2]


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


class Scanner:
    """Scans DIR into a Repository, remembering what it read so a rescan only
    reads new or changed images. Thread-safe."""

    def __init__(self, root: Path, keys: Path | None = None):
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise AcbuildError(f"{root}: not a directory")
        self.keys = keys
        self._known: dict[tuple[str, Identity], Image | str] = {}
        self._lock = threading.Lock()

    def scan(self) -> Repository:
        with self._lock:
            return self._scan()

    def _scan(self) -> Repository:
        problems: list[str] = []
        images: list[Image] = []
        known: dict[tuple[str, Identity], Image | str] = {}
        walked = {rel: (real, identity) for rel, real, identity in self._walk(problems)}
        for rel, (real, identity) in walked.items():
            if not rel.endswith(".aci"):
                continue
            key = (rel, identity)
            found = self._known.get(key) or self._read(rel, real, identity)
            known[key] = found
            if isinstance(found, str):
                problems.append(found)
                continue
            # Only a signature the walk saw (visible, inside DIR) is served.
            sig = walked.get(rel + ".asc")
            images.append(replace(found, signature=ServedFile(sig[0], "application/pgp-signature", sig[1])
                                  if sig else None))
        self._known = known
        return self._table(images, problems)

    def _walk(self, problems: list[str]):
        """(relative path, real path, identity) of every visible regular file in DIR,
        in sorted order; hidden names and symlinks leading out of DIR are skipped."""
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                real = os.path.realpath(full)
                if not real.startswith(str(self.root) + os.sep):
                    problems.append(f"{rel}: a symlink out of the directory, not served")
                    continue
                try:
                    st = os.stat(real)
                except OSError:
                    continue
                if os.path.isfile(real):
                    yield rel, Path(real), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self, rel: str, real: Path, identity: Identity) -> Image | str:
        try:
            contents = read_aci(real)
            manifest = ImageManifest.from_json(contents.manifest_bytes)
        except AcbuildError as e:
            return f"{rel}: not served: {e}"
        if contents.problems:
            return f"{rel}: not served: {contents.problems[0]}"
        labels = tuple(sorted((label.name, label.value) for label in manifest.labels))
        return Image(real, rel, None, contents.image_id, manifest.name, labels, identity[2], identity)

    def _table(self, images: list[Image], problems: list[str]) -> Repository:
        files: dict[str, ServedFile] = {}
        served: list[Image] = []
        for image in images:
            why = _unservable(image)
            if why:
                problems.append(f"{image.relative}: {image.name} not served: {why}")
                continue
            path = image.path()
            if path in files:
                problems.append(f"{image.relative}: not served: {files[path].file.name} already takes {path}")
                continue
            served.append(image)
            _add(files, path, image)
        latest = set()
        for image in _latest(served):
            if image.path(LATEST) not in files:  # an unversioned image already took it
                _add(files, image.path(LATEST), image)
            latest.add(files[image.path(LATEST)].file)
        has_keys = False
        if self.keys is not None:
            try:
                st = os.stat(self.keys)
            except OSError as e:
                raise AcbuildError(f"--keys {self.keys}: {e.strerror}") from e
            files[KEYS_PATH] = ServedFile(Path(self.keys), "application/pgp-keys",
                                          (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            has_keys = True
        pages = {"/"}
        for image in served:
            parts = _name_path(image.name).split("/")
            pages |= {"/" + "/".join(parts[:end]) for end in range(1, len(parts) + 1) if parts[0]}
        for clash in sorted(pages & set(files)):
            problems.append(f"{clash}: both a discovery page and a file; the file is not served")
            files.pop(clash)
        return Repository(self.root, tuple(served), files, frozenset(pages), tuple(problems), has_keys,
                          frozenset(latest))


def _add(files: dict[str, ServedFile], path: str, image: Image) -> None:
    files[path] = ServedFile(image.file, "application/octet-stream", image.identity)
    if image.signature is not None:
        files[path + ".asc"] = image.signature


def _unservable(image: Image) -> str | None:
    for key in ("os", "arch"):
        if not image.label(key):
            return f"no {key} label (discovery needs name, version, os and arch)"
    for key in ("version", "os", "arch"):
        value = image.label(key)
        if value is not None and not _SEGMENT.match(value):
            return f"label {key}={value!r} cannot be part of a URL path"
    return None


def _latest(images: list[Image]) -> list[Image]:
    """For each (name, os, arch): the unversioned image, else the highest version."""
    best: dict[tuple[str, str, str], Image] = {}
    for image in images:
        key = (image.name, image.label("os") or "", image.label("arch") or "")
        if key not in best or _version_key(image) > _version_key(best[key]):
            best[key] = image
    return list(best.values())


def _version_key(image: Image) -> tuple:
    version = image.label("version")
    if version is None:
        return (3,)
    m = _SEMVER.match(version)
    if m:
        pre = m.group(4)
        # A release sorts above its pre-releases.
        return (2, int(m.group(1)), int(m.group(2)), int(m.group(3)), pre is None, pre or "")
    return (1, version)
