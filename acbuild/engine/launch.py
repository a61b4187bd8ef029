"""launch: run an image's app the way rkt ran it, in the sandbox RUN uses.

The recipe (`launch`): verify the signature, find the image's rendered tree (made
once, keyed by image ID: engine.rendered) or render it, run pre-start handlers, the
app, post-stop handlers, each in a fresh sandbox over an overlay of that tree (one
upper dir in a temp dir for the three), and return the app's exit status. An image
with dependencies, or a machine without overlayfs, gets a rendered private copy.

Contract: only a signed image whose signer is trusted for its name runs, unless
`insecure_skip_verify` (printed loudly). The rendered tree is read-only to the app:
nothing the app writes survives, every mount lives in the sandbox's own mount
namespace, and the temp dir is removed on success, failure, Ctrl-C and SIGTERM (the CLI
turns SIGTERM into KeyboardInterrupt), and by a later launch after a SIGKILL.
"""

from __future__ import annotations

from pathlib import Path

from acbuild.aci import manifest as m
from acbuild.engine.execute.layer import new_upper
from acbuild.engine.execute.sandbox import DEFAULT_PATH, Bind, SandboxSpec, run_sandboxed
from acbuild.errors import BuildError, ImageError, ManifestError, NotFoundError, SignatureError
from acbuild.limits import DEFAULT_TMPFS_SIZE
from acbuild.records import dataclass, field, replace
from acbuild.report import QUIET, Reporter


@dataclass(frozen=True)
class Volume:
    """`--volume NAME:HOSTPATH`: a host path for the image's mount point NAME."""

    name: str
    host_path: Path


@dataclass(frozen=True)
class LaunchOptions:
    args: tuple[str, ...] = ()  # appended to the app's exec
    volumes: tuple[Volume, ...] = ()
    network: str = "none"  # "none" (loopback only) or "host"
    insecure_skip_verify: bool = False
    trust_dirs: tuple[Path, ...] = ()  # empty: the default system + user dirs
    debug: bool = False
    reporter: Reporter = field(default_factory=Reporter)
    allow_setuid: bool = False  # the image's setuid binaries work (no nosuid, no no_new_privs)
    tmpfs_size: int = DEFAULT_TMPFS_SIZE  # the app's /tmp, /run and /dev/shm, each
    fetcher: object = None  # acbuild.fetch.Fetcher for dependencies not beside the image
    cache_dir: Path | None = None  # where rendered trees are kept (engine.rendered); None: the default cache dir


def launch(image: Path, options: LaunchOptions) -> int:
    """Verify, render and run `image`'s app; returns the app's exit status."""
    if not image.is_file():
        raise NotFoundError(f"{image}: no such image")
    from acbuild.temps import temp_dir

    with verified_for_launch(image, options) as source, temp_dir("acbuild-launch-") as work:
        rendered = rendered_image(image, source, work, options)
        # dependencies, or no overlayfs: a private copy, as before
        rootfs, manifest = rendered or render_image(image, work, options, source=source)
        app = app_of(manifest, image)
        spec = app_spec(rootfs, manifest, app, options)
        if rendered is not None:  # the shared tree stays read-only below one upper dir for the three runs
            spec = replace(spec, upper=new_upper(rootfs, work / "upper"), overlay_work=_private(work / "ovl-work"))
        run_handlers("pre-start", app, spec, options, abort=True)
        status = run_in_sandbox(replace(spec, argv=tuple(app.exec) + options.args), "app", options)
        run_handlers("post-stop", app, spec, options, abort=False)
        return status


# --- the steps -----------------------------------------------------------------------------

def verified_for_launch(image: Path, options: LaunchOptions):
    """The FROM policy, except that an unsigned image is refused too (as rkt did): a
    context manager giving the file to run, the very bytes that were verified."""
    from acbuild.trust.policy import verified
    from acbuild.trust.sign import signature_path

    if not options.insecure_skip_verify and not signature_path(image).is_file():
        raise SignatureError(
            f"{image}: not signed ({signature_path(image)} does not exist); launch runs only images signed "
            "by a trusted key: sign it with 'acbuild sign' and trust the key with 'acbuild trust' "
            "(--insecure-skip-verify skips this check)")
    return verified(image, str(image), insecure=options.insecure_skip_verify, require=True,
                    trust_dirs=options.trust_dirs, reporter=options.reporter)


