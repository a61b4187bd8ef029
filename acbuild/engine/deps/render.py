"""Dependency rendering, the appc way (pkg/acirenderer), from local .aci files and the
image store.

Resolution: a dependency with an imageID is the .aci whose image ID (sha512 of the
uncompressed tar) is exactly that; without one, the first .aci (search-path order, then
file name) whose manifest has the dependency's name and every one of its labels. The
search path is BuildOptions.image_dirs (`acbuild build --image-dir DIR`, repeatable),
by default the build context. When it has no match, the image store answers through
BuildOptions.fetcher (acbuild.fetch: the stored image, else discovered, fetched and
verified, as --pull says); an image from the store must be signed.

Order: the image and its dependencies are flattened as acirenderer does (the image at
level 0, each dependency inserted right after its parent: A -> [B, C], C -> [D] gives
[A, C, D, B]) and rendered first-provider-wins, which is "depth-first in listed order,
the image itself last, later layers win" (B, D, C, A). An entry is skipped when a parent
path was provided as a non-directory, so a lower layer's symlink-to-directory is
replaced, never followed. pathWhitelist: an image's own whitelist drops its own
non-directory entries outside it; the top-most whitelist above an image (found by
walking back through the flattened list, as acirenderer does) filters all of that
image's entries, directories included. There are no whiteouts in ACI.

Trust: every dependency's stream must hash to the image ID its parent pins, and its
signature follows the FROM policy (trust.policy: an IMAGE.aci.asc beside it must
verify; --require-signatures needs one; --insecure-skip-verify skips, loudly). Go
acbuild never verified the dependencies it rendered.

FROM a layered image renders its dependencies below it and then drops `dependencies`
and `pathWhitelist` from the manifest: the build starts from a flattened image, as
docker2aci's squash does.
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.aci import manifest as m
from acbuild.errors import AcbuildError, BuildError, SourcePos
from acbuild.records import dataclass

_MAX_DEPTH = 64  # deeper than any real image; stops a dependency cycle


@dataclass(frozen=True)
class Layer:
    """One image of the flattened list: level 0 is the image being rendered."""

    aci: Path | None  # None for the image itself when its files are already in place
    image_id: str
    manifest: m.ImageManifest
    level: int
    by_name: bool = False  # the image store's copy, fetched by name: it must be signed


class ImageIndex:
    """The .aci files of the search path, then the image store (through `fetcher`,
    acbuild.fetch: stored, else discovered and fetched); manifests and image IDs read
    once, lazily."""

    def __init__(self, dirs: tuple[Path, ...], fetcher=None):
        self.dirs = tuple(dict.fromkeys(Path(d) for d in dirs))
        self.fetcher = fetcher
        self.stored: set[Path] = set()  # what came from the store
        self._files: list[Path] | None = None
        self._manifests: dict[Path, m.ImageManifest | None] = {}
        self._ids: dict[Path, str] = {}

    def files(self) -> list[Path]:
        if self._files is None:
            self._files = [f for d in self.dirs if d.is_dir() for f in sorted(d.glob("*.aci")) if f.is_file()]
        return self._files

    def manifest(self, aci: Path) -> m.ImageManifest | None:
        """The manifest of `aci`, None when it is not a readable image (it is skipped)."""
        if aci not in self._manifests:
            from acbuild.aci.archive import read_aci

            try:
                data = read_aci(aci).manifest_bytes
                self._manifests[aci] = m.ImageManifest.from_json(data) if data else None
            except AcbuildError:
                self._manifests[aci] = None
        return self._manifests[aci]

    def image_id(self, aci: Path) -> str:
        if aci not in self._ids:
            from acbuild.aci.archive import image_id_of

            self._ids[aci] = image_id_of(aci)
        return self._ids[aci]

    def find(self, dep: m.Dependency) -> Path | None:
        for aci in self.files():
            if dep.image_id:
                if self.image_id(aci) == dep.image_id:
                    return aci
                continue
            man = self.manifest(aci)
            if man is not None and man.name == dep.image_name and _has_labels(man, dep.labels):
                return aci
        return self.fetch(dep)

    def fetch(self, dep: m.Dependency) -> Path | None:
        if self.fetcher is None:
            return None
        from acbuild.net.discovery import AppRequest
        from acbuild.fetch.fetcher import Pin

        app = AppRequest.make(dep.image_name, {label.name: label.value for label in dep.labels})
        image = self.fetcher.by_name(app, Pin(dep.image_id or "", dep.size or 0))
        self.stored.add(image.aci)
        self._ids[image.aci] = image.image_id  # checked when it was stored, and again on extraction
        return image.aci


def _has_labels(manifest: m.ImageManifest, wanted: list[m.Label]) -> bool:
    return all(manifest.label(label.name) == label.value for label in wanted)


# --- the flattened list ------------------------------------------------------------------------


def flatten(top: m.ImageManifest, index: ImageIndex, pos: SourcePos | None, *, top_aci: Path | None = None,
            top_id: str = "") -> list[Layer]:
    """acirenderer's list: the image, then each dependency right after its parent."""
    layers = [Layer(top_aci, top_id, top, 0)]
    i = 0
    while i < len(layers):
        parent = layers[i]
        if parent.level >= _MAX_DEPTH:
            raise BuildError(f"dependencies of {top.name} nest deeper than {_MAX_DEPTH} levels (a cycle?)", pos)
        for dep in parent.manifest.dependencies:  # each one inserted right after the parent
            try:
                aci = index.find(dep)
            except AcbuildError as err:  # not in the search path, and fetching it by name failed or was refused
                text = _not_found(dep, parent.manifest, index).removesuffix(" (add --image-dir DIR)")
                raise BuildError(f"{text}; by name: {err.message}", pos) from err
            if aci is None:
                raise BuildError(_not_found(dep, parent.manifest, index), pos)
            man = index.manifest(aci)
            if man is None:
                raise BuildError(f"dependency {_describe(dep)}: {aci} is not a valid image", pos)
            layers.insert(i + 1, Layer(aci, index.image_id(aci), man, parent.level + 1, aci in index.stored))
        i += 1
    return layers


