"""Session: the only executor. It applies one instruction at a time to a work
directory holding `rootfs/` and `manifest`, and writes the image.

`acbuild build` drives a Session per stage through a Plan; the interactive verbs
(`acbuild begin/copy/run/...`) open the Session saved in `.acbuild/` and apply one
instruction each. Contract: `apply` leaves the work dir consistent after each
successful instruction (the manifest is saved by `save()`, atomically); a failed
instruction may leave the rootfs half-changed, and the caller decides whether to
throw the work dir away (build) or keep it (interactive, as Go acbuild did).
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path

from acbuild import plan as p
from acbuild.aci import manifest as m
from acbuild.aci.types import host_os_arch
from acbuild.atomic import write_atomic
from acbuild.engine.deps.overlay import copy_up
from acbuild.engine.execute.layer import recording_under
from acbuild.engine.execute.copy import CopyAttrs, copy_into_rootfs, make_dirs
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.engine.execute.users import resolve_group, resolve_user
from acbuild.errors import BuildError, ImageError, ManifestError, NotFoundError, OutputExistsError, PlanError
from acbuild.files import copy_tree, file_clock_ns, stamp_written_since
from acbuild.limits import DEFAULT_TMPFS_SIZE
from acbuild.records import dataclass, field, replace
from acbuild.report import Reporter
from acbuild.userns import OwnerError, host_owner_for, owner_for

UNNAMED = "acbuild-unnamed"
# Where a Dockerfile's ENTRYPOINT and CMD are kept (docker2aci's annotations).
DOCKER_ENTRYPOINT = "appc.io/docker/entrypoint"
DOCKER_CMD = "appc.io/docker/cmd"


@dataclass(frozen=True)
class BuildOptions:
    """Settings that hold for every instruction of a build or session."""

    context: Path = Path(".")
    source_date_epoch: int = 0
    network: str = "none"  # default for RUN: "none" or "host"
    insecure_skip_verify: bool = False
    require_signatures: bool = False
    trust_dirs: tuple[Path, ...] = ()
    cache_dir: Path | None = None  # RUN --mount=type=cache roots live here
    debug: bool = False
    ignore: object = None  # callable(relpath) -> bool for COPY from the context
    stage_rootfs: dict = field(default_factory=dict)  # stage name -> rootfs Path (COPY --from)
    reporter: Reporter = field(default_factory=Reporter)  # notices and warnings go here, never to print
    image_dirs: tuple[Path, ...] = ()  # dependency .aci search path (engine.deps.render); () = the context
    tmpfs_size: int = DEFAULT_TMPFS_SIZE  # RUN's /tmp, /run and /dev/shm, each (--tmpfs-size)
    # RUN --mount=type=secret: id -> content (read by the CLI from --secret; never in a key or the image)
    secrets: dict = field(default_factory=dict, repr=False)
    ssh: dict = field(default_factory=dict)  # RUN --mount=type=ssh: id -> agent socket path (--ssh)
    registry: object = None  # acbuild.oci.registry.RegistryOptions for FROM docker://... (None = defaults)
    platform: object = None  # acbuild.oci.manifests.Platform to pick from an index (None = the host's)
    fetcher: object = None  # acbuild.fetch.Fetcher: images by name (FROM NAME, dependencies); None = local only


def default_manifest(platform=None) -> m.ImageManifest:
    """Go acbuild's `begin` with no base: unnamed, with the host's os and arch (or
    those of `platform`, an oci.manifests.Platform: FROM --platform=P scratch)."""
    if platform is None:
        os_name, arch = host_os_arch()
    else:
        from acbuild.oci.toaci import os_arch

        os_name, arch = os_arch({"os": platform.os, "architecture": platform.architecture, "variant": platform.variant})
    return m.ImageManifest(name=UNNAMED, labels=[m.Label("arch", arch), m.Label("os", os_name)])


def _stamps_what_it_writes(handler):
    """For the handlers that write files: Session.stamp_written_since after them."""

    @functools.wraps(handler)
    def stamping(self, instruction):
        started = file_clock_ns()
        handler(self, instruction)
        self.stamp_written_since(started)

    return stamping


class Session:
    def __init__(self, workdir: Path, manifest: m.ImageManifest, options: BuildOptions):
        self.workdir = workdir
        self.rootfs = workdir / "rootfs"
        self.manifest = manifest
        self.options = options
        self.rootless = os.geteuid() != 0  # IdSpace.SINGLE: files are the user's, 0 in the image
        self.copied: dict[str, str] = {}  # the last context COPY: host path -> sha256 of the bytes copied
        # What `copied` is made as for each context COPY: the driver gives a checker that
        # compares each digest with the key's as it comes, so no table of every file is kept.
        self.copy_record = dict
        # The rootfs's files are hard links into the step cache: nothing may write into them
        # in place (engine.execute.layer; a RUN without overlayfs copies them first).
        self.shares_inodes = False
        self.last_layer = None  # engine.execute.layer.Layer: what the last step changed, when it knows
        self.records_layers = False  # COPY/ADD/WORKDIR note their layer (the driver, when it stores them)

    # -- life cycle -------------------------------------------------------------

    @classmethod
    def begin(cls, workdir: Path, base: p.From, options: BuildOptions) -> Session:
        """Start from scratch, a local .aci or a rootfs directory (interactive)."""
        started = file_clock_ns()
        workdir.mkdir(parents=True, exist_ok=True)
        rootfs = workdir / "rootfs"
        if base.base == "scratch":
            rootfs.mkdir()
            os.chmod(rootfs, 0o755)  # not the caller's umask: the image must not depend on it
            manifest = default_manifest(stage_options(base, options).platform)
        else:
            manifest = _start_from_base(base, rootfs, stage_options(base, options))
        session = cls(workdir, manifest, options)
        session.stamp_written_since(started)
        session.save()
        return session

    @classmethod
    def open(cls, workdir: Path, options: BuildOptions) -> Session:
        try:
            data = (workdir / "manifest").read_bytes()
        except FileNotFoundError:
            raise NotFoundError("no build in progress here; run acbuild begin") from None
        return cls(workdir, m.ImageManifest.from_json(data), options)

    def save(self) -> None:
        """Write the manifest state atomically (temp + fsync + rename)."""
        write_atomic(self.workdir / "manifest", self.manifest.to_json())

    # -- instructions -------------------------------------------------------------

    @functools.singledispatchmethod
    def apply(self, instruction: p.Instruction) -> None:
        """Carry out one instruction; each kind has its handler below, registered by type."""
        raise PlanError(f"{instruction.keyword} cannot be applied here", instruction.pos)

    def stamp_written_since(self, started_ns: int) -> None:
        """An epoch later than now: what this step wrote gets exactly the epoch (the
        writer's clamp, min(mtime, epoch), would keep today's time). An earlier
        epoch needs no walk: the clamp already maps everything new to it."""
        epoch = self.options.source_date_epoch
        if epoch * 1_000_000_000 >= started_ns:
            stamp_written_since(self.rootfs, started_ns, epoch)

    def _app(self) -> m.App:
        return self.manifest.ensure_app()

    @apply.register
    def _setname(self, i: p.SetName) -> None:
        self.manifest.name = i.name

    @apply.register
    def _label(self, i: p.Label) -> None:
        for name, value in i.items:
            self.manifest.set_label(name, value)

    @apply.register
    def _annotation(self, i: p.Annotation) -> None:
        for name, value in i.items:
            self.manifest.set_annotation(name, value)

    @apply.register
    def _env(self, i: p.Env) -> None:
        for name, value in i.items:
            self._app().set_env(name, value)

    @apply.register
    def _exec(self, i: p.Exec) -> None:
        self._app().exec = list(i.argv)

    @apply.register
    @_stamps_what_it_writes
    def _workdir(self, i: p.WorkDir) -> None:
        # As in a Dockerfile, WORKDIR creates the directory for later steps.
        self._app().working_directory = i.path
        attrs = CopyAttrs(mtime=self.options.source_date_epoch, chown_allowed=not self.rootless)
        path = copy_up(self, i.path, i.pos)
        with self._recording(path):
            make_dirs(self.rootfs, resolve_in_root(self.rootfs, path), attrs)

    @contextmanager
    def _recording(self, dest: str):
        """Note what a step writing at and below `dest` changed, as its layer (the step
        cache stores only that); not with DEPENDENCY, whose steps may render deps/ too."""
        if not self.records_layers or (self.workdir / "deps.json").exists():
            yield
            return
        with recording_under(self.rootfs, dest) as layer:
            yield
        self.last_layer = layer

    @apply.register
    def _user(self, i: p.User) -> None:
        self._app().user = i.user
        if i.group is not None:  # Docker's USER: the group given, else the user's primary group
            try:
                group = i.group or str(resolve_user(self.rootfs, i.user)[1])
            except BuildError:  # a name the image does not know (yet): as Docker, group 0
                group = "0"
            self._app().group = group

    @apply.register
    def _entrypoint(self, i: p.Entrypoint) -> None:
        self.manifest.set_annotation(DOCKER_ENTRYPOINT, json.dumps(list(i.argv), separators=(",", ":")))
        if i.reset_cmd:
            self.manifest.remove_annotation(DOCKER_CMD)
        self._docker_exec()

    @apply.register
    def _cmd(self, i: p.Cmd) -> None:
        self.manifest.set_annotation(DOCKER_CMD, json.dumps(list(i.argv), separators=(",", ":")))
        self._docker_exec()

    def _docker_exec(self) -> None:
        """exec = ENTRYPOINT + CMD, as Docker runs them (docker2aci's mapping)."""
        notes = {a.name: a.value for a in self.manifest.annotations}
        argv = [*json.loads(notes.get(DOCKER_ENTRYPOINT, "[]")), *json.loads(notes.get(DOCKER_CMD, "[]"))]
        self._app().exec = argv

    @apply.register
    def _group(self, i: p.Group) -> None:
        self._app().group = i.group

    @apply.register
    def _supplementarygroups(self, i: p.SupplementaryGroups) -> None:
        self._app().supplementary_gids = list(i.gids)

    @apply.register
    def _port(self, i: p.Port) -> None:
        self._app().set_port(m.Port(i.name, i.protocol, i.port, i.count, i.socket_activated))

    @apply.register
    def _mountpoint(self, i: p.MountPoint) -> None:
        self._app().set_mount_point(m.MountPoint(i.name, i.path, i.read_only))

    @apply.register
    def _isolator(self, i: p.Isolator) -> None:
        self._app().isolators.append(m.Isolator(i.name, json.loads(i.value_json)))

    @apply.register
    def _eventhandler(self, i: p.EventHandler) -> None:
        self._app().set_event_handler(i.event, list(i.argv))

    @apply.register
    def _dependency(self, i: p.Dependency) -> None:
        labels = [m.Label(k, v) for k, v in i.labels]
        self.manifest.set_dependency(m.Dependency(i.image_name, i.image_id, labels, i.size))

    @apply.register
    def _pathwhitelist(self, i: p.PathWhitelist) -> None:
        self.manifest.path_whitelist = sorted(set(self.manifest.path_whitelist) | set(i.paths))

    @apply.register
    def _replacemanifest(self, i: p.ReplaceManifest) -> None:
        try:
            self.manifest = m.ImageManifest.from_json(i.manifest_json)
        except ManifestError as err:
            raise ManifestError(f"MANIFEST: {err.message}", err.problems, i.pos) from err

    @apply.register
    def _remove(self, i: p.Remove) -> None:
        app = self.manifest.app
        removers = {
            "LABEL": lambda: self.manifest.remove_label(i.name),
            "ANNOTATION": lambda: self.manifest.remove_annotation(i.name),
            "DEPENDENCY": lambda: self.manifest.remove_dependency(i.name),
            "ENV": lambda: app is not None and app.remove_env(i.name),
            "PORT": lambda: app is not None and app.remove_port(i.name),
            "MOUNT": lambda: app is not None and app.remove_mount_point(i.name),
            "ISOLATOR": lambda: app is not None and app.remove_isolator(i.name),
            "EVENT": lambda: app is not None and app.remove_event_handler(i.name),
            "EXEC": lambda: self._clear_exec(),
        }
        if not removers[i.what]():
            raise NotFoundError(f'{i.what.lower()} "{i.name}" is not set', i.pos)

    def _clear_exec(self) -> bool:
        if self.manifest.app is None or not self.manifest.app.exec:
            return False
        self.manifest.app.exec = []
        return True

    @apply.register
    @_stamps_what_it_writes
    def _copy(self, i: p.Copy) -> None:
        uid, gid = self._owner(i.chown, i)
        attrs = CopyAttrs(uid=uid, gid=gid, chmod=i.chmod, mtime=self.options.source_date_epoch, chown_allowed=not self.rootless)
        dest = i.dest
        if not dest.startswith("/"):
            base = (self.manifest.app.working_directory if self.manifest.app else "") or "/"
            dest = base.rstrip("/") + "/" + dest
        dest = copy_up(self, dest, i.pos)  # into dependency paths (engine.layers)
        with self._recording(dest):
            self._copy_to(i, dest, attrs)

    def _copy_to(self, i: p.Copy, dest: str, attrs: CopyAttrs) -> None:
        how = dict(exclude=_exclude_rules(i), parents=i.parents)  # --exclude, --parents
        if i.inline:
            self._copy_inline(i, dest, attrs)
        elif i.from_stage:
            source_root = self.options.stage_rootfs.get(i.from_stage)
            if source_root is None:
                raise BuildError(f'COPY --from: stage "{i.from_stage}" was not built', i.pos)
            copy_into_rootfs(source_root, i.sources, self.rootfs, dest, attrs, i.pos, source_in_rootfs=True,
                             reporter=self.options.reporter, **how)
        elif isinstance(i, p.Add):  # ADD (a Copy, so it comes here) also unpacks and downloads
            self._add_sources(i, dest, attrs)
        else:
            self.copied = self.copy_record()
            copy_into_rootfs(self.options.context, i.sources, self.rootfs, dest, attrs, i.pos, ignore=self.options.ignore,
                             digests=self.copied, reporter=self.options.reporter, **how)

    def _copy_inline(self, i: p.Copy, dest: str, attrs: CopyAttrs) -> None:
        """COPY <<EOF DEST: each heredoc becomes a file named after its delimiter."""
        import tempfile

        texts = dict(i.inline)
        with tempfile.TemporaryDirectory(prefix="acbuild-heredoc-") as tmp:
            for name in i.sources:
                if name in texts:
                    (Path(tmp) / name).write_text(texts[name])
            copy_into_rootfs(Path(tmp), i.sources, self.rootfs, dest, attrs, i.pos)

    def _add_sources(self, i: p.Add, dest: str, attrs: CopyAttrs) -> None:
        from acbuild.aci.archive import is_tar_archive
        from acbuild.aci.extract import extract_rootfs
        from acbuild.engine.execute.copy import select_sources

        urls = [src for src in i.sources if "://" in src]
        if urls:
            self._add_urls(i, urls, dest, attrs)
        local = tuple(src for src in i.sources if "://" not in src)
        if not local:
            return
        matches = select_sources(self.options.context, local, i.pos, ignore=self.options.ignore)
        archives = [rel for rel, host, st in matches if host.is_file() and is_tar_archive(host)]
        plain = tuple(rel for rel, _, _ in matches if rel not in archives)
        if plain:
            copy_into_rootfs(self.options.context, plain, self.rootfs, dest if len(matches) == 1 else dest.rstrip("/") + "/",
                             attrs, i.pos, ignore=self.options.ignore, exclude=_exclude_rules(i))
        for rel in archives:
            target = resolve_in_root(self.rootfs, dest)
            make_dirs(self.rootfs, target, attrs)
            try:  # the archive's owners as far as kept (userns.owner_for); mtimes are clamped when written
                extract_rootfs(self.options.context / rel, target, tarball=True)
            except (ImageError, OwnerError) as err:
                raise BuildError(f"ADD {rel}: {err.message}", i.pos) from err

    def _add_urls(self, i: p.Add, urls: list[str], dest: str, attrs: CopyAttrs) -> None:
        """ADD URL: downloaded (never unpacked), mode 0600 unless --chmod, as Docker does."""
        import tempfile

        from acbuild.engine.execute.download import download

        if len(i.sources) > 1 and not dest.endswith("/"):
            raise BuildError(f'ADD: with several sources the destination must be a directory ending in "/" (got "{dest}")', i.pos)
        with tempfile.TemporaryDirectory(prefix="acbuild-add-") as tmp:
            for url in urls:
                fetched = download(url, i.checksum, Path(tmp), self.options.network, i.pos)
                copy_into_rootfs(Path(tmp), (fetched.name,), self.rootfs, dest,
                                 replace(attrs, chmod=0o600 if attrs.chmod is None else attrs.chmod), i.pos)
                fetched.unlink()

    def _owner(self, chown: str, i: p.Instruction) -> tuple[int, int]:
        if not chown:
            return 0, 0
        user, _, group = chown.partition(":")
        try:
            uid, primary_gid = resolve_user(self.rootfs, user)
            gid = resolve_group(self.rootfs, group) if group else primary_gid
        except BuildError as err:
            raise BuildError(f"COPY --chown: {err.message}", i.pos) from None
        try:  # the one rule for which owners a rootless build can keep
            owner_for(uid, gid, f"COPY --chown={chown}")
        except OwnerError as err:
            raise BuildError(err.message, i.pos) from None
        return uid, gid

    @apply.register
    @_stamps_what_it_writes
    def _run(self, i: p.Run) -> None:
        from acbuild.engine.execute.run_step import run_step

        run_step(self, i)

    # -- output -----------------------------------------------------------------

    def check_manifest(self) -> None:
        if self.manifest.name == UNNAMED:
            raise ManifestError("the image has no name: add NAME example.com/app (or acbuild set-name)")
        problems = self.manifest.problems(strict=True)
        if problems:
            raise ManifestError("the image manifest is invalid:\n  " + "\n  ".join(problems), problems)

    def write(self, out: Path, *, compression: str = "gzip", overwrite: bool = True, signing=None) -> str:
        """Validate the manifest and write the .aci; returns the image ID.

        The image is written to a temp file beside `out`, signed when `signing`
        (acbuild.trust.sign.SigningOptions) is given, then the image and its signature
        replace the old ones together (acbuild.trust.sign.publish): never a fresh .aci
        beside a stale .asc, never a partial file."""
        from acbuild.aci.writer import check_output_path, write_aci
        from acbuild.engine.deps.overlay import output_tree
        from acbuild.trust.sign import publish

        check_output_path(out)
        if out.exists() and not overwrite:
            raise OutputExistsError(out)
        self.check_manifest()
        if self.manifest.app is not None and not self.manifest.app.exec:
            self.options.reporter.warning("the image has no exec; it can only be a dependency")
        id_map = {os.geteuid(): 0, os.getegid(): 0} if self.rootless else None
        with output_tree(self) as (rootfs, manifest_json):  # only what this build added
            return write_aci(
                out,
                manifest_json,
                rootfs,
                compression=compression,
                source_date_epoch=self.options.source_date_epoch,
                id_map=id_map,
                install=lambda tmp: publish(tmp, out, signing, reporter=self.options.reporter),  # one temp: signed, then renamed
                reporter=self.options.reporter,
            )

    def discard(self) -> None:
        from acbuild.files import remove_tree

        remove_tree(self.workdir)


def _exclude_rules(i: p.Copy):
    """COPY/ADD --exclude as a predicate on paths below a source (.dockerignore's
    pattern rules, as BuildKit's), or None."""
    if not i.exclude:
        return None
    from acbuild.engine.execute.ignore import IgnoreRules
    from acbuild.errors import UsageError

    try:
        return IgnoreRules(list(i.exclude), f"{i.keyword} --exclude")
    except UsageError as err:
        raise BuildError(err.message, i.at.get("exclude.0", i.pos)) from None


def stage_options(base: p.From, options: BuildOptions) -> BuildOptions:
    """The options a FROM is read with: its --platform (else the build's) picks the
    image from a manifest list or OCI index."""
    if not base.platform:
        return options
    from acbuild.oci.manifests import parse_platform

    return replace(options, platform=parse_platform(base.platform))


def base_path(base: p.From, options: BuildOptions) -> Path:
    """Where a local base (a file or a directory) is: relative to the context."""
    path = Path(base.base)
    return path if path.is_absolute() else options.context / path


def _start_from_base(base: p.From, rootfs: Path, options: BuildOptions) -> m.ImageManifest:
    from acbuild.engine.base import classify_base, stored_base

    kind, path = classify_base(base, options.context)
    if kind == "oci":
        return _start_from_oci(base, rootfs, options)
    if kind == "dir":
        return _start_from_directory(path, rootfs, base, options)
    if kind == "name":
        return _start_from_aci(stored_base(base, options).aci, rootfs, base, options, by_name=True)
    if not path.exists():
        raise BuildError(f'FROM {base.base}: no such file', base.pos)
    return _start_from_aci(path, rootfs, base, options)


def _start_from_aci(path: Path, rootfs: Path, base: p.From, options: BuildOptions, *,
                    by_name: bool = False) -> m.ImageManifest:
    from acbuild.aci.extract import extract_rootfs
    from acbuild.trust.policy import verified_base

    rootfs.mkdir(mode=0o755)
    with verified_base(path, base, options, by_name=by_name) as source:  # the very bytes that were verified
        try:
            contents = extract_rootfs(source, rootfs)
        except ImageError as err:
            raise BuildError(f"FROM {base.base}: {err.at_path(path).message}", base.pos) from err
        except OwnerError as err:
            raise BuildError(f"FROM {base.base}: {err.message}", base.pos) from err
    manifest = m.ImageManifest.from_json(contents.manifest_bytes)
    if manifest.dependencies:
        from acbuild.engine.deps.render import render_dependencies

        render_dependencies(manifest, rootfs, options, base.pos)
    return manifest


def oci_convert_options(options: BuildOptions):
    from acbuild.oci.convert import ConvertOptions
    from acbuild.oci.auth import RegistryOptions

    return ConvertOptions(registry=options.registry or RegistryOptions(), platform=options.platform,
                          reporter=options.reporter)


def _start_from_oci(base: p.From, rootfs: Path, options: BuildOptions) -> m.ImageManifest:
    """A Docker/OCI image (docker://, docker-archive:, oci:, oci-archive:), converted
    once into the cache (acbuild.oci.bases). Its digests are its proof: no appc
    signature applies."""
    from acbuild.aci.extract import extract_rootfs
    from acbuild.errors import AcbuildError
    from acbuild.oci.bases import anchored, converted_base

    try:
        aci = converted_base(anchored(base.base, options.context), oci_convert_options(options))
    except AcbuildError as err:
        raise BuildError(f"FROM {base.base}: {err.message}", base.pos) from err
    rootfs.mkdir(mode=0o755)
    try:
        contents = extract_rootfs(aci, rootfs)
    except OwnerError as err:
        raise BuildError(f"FROM {base.base}: {err.message}", base.pos) from err
    return m.ImageManifest.from_json(contents.manifest_bytes)


def _start_from_directory(path: Path, rootfs: Path, base: p.From, options: BuildOptions) -> m.ImageManifest:
    """An image layout (DIR/manifest + DIR/rootfs) or a bare rootfs directory."""
    if (path / "manifest").is_file() and (path / "rootfs").is_dir():
        manifest = m.ImageManifest.from_json((path / "manifest").read_bytes())
        source = path / "rootfs"
    else:
        manifest = default_manifest()
        source = path
    # Never copy a work path's state (DIR/.acbuild, or a deeper one holding the
    # destination, as with `--work-path DIR/sub begin DIR`) nor the destination itself.
    skip = {(path / ".acbuild").resolve(), rootfs.resolve(), *(d.resolve() for d in rootfs.parents if d.name == ".acbuild")}
    try:
        left_out = copy_tree(source, rootfs, owner=host_owner_for, skip=lambda entry: entry.resolve() in skip)
    except OwnerError as err:
        raise BuildError(f"FROM {base.base}: {err.message}", base.pos) from err
    except OSError as err:
        raise BuildError(f"FROM {base.base}: copy {err.filename}: {err.strerror}", base.pos) from err
    if left_out:  # sockets (and, rootless, device nodes): what COPY leaves out too
        options.reporter.warning(f"FROM {base.base}: left out {len(left_out)} socket or device file(s) that "
                                 f"cannot be part of the image, first /{left_out[0]}")
    return manifest
