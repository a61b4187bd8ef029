"""Verified fetch: an image by name, URL or file, into the image store.

    fetcher = Fetcher(FetchOptions(store_dir=..., trust_dirs=..., discovery=...))
    image = fetcher.fetch("example.com/app:1.0")        # or "https://.../app.aci", "app.aci"
    image = fetcher.by_name(AppRequest.parse("example.com/base"), Pin(image_id=..., size=...))

The recipe for a name (`by_name`):
    stored          with --pull missing (the default) or never: the newest stored image with
                    that name and every requested label (an exact image ID when one is pinned)
    discover        appc meta discovery (acbuild.net.discovery), os/arch defaulting to the host
    download        the .aci into the store's temp area (resumed with Range after an interruption;
                    with --pull always a stored copy from the same URL is revalidated by ETag and
                    nothing is downloaded when it is unchanged), capped at the pinned size or the
                    configured limit; then the .asc
    verify          the signature against the keys trusted for the requested name, BEFORE the
                    archive is read; --insecure-skip-verify is the only way past, printed each time
    check           the manifest's name is the requested one, every requested label has the
                    requested value, a pinned image ID and size match
    store           into the content-addressed store (acbuild.store.images)
    dependencies    each dependency of the image, the same way, recursively

A URL or a file goes through the same download (for URLs), verify (keys trusted for the
manifest's name), check and store. So does `docker://REGISTRY/NAME[:TAG|@DIGEST]` when it
names an appc image pushed as an OCI artifact (`acbuild push`, acbuild.oci.artifact): its
.aci and .asc layers, byte for byte, digests checked as they stream. Any other image there
is a Docker/OCI image: it is converted (acbuild.oci.convert, as `acbuild convert` does)
and stored with no signer (it has none: the registry's digests are the check), so a
verifying fetch by name does not answer with it.

Contract: nothing unverified is stored or returned unless insecure_skip_verify (a
converted Docker/OCI image excepted, as said, and stored as unsigned); every refusal is an AcbuildError with its own message; temp
files are removed whatever happens (an interrupted download keeps its .part for resume).
Within one Fetcher each name is resolved once: a build that keys and then runs a FROM
asks the network once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from acbuild.errors import AcbuildError, ImageError, NotFoundError, SignatureError, UsageError
from acbuild.fetch import PULL_POLICIES
from acbuild.limits import max_image_size
from acbuild.net.discovery import AppRequest, DiscoveryOptions, discover
from acbuild.net.http import HttpStatusError, NetError, read_url
from acbuild.records import dataclass, field, replace
from acbuild.report import Reporter
from acbuild.store.images import SHORT_ID, ImageStore, StoredImage

SIGNATURE_LIMIT = 1 << 20
MAX_DEPTH = 64  # deeper than any real image; stops a dependency cycle


@dataclass(frozen=True)
class FetchOptions:
    store_dir: Path
    trust_dirs: tuple[Path, ...] = ()  # () = the default system + user roots
    insecure_skip_verify: bool = False
    pull: str = "missing"  # missing: ask discovery only when the store has no match; always; never
    max_size: int = field(default_factory=max_image_size)  # acbuild.limits: the image size limit
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    reporter: Reporter = field(default_factory=Reporter)  # what the user reads: notes, signers, progress
    # docker://: acbuild.oci.registry.RegistryOptions (default: discovery's TLS settings) and
    # acbuild.oci.manifests.Platform (default: this host's); untyped to keep oci out of start-up.
    registry: object | None = None
    platform: object | None = None


@dataclass(frozen=True)
class Pin:
    """What a dependency pins: its exact image ID and the .aci file's size in bytes."""

    image_id: str = ""
    size: int = 0
    by: str = field(default="", compare=False)  # the image that pins it, for messages


NO_PIN = Pin()