def _not_found(dep: m.Dependency, parent: m.ImageManifest, index: ImageIndex) -> str:
    where = ", ".join(str(d) for d in index.dirs)
    text = f"dependency {_describe(dep)} of {parent.name}: not found in {where}"
    if dep.image_id:  # say so when only the pin is wrong
        named = [(a, index.image_id(a)) for a in index.files() if (mf := index.manifest(a)) and mf.name == dep.image_name]
        if named:
            return text + "; the pinned image ID does not match " + ", ".join(f"{a} ({i[:19]}...)" for a, i in named)
    return text + " (add --image-dir DIR)"


def _describe(dep: m.Dependency) -> str:
    text = dep.image_name + "".join(f",{label.name}={label.value}" for label in dep.labels)
    return text + (f" (image ID {dep.image_id[:19]}...)" if dep.image_id else "")


def upper_whitelist(layers: list[Layer], pos: int) -> set[str] | None:
    """acirenderer's getUpperPWLM: walking back from `pos`, each time the level drops take
    that image's whitelist if it has one; the last found (the top-most) wins."""
    found: set[str] | None = None
    level = layers[pos].level
    for layer in reversed(layers[: pos + 1]):
        if layer.level < level and layer.manifest.path_whitelist:
            found = {"rootfs" + path for path in layer.manifest.path_whitelist}
        level = layer.level
    return found


# --- rendering ---------------------------------------------------------------------------------


class Provided:
    """acirenderer's allFiles: archive name ("rootfs/...") -> is it a directory."""

    def __init__(self) -> None:
        self.is_dir: dict[str, bool] = {"rootfs": True}

    def take(self, name: str, is_dir: bool, own: set[str] | None, upper: set[str] | None) -> bool:
        """Should this entry of the current image be written? Records it when so."""
        if not is_dir and own is not None and name not in own:
            return False
        if upper is not None and name not in upper:
            return False
        if name in self.is_dir:
            return False
        parent = os.path.dirname(name)
        while parent and parent != "rootfs":
            if self.is_dir.get(parent, True) is False:
                return False
            parent = os.path.dirname(parent)
        self.is_dir[name] = is_dir
        return True


