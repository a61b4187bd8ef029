"""RUN: turn a Run instruction and the session's manifest into a sandbox spec,
run it, and fail the build on a non-zero status.

The command sees the image's environment (plus a default PATH and the ARG values
in scope, and SOURCE_DATE_EPOCH: the build's), working directory, user and group;
RUN --mount binds and cache dirs
exist only for the step.

RUN --mount=type=bind shows a private copy of the context path, made for the
step and removed after it, as BuildKit does: .acbuildignore hides from it what
it hides from COPY, and an `rw` mount is a writable scratch layer whose writes
never reach the host's build context.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from acbuild import plan as p
from acbuild.engine.execute.layer import discard_upper, fold, new_upper
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.errors import BuildError


def run_step(session, i: p.Run) -> None:
    """Run one RUN. Secrets and tmpfs mounts live in a private temp dir (0700, outside
    the work dir and the cache) that is removed when the step ends, whatever happens."""
    from acbuild.engine.execute.sandbox import Bind
    from acbuild.temps import temp_dir

    # locked while this step lives, so a later run removes it if this one is killed
    with temp_dir("acbuild-run-") as private:
        binds = [b for mount in i.mounts if (b := _bind(session, mount, i, Bind, private)) is not None]
        _run(session, i, binds)


def _run(session, i: p.Run, binds: list) -> None:
    from acbuild.engine.deps.overlay import overlay_work, prepare
    from acbuild.engine.execute.sandbox import DEFAULT_PATH, SandboxSpec, run_sandboxed

    app = session.manifest.app
    env = {"PATH": DEFAULT_PATH}
    env.update(dict(i.arg_env))
    if app is not None:
        env.update({e.name: e.value for e in app.environment})
    ssh = [m for m in i.mounts if m.type == "ssh" and session.options.ssh.get(m.id)]
    if ssh:  # as BuildKit: the agent socket is where SSH_AUTH_SOCK says
        env["SSH_AUTH_SOCK"] = ssh[0].target
    # As reproducible-builds tools expect: useradd, gzip, dpkg... stamp the build's
    # time, not today's (the image would change from one day to the next).
    env["SOURCE_DATE_EPOCH"] = str(session.options.source_date_epoch)
    network = i.network or session.options.network
    lower = prepare(session, i.pos)  # DEPENDENCY: their files below the rootfs (engine.layers)
    upper = _snapshot_upper(session)
    spec = SandboxSpec(
        rootfs=session.rootfs,
        argv=tuple(i.argv),
        env=tuple(env.items()),
        cwd=(app.working_directory if app else "") or "/",
        user=app.user if app else "0",
        group=app.group if app else "0",
        supplementary_gids=tuple(app.supplementary_gids) if app else (),
        network=network,
        binds=tuple(binds),
        lower_layers=lower,
        overlay_work=overlay_work(session) if lower else None,
        scratch=None if lower else overlay_work(session),  # kept for the session's next RUN
        upper=upper,
        tmpfs_size=session.options.tmpfs_size,
    )
    try:
        status = run_sandboxed(spec, debug=session.options.debug)
    except BaseException as err:  # Ctrl-C included: no half-made layer stays
        if upper is not None:
            discard_upper(upper)
        if isinstance(err, BuildError):
            raise BuildError(err.message, i.pos) from err
        raise
    if upper is not None:  # a failed command's changes stay too, as when it wrote in place
        layer = fold(upper, session.rootfs, keep_markers=bool(lower), also_changed=_mount_parents(spec))
        # With DEPENDENCY the step may also have rendered deps/ beside the rootfs: no layer then.
        session.last_layer = None if lower else layer
    if status != 0:
        raise BuildError(f"RUN exited with status {status}", i.pos)


def _snapshot_upper(session) -> Path | None:
    """The upper dir the RUN writes into (engine.execute.layer), or None where overlayfs
    cannot be mounted: the command then writes into the rootfs, whose files must first
    stop being shared with the step cache."""
    from acbuild.engine.deps.overlay import overlay_works

    if overlay_works(session.workdir):
        return new_upper(session.rootfs)
    if session.shares_inodes:
        from acbuild.engine.cache.stepcache import unshare_files

        unshare_files(session.rootfs)
        session.shares_inodes = False
    return None


def _mount_parents(spec) -> tuple[str, ...]:
    """The rootfs dirs on the way to the step's bind targets (resolved in the rootfs): the
    sandbox may have made (and removed) mount points in them, which moved their mtimes."""
    targets = [b.target for b in spec.binds] + (["/etc/resolv.conf", "/etc/hosts"] if spec.network == "host" else [])
    parents = set()
    for target in targets:
        resolved = os.path.relpath(resolve_in_root(spec.rootfs, target), spec.rootfs)
        parts = [] if resolved == "." else resolved.split("/")[:-1]
        parents.update("/" + "/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return tuple(sorted(parents))


def _bind(session, mount: p.RunMount, i: p.Run, bind_type, private: Path):
    """The host side of one RUN --mount, or None for a secret or ssh socket that was
    not given and is not required (BuildKit skips those)."""
    if mount.type == "bind":
        if mount.from_stage:  # a path in an earlier stage's rootfs
            root = session.options.stage_rootfs.get(mount.from_stage)
            if root is None:
                raise BuildError(f'RUN --mount: stage "{mount.from_stage}" was not built', i.pos)
            where, ignore = f'stage "{mount.from_stage}"', None
        else:
            root, where, ignore = session.options.context, "the build context", session.options.ignore
        source = resolve_in_root(root, mount.source)
        if not source.exists():
            raise BuildError(f'RUN --mount: "{mount.source}" not found in {where}', i.pos)
        rel = os.path.relpath(source, Path(root).resolve())
        copy = Path(tempfile.mkdtemp(dir=private)) / "bind"
        try:
            _private_copy(source, copy, "" if rel == "." else rel, ignore)
        except OSError as err:
            raise BuildError(f"RUN --mount: {err.filename or mount.source}: {err.strerror}", i.pos) from err
        return bind_type(source=copy, target=mount.target, read_only=mount.read_only)
    if mount.type == "cache":
        return bind_type(source=cache_mount_dir(session, mount), target=mount.target, read_only=False)
    if mount.type == "tmpfs":  # an empty directory of this step only
        empty = Path(tempfile.mkdtemp(dir=private))
        os.chmod(empty, 0o1777)
        return bind_type(source=empty, target=mount.target, read_only=False)
    if mount.type == "secret":
        content = session.options.secrets.get(mount.id)
        if content is None:
            if mount.required:
                raise BuildError(f'RUN --mount=type=secret: no secret "{mount.id}" (give --secret id={mount.id},src=FILE)', i.pos)
            return None
        import hashlib

        path = private / f"secret-{hashlib.sha256(mount.id.encode()).hexdigest()[:16]}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with open(fd, "wb") as out:
            out.write(content)
        return bind_type(source=path, target=mount.target, read_only=True)
    socket = session.options.ssh.get(mount.id)  # type=ssh
    if socket is None:
        if mount.required:
            raise BuildError(f'RUN --mount=type=ssh: no ssh agent "{mount.id}" (give --ssh {mount.id})', i.pos)
        return None
    return bind_type(source=Path(socket), target=mount.target, read_only=False)


def _private_copy(source: Path, dest: Path, rel: str, ignore) -> None:
    """Copy the context path `source` (at `rel` in the context) to `dest`, modes
    and times kept, leaving out what .acbuildignore excludes."""
    from acbuild.files import walk

    dest.parent.mkdir(parents=True, exist_ok=True)
    if not source.is_dir() or source.is_symlink():
        shutil.copy2(source, dest, follow_symlinks=False)
        return
    dest.mkdir()
    prefix = rel + "/" if rel else ""
    prune = None if ignore is None else (lambda child, _st: ignore(prefix + child))
    dirs = [(dest, os.lstat(source))]
    for path, child, st, _ in walk(os.fspath(source), prune=prune):
        target = dest / child
        if stat.S_ISDIR(st.st_mode):
            target.mkdir()
            dirs.append((target, st))
        elif stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
            shutil.copy2(path, target, follow_symlinks=False)
    for target, st in reversed(dirs):  # children first: filling a directory moves its mtime
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def cache_mount_dir(session, mount: p.RunMount) -> Path:
    """A persistent directory for RUN --mount=type=cache, keyed by id (or target)."""
    import hashlib

    from acbuild.dirs import cache_root

    key = hashlib.sha256((mount.id or mount.target).encode()).hexdigest()[:32]
    path = (session.options.cache_dir or cache_root()) / "run-mounts" / key
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path