class Fetcher:
    def __init__(self, options: FetchOptions):
        from acbuild.fetch.download import Progress
        from acbuild.dirs import default_trust_dirs
        from acbuild.trust.store import TrustStore

        if options.pull not in PULL_POLICIES:
            raise UsageError(f"--pull {options.pull}: expected one of {', '.join(PULL_POLICIES)}")
        self.options = options
        self.reporter = options.reporter
        self.store = ImageStore(options.store_dir, options.reporter)
        self.trust = TrustStore(list(options.trust_dirs) or default_trust_dirs())
        self.progress = Progress(options.reporter)
        self._resolved: dict[tuple[AppRequest, Pin], StoredImage | AcbuildError] = {}
        self._depth = 0
        self._insecure_twin: Fetcher | None = None

    def skipping_verification(self) -> Fetcher:
        """The same store and settings, without signature checks (FROM --insecure-skip-verify)."""
        if self.options.insecure_skip_verify:
            return self
        if self._insecure_twin is None:
            self._insecure_twin = Fetcher(replace(self.options, insecure_skip_verify=True))
        return self._insecure_twin

    # -- entry points ----------------------------------------------------------------

    def fetch(self, what: str) -> StoredImage:
        """`acbuild fetch`'s argument: an http(s) URL, a docker:// reference, an existing
        file (or a *.aci path), else an image name."""
        if what.startswith(("http://", "https://")):
            return self.by_url(what)
        if what.startswith("docker://"):
            return self.by_docker(what)
        if Path(what).is_file() or what.endswith(".aci"):
            return self.by_file(Path(what))
        return self.by_name(AppRequest.parse(what))

    def by_name(self, app: AppRequest, pin: Pin = NO_PIN) -> StoredImage:
        """The stored image for `app` (and `pin`), fetched as the pull policy says."""
        key = (app, pin)
        if key not in self._resolved:
            try:
                self._resolved[key] = self._with_dependencies(self._resolve(app, pin))
            except AcbuildError as err:
                self._resolved[key] = err
        got = self._resolved[key]
        if isinstance(got, AcbuildError):
            raise got
        self.store.mark_used(got)
        return got

    def _with_dependencies(self, image: StoredImage) -> StoredImage:
        """`image`, once every one of its dependencies is in the store too (fetched by
        the same rules, recursively); records what they resolved to."""
        if not image.requires:
            return image
        if self._depth >= MAX_DEPTH:
            raise ImageError(f"dependencies of {image.name} nest deeper than {MAX_DEPTH} levels (a cycle?)")
        self._depth += 1
        try:
            ids = tuple(self.by_name(*dependency_request(dep, image.name)).image_id for dep in image.requires)
        finally:
            self._depth -= 1
        self.store.set_dependencies(image, ids)
        return image

    def by_url(self, url: str) -> StoredImage:
        return self._with_dependencies(self._download_and_take(None, NO_PIN, url, url + ".asc"))

    def by_file(self, path: Path) -> StoredImage:
        """Import a local .aci (and the .asc beside it): copied into the store's temp
        area first, so the bytes verified are the bytes stored."""
        from acbuild.trust.sign import signature_path

        if not path.is_file():
            raise NotFoundError(f"{path}: no such file")
        self.store.ensure()
        aci = self._temp_name(path.name)
        asc = None
        try:
            shutil.copyfile(path, aci)
            if signature_path(path).is_file():
                asc = signature_path(aci)
                shutil.copyfile(signature_path(path), asc)
            image = self._take(aci, asc, None, NO_PIN, {"file": str(path.absolute())}, str(path),
                               str(signature_path(path)))
        except OSError as err:
            raise ImageError(f"read {path}: {err.strerror}") from err
        finally:
            _remove(aci, asc)
        return self._with_dependencies(image)

    def by_docker(self, source: str) -> StoredImage:
        """An image in a Docker/OCI registry (see the module docstring)."""
        from acbuild.oci.artifact import artifact_reference, is_appc_artifact
        from acbuild.oci.registry import RegistryClient, RegistryOptions

        ref = artifact_reference(source)
        http = self.options.discovery.http
        options = self.options.registry or RegistryOptions(insecure=http.insecure, ca_file=http.ca_file,
                                                           timeout=http.timeout)
        self.store.ensure()
        with RegistryClient.for_reference(ref, options) as client:  # type: ignore[arg-type]
            data, _, digest = client.get_manifest(ref.repository, ref.reference)
            artifact = is_appc_artifact(data, source)
            if artifact:
                image = self._artifact(client, ref, data, digest, source)
        return self._with_dependencies(image) if artifact else self._converted(source, options)

    def _artifact(self, client, ref, data: bytes, digest: str, source: str) -> StoredImage:
        """The appc artifact `data` (its manifest) downloaded, verified and stored."""
        from acbuild.oci.artifact import download_artifact

        into = self._temp_name("artifact")
        into.mkdir()
        try:
            aci, asc = download_artifact(client, ref, data, into, source)
            origin = {"docker": source, "manifest-digest": digest}
            return self._take(aci, asc, None, NO_PIN, origin, source, f"{source} (its signature layer)")
        except OSError as err:
            raise ImageError(f"{source}: download into {into}: {err.strerror}") from err
        finally:
            shutil.rmtree(into, ignore_errors=True)

    def _converted(self, source: str, registry) -> StoredImage:
        """A Docker/OCI image converted into the store (no signature to verify)."""
        from acbuild.oci.convert import ConvertOptions, convert, open_source
        from acbuild.oci.reference import parse_source

        options = ConvertOptions(registry=registry, platform=self.options.platform,  # type: ignore[arg-type]
                                 reporter=self.reporter)
        opened = open_source(parse_source(source), options)
        aci = self._temp_name("converted.aci")
        try:
            convert(opened, aci, options)
            self.reporter.note(f"{source}: a Docker/OCI image, converted; it has no appc signature "
                               "(the registry's digests were checked)")
            origin = {"docker": source, "manifest-digest": opened.origin.manifest_digest}
            return self._store_checked(aci, None, None, NO_PIN, origin, source, signer="")
        finally:
            aci.unlink(missing_ok=True)

    # -- by name -----------------------------------------------------------------------

    def _resolve(self, app: AppRequest, pin: Pin) -> StoredImage:
        stored = self._stored(app, pin)
        if stored is not None:
            return stored
        if self.options.pull == "never":
            raise NotFoundError(f"{app}: not in the image store {self.store.root} (and --pull never)")
        found = discover(app.with_host_defaults(), self.options.discovery)
        endpoints = sorted(found.require_endpoints(), key=lambda e: not e.aci.startswith("https:"))
        failures: list[NetError] = []
        for endpoint in endpoints:  # a refusal is final; only a network failure tries the next one
            try:
                return self._download_and_take(app, pin, endpoint.aci, endpoint.asc)
            except NetError as err:
                failures.append(err)
        if len(failures) == 1:
            raise failures[0]
        raise NetError(str(app), "every endpoint failed:\n  " + "\n  ".join(e.message for e in failures))

    def _stored(self, app: AppRequest, pin: Pin) -> StoredImage | None:
        """The store's answer, when the pull policy lets it answer: an exact pinned ID
        always does (nothing upstream can be newer), a name unless --pull always. An
        image taken unverified does not count unless this fetch skips verification too."""
        if pin.image_id:
            image = self.store.get(pin.image_id)
        elif self.options.pull != "always":
            image = self.store.find(app.name, dict(app.labels))
        else:
            return None
        if image is None or (not image.signer and not self.options.insecure_skip_verify):
            return None
        if pin.image_id:
            self._check(app, pin, image.name, image.labels, image.image_id, image.size, image.describe())
        return image

    def _download_and_take(self, app: AppRequest | None, pin: Pin, aci_url: str, asc_url: str) -> StoredImage:
        from acbuild.fetch.download import download, url_lock

        limit = pin.size or self.options.max_size
        self.store.ensure()
        with url_lock(self.store.tmp, aci_url):  # one fetcher per URL at a time
            if app is not None:  # a concurrent fetch may have stored it meanwhile
                stored = self._stored(app, pin)
                if stored is not None:
                    return stored
            previous = self._revalidatable(aci_url)
            try:
                got = download(aci_url, self.store.tmp, self.options.discovery.http, limit=limit,
                               etag=previous.origin.get("etag") if previous else None, progress=self.progress)
            except NetError as err:
                if pin.size and "more than" in err.message:
                    raise ImageError(f"{err.message} (the size {pin.size} pinned by {pin.by or 'the request'})") from err
                raise
            except OSError as err:  # the store's temp area: full disk, permissions
                raise ImageError(f"{aci_url}: download into {self.store.tmp}: {err.strerror}") from err
            if got is None:  # 304: the stored copy is what the server has; it must still be what was asked
                self._check(app, pin, previous.name, previous.labels, previous.image_id, previous.size, aci_url)
                self.reporter.note(f"{aci_url}: unchanged, using the stored {previous.short_id}")
                return previous
            aci, etag = got
            asc = None
            try:
                asc = self._download_signature(asc_url, aci)
                origin = {"aci": aci_url, "asc": asc_url, "etag": etag}
                return self._take(aci, asc, app, pin, origin, aci_url, asc_url)
            finally:
                _remove(aci, asc)

    def _revalidatable(self, aci_url: str) -> StoredImage | None:
        """With --pull always: the newest intact stored image downloaded from `aci_url`
        with an ETag, to ask the server whether it changed."""
        if self.options.pull != "always":
            return None
        candidates = [i for i in self.store.list() if i.origin.get("aci") == aci_url and i.origin.get("etag")]
        for image in sorted(candidates, key=lambda i: i.imported, reverse=True):
            checked = self.store.get(image.image_id)
            if checked is not None and (checked.signer or self.options.insecure_skip_verify):
                return checked
        return None

    def _download_signature(self, asc_url: str, aci: Path) -> Path | None:
        from acbuild.atomic import write_atomic
        from acbuild.trust.sign import signature_path

        try:
            data = read_url(asc_url, self.options.discovery.http, limit=SIGNATURE_LIMIT)
        except HttpStatusError as err:
            if err.status in (404, 410):
                return None  # _take refuses it unless --insecure-skip-verify
            raise
        asc = signature_path(aci)
        write_atomic(asc, data, mode=0o600)
        return asc

    # -- verify, check, store ---------------------------------------------------------------

    def _take(self, aci: Path, asc: Path | None, app: AppRequest | None, pin: Pin, origin: dict,
              shown: str, shown_asc: str) -> StoredImage:
        """Verify and check the downloaded `aci`, then store it."""
        signer = self._verify(aci, asc, app.name if app else None, shown, shown_asc)
        return self._store_checked(aci, asc, app, pin, origin, shown, signer)

    def _store_checked(self, aci: Path, asc: Path | None, app: AppRequest | None, pin: Pin, origin: dict,
                       shown: str, signer: str) -> StoredImage:
        """Check `aci` (layout, manifest, what was asked for) and store it, as verified by `signer`."""
        from acbuild.aci.archive import read_aci
        from acbuild.aci.manifest import ImageManifest
        from acbuild.errors import ManifestError

        try:
            contents = read_aci(aci)
            if contents.problems:
                raise ImageError(f"not a valid image: {contents.problems[0]}", path=shown)
            manifest = ImageManifest.from_json(contents.manifest_bytes or b"null")
        except ImageError as err:
            raise err.at_path(shown) from err
        except ManifestError as err:
            raise ImageError(err.message, path=shown) from err
        labels = {label.name: label.value for label in manifest.labels}
        self._check(app, pin, manifest.name, labels, contents.image_id, aci.stat().st_size, shown)
        requires = tuple({"name": d.image_name, "labels": {label.name: label.value for label in d.labels},
                          "image-id": d.image_id or "", "size": d.size or 0} for d in manifest.dependencies)
        image = self.store.add(aci, asc, image_id=contents.image_id, name=manifest.name, labels=labels,
                               origin=origin, requires=requires, signer=signer)
        self.reporter.info(f"stored {image.describe()}")
        return image

    def _verify(self, aci: Path, asc: Path | None, name: str | None, shown: str, shown_asc: str) -> str:
        """The signature check: for a name, the keys trusted for that name (the manifest
        must then carry it); for a URL or file, the keys trusted for the manifest's name."""
        from acbuild.trust.verify import name_for_verification, verify_image

        if self.options.insecure_skip_verify:
            self.reporter.alert(f"NOT verifying the signature of {shown} (--insecure-skip-verify)")
            return ""
        skip = " (--insecure-skip-verify skips this check)"
        if asc is None:
            raise SignatureError(f"{shown}: no signature: {shown_asc} does not exist; images are fetched only "
                                 f"when signed by a trusted key{skip}")
        try:
            if name is None:
                name = name_for_verification(aci, asc, self.trust)
            signer = verify_image(aci, asc, name, self.trust)
        except (SignatureError, ImageError) as err:  # they name the temp file: name the URL or file instead
            suffix = skip if isinstance(err, SignatureError) else ""
            if err.path is None:
                raise type(err)(err.message + suffix) from err
            raise type(err)(err.detail + suffix, path=shown) from err
        self.reporter.info(f"signature verified: {signer.uid} ({signer.fingerprint})")
        return str(signer)

    def _check(self, app: AppRequest | None, pin: Pin, name: str, labels: dict[str, str], image_id: str,
               size: int, shown: str) -> None:
        """The image is what was asked for: name, labels, pinned ID and size."""
        if app is not None and name != app.name:
            raise ImageError(f"{shown}: the image is named {name}, not {app.name} as requested")
        for key, value in app.labels if app is not None else ():
            if labels.get(key) != value:
                have = f"{key}={labels[key]}" if key in labels else f"no {key} label"
                raise ImageError(f"{shown}: the image has {have}, not {key}={value} as requested")
        by = f" pinned by {pin.by}" if pin.by else " pinned"
        if pin.image_id and image_id != pin.image_id:
            raise ImageError(f"{shown}: image ID {image_id[:SHORT_ID]}... does not match the ID "
                             f"{pin.image_id[:SHORT_ID]}...{by}")
        if pin.size and size != pin.size:
            raise ImageError(f"{shown}: the image is {size} bytes, not the size {pin.size}{by}")

    # -- small things -------------------------------------------------------------------

    def _temp_name(self, name: str) -> Path:
        return self.store.tmp / f"import-{os.getpid()}-{id(self)}-{name}"


def dependency_request(dep: dict, parent: str) -> tuple[AppRequest, Pin]:
    """A dependency as the store records it ({"name", "labels", "image-id", "size"}):
    the request and its pin."""
    return AppRequest.make(dep["name"], dep["labels"]), Pin(dep["image-id"], dep["size"], parent)


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