def provided_from_tree(rootfs: Path, own_whitelist: list[str]) -> Provided:
    """The entries already in `rootfs` (the image itself, extracted whole), after its own
    whitelist removed its non-directory entries outside the list."""
    keep = {"rootfs" + path for path in own_whitelist} if own_whitelist else None
    provided = Provided()
    for top, dirs, files in os.walk(rootfs):
        rel = "rootfs" + ("/" + os.path.relpath(top, rootfs) if top != str(rootfs) else "")
        for d in list(dirs):
            if os.path.islink(os.path.join(top, d)):  # a symlink, not a directory
                dirs.remove(d)
                files.append(d)
            else:
                provided.is_dir[f"{rel}/{d}"] = True
        for f in files:
            name = f"{rel}/{f}"
            if keep is not None and name not in keep:
                os.unlink(os.path.join(top, f))
            else:
                provided.is_dir[name] = False
    return provided


def render_layers(layers: list[Layer], rootfs: Path, provided: Provided, options, pos: SourcePos | None) -> None:
    """Extract layers[1:] into rootfs, first provider wins (layers[0] is already there)."""
    from acbuild.aci.extract import extract_rootfs

    for i, layer in enumerate(layers):
        if i == 0 and layer.aci is None:
            continue
        assert layer.aci is not None
        own = {"rootfs" + path for path in layer.manifest.path_whitelist} if layer.manifest.path_whitelist else None
        upper = upper_whitelist(layers, i)

        def keep(name: str, is_dir: bool, own=own, upper=upper) -> bool:
            return provided.take(name, is_dir, own, upper)

        with verified_dependency(layer, options, pos) as source:  # the very bytes that were verified
            try:
                got = extract_rootfs(source, rootfs, path_filter=keep)
            except AcbuildError as err:
                raise BuildError(f"dependency {layer.manifest.name}: {err.at_path(layer.aci).message}", pos) from err
        if got.image_id != layer.image_id:
            raise BuildError(f"dependency {layer.manifest.name} ({layer.aci}): image ID {got.image_id} "
                             f"does not match the pinned {layer.image_id}", pos)


def verified_dependency(layer: Layer, options, pos: SourcePos | None):
    """The FROM signature policy, applied to a dependency (Go acbuild never checked
    them): a context manager giving the file to extract, as engine.verify_base.verified."""
    from acbuild.trust.policy import verified

    return verified(layer.aci, f"dependency {layer.manifest.name} ({layer.aci})", insecure=options.insecure_skip_verify,
                    require=options.require_signatures or layer.by_name, trust_dirs=options.trust_dirs,
                    reporter=options.reporter, pos=pos)


def render_dependencies(manifest: m.ImageManifest, rootfs: Path, options, pos: SourcePos | None) -> None:
    """Render `manifest`'s dependencies below the image files already in `rootfs`, then
    drop `dependencies` and `pathWhitelist` from the manifest (the image is flat now)."""
    index = image_index(options)
    layers = flatten(manifest, index, pos)
    provided = provided_from_tree(rootfs, manifest.path_whitelist)
    render_layers(layers, rootfs, provided, options, pos)
    manifest.dependencies = []
    manifest.path_whitelist = []


def render_into(dependencies: list[m.Dependency], target: Path, options, pos: SourcePos | None) -> None:
    """Render a dependency list alone (no image on top) into the empty dir `target`."""
    index = image_index(options)
    virtual = m.ImageManifest(name="acbuild-dependencies", dependencies=list(dependencies))
    layers = flatten(virtual, index, pos)
    render_layers(layers, target, Provided(), options, pos)


def image_index(options) -> ImageIndex:
    """--image-dir DIR... (default: the build context), then the image store."""
    dirs = tuple(getattr(options, "image_dirs", ()) or ()) or (Path(options.context),)
    return ImageIndex(dirs, getattr(options, "fetcher", None))