def rendered_image(image: Path, source: Path, work: Path, options: LaunchOptions) -> tuple[Path, m.ImageManifest] | None:
    """The image's tree rendered once under the cache dir (engine.rendered), reused while
    it matches; None where it cannot serve (dependencies, no overlayfs to run over it)."""
    from acbuild.aci.extract import extract_rootfs
    from acbuild.dirs import cache_root
    from acbuild.engine.deps.overlay import overlay_works
    from acbuild.engine.rendered import cached_tree, render_tree

    if not overlay_works(work):
        return None
    cache = options.cache_dir or cache_root()
    found = cached_tree(source, cache) or render_tree(source, cache, extract_rootfs)
    if found is None:
        return None
    rootfs, manifest_bytes = found
    try:
        return rootfs, m.ImageManifest.from_json(manifest_bytes)
    except ManifestError as e:
        raise ImageError(f"{image}: {e.message}") from e


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def render_image(image: Path, work: Path, options: LaunchOptions, *, source: Path | None = None
                 ) -> tuple[Path, m.ImageManifest]:
    """The image's rootfs (dependencies rendered below it) in `work`/rootfs, and its
    manifest. `source` is the file to read (the verified copy); dependencies are
    looked for beside `image`, then in the image store."""
    from acbuild.aci.extract import extract_rootfs

    rootfs = work / "rootfs"
    rootfs.mkdir(mode=0o755)
    contents = extract_rootfs(source or image, rootfs)
    try:
        manifest = m.ImageManifest.from_json(contents.manifest_bytes)
    except ManifestError as e:
        raise ImageError(f"{image}: {e.message}") from e
    if manifest.dependencies:
        from acbuild.engine.deps.render import render_dependencies
        from acbuild.engine.session import BuildOptions

        deps = BuildOptions(context=image.parent.resolve(), network=options.network, reporter=QUIET,
                            insecure_skip_verify=options.insecure_skip_verify,
                            require_signatures=True, trust_dirs=options.trust_dirs, debug=options.debug,
                            fetcher=options.fetcher)
        render_dependencies(manifest, rootfs, deps, None)
    return rootfs, manifest


def app_of(manifest: m.ImageManifest, image: Path) -> m.App:
    if manifest.app is None or not manifest.app.exec:
        raise ImageError(f"{image}: {manifest.name} has no app to run (its manifest has no app exec)")
    return manifest.app


def app_spec(rootfs: Path, manifest: m.ImageManifest, app: m.App, options: LaunchOptions) -> SandboxSpec:
    """Everything but argv: the same for handlers and the app."""
    env = {"PATH": DEFAULT_PATH}
    env.update({e.name: e.value for e in app.environment})
    env["AC_APP_NAME"] = manifest.name.rsplit("/", 1)[-1]
    env["container"] = "acbuild"
    return SandboxSpec(
        rootfs=rootfs,
        argv=(),
        env=tuple(env.items()),
        cwd=app.working_directory or "/",
        user=app.user or "0",
        group=app.group or "0",
        supplementary_gids=tuple(app.supplementary_gids),
        hostname=env["AC_APP_NAME"][:63] or "acbuild",
        network=options.network,
        binds=volume_binds(app, options.volumes),
        allow_setuid=options.allow_setuid,
        tmpfs_size=options.tmpfs_size,
    )


def volume_binds(app: m.App, volumes: tuple[Volume, ...]) -> tuple[Bind, ...]:
    """Host paths bound on the mount points they name; readOnly comes from the image.
    Mount points no volume names keep what the image has at their path."""
    points = {mp.name: mp for mp in app.mount_points}
    binds = []
    for v in volumes:
        mp = points.get(v.name)
        if mp is None:
            known = ", ".join(f"{p.name} ({p.path})" for p in app.mount_points) or "none"
            raise ImageError(f'--volume {v.name}: the image has no mount point "{v.name}" (mount points: {known})')
        if not v.host_path.exists():
            raise NotFoundError(f"--volume {v.name}:{v.host_path}: {v.host_path} does not exist")
        binds.append(Bind(source=v.host_path.resolve(), target=mp.path, read_only=mp.read_only))
    return tuple(binds)


def run_handlers(event: str, app: m.App, spec: SandboxSpec, options: LaunchOptions, *, abort: bool) -> None:
    """Run the app's `event` handler, if any. A failing pre-start stops the launch;
    a failing post-stop is reported and the app's status kept."""
    for handler in app.event_handlers:
        if handler.name != event or not handler.exec:
            continue
        status = run_in_sandbox(replace(spec, argv=tuple(handler.exec)), f"{event} handler", options)
        if status == 0:
            continue
        if abort:
            raise BuildError(f"{event} handler {handler.exec[0]} exited with status {status}; the app was not started")
        options.reporter.warning(f"{event} handler {handler.exec[0]} exited with status {status}")


def run_in_sandbox(spec: SandboxSpec, what: str, options: LaunchOptions) -> int:
    try:
        return run_sandboxed(spec, debug=options.debug)
    except BuildError as err:  # the sandbox speaks of RUN; here it ran the app
        raise BuildError(f"{what}: {err.message.removeprefix('RUN: ')}") from err
