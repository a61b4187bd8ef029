"""RUN: turn a Run instruction and the session's manifest into a sandbox spec,
run it, and fail the build on a non-zero status.

The command sees the image's environment (plus a default PATH and the ARG values
in scope), working directory, user and group; RUN --mount binds and cache dirs
exist only for the step.

RUN --mount=type=bind shows a private copy of the context path, made for the
step and removed after it, as BuildKit does: .acbuildignore hides from it what
it hides from COPY, and an `rw` mount is a writable scratch layer whose writes
never reach the host's build context.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from acbuild import plan as p
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.errors import BuildError


def run_step(session, i: p.Run) -> None:
    from acbuild.engine.deps.overlay import overlay_work, prepare
    from acbuild.engine.execute.sandbox import DEFAULT_PATH, Bind, SandboxSpec, run_sandboxed
    from acbuild.files import remove_tree

    app = session.manifest.app
    env = {"PATH": DEFAULT_PATH}
    env.update(dict(i.arg_env))
    if app is not None:
        env.update({e.name: e.value for e in app.environment})
    network = i.network or session.options.network
    lower = prepare(session, i.pos)  # DEPENDENCY: their files below the rootfs (engine.layers)
    binds_dir = session.workdir / "run-binds"  # private copies for bind mounts, gone after the step
    try:
        spec = SandboxSpec(
            rootfs=session.rootfs,
            argv=tuple(i.argv),
            env=tuple(env.items()),
            cwd=(app.working_directory if app else "") or "/",
            user=app.user if app else "0",
            group=app.group if app else "0",
            supplementary_gids=tuple(app.supplementary_gids) if app else (),
            network=network,
            binds=tuple(_bind(session, mount, i, Bind, binds_dir / str(n)) for n, mount in enumerate(i.mounts)),
            lower_layers=lower,
            overlay_work=overlay_work(session) if lower else None,
            scratch=None if lower else overlay_work(session),  # kept for the session's next RUN
            tmpfs_size=session.options.tmpfs_size,
        )
        try:
            status = run_sandboxed(spec, debug=session.options.debug)
        except BuildError as err:
            raise BuildError(err.message, i.pos) from err
    finally:
        remove_tree(binds_dir)
    if status != 0:
        raise BuildError(f"RUN exited with status {status}", i.pos)


def _bind(session, mount: p.RunMount, i: p.Run, bind_type, private: Path):
    if mount.type == "bind":
        context = session.options.context
        source = resolve_in_root(context, mount.source)
        if not source.exists():
            raise BuildError(f'RUN --mount: "{mount.source}" not found in the build context', i.pos)
        rel = os.path.relpath(source, Path(context).resolve())
        try:
            _private_copy(source, private, "" if rel == "." else rel, session.options.ignore)
        except OSError as err:
            raise BuildError(f"RUN --mount: {err.filename or mount.source}: {err.strerror}", i.pos) from err
        return bind_type(source=private, target=mount.target, read_only=mount.read_only)
    return bind_type(source=cache_mount_dir(session, mount), target=mount.target, read_only=False)


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
    from acbuild.dirs import cache_root

    key = hashlib.sha256((mount.id or mount.target).encode()).hexdigest()[:32]
    path = (session.options.cache_dir or cache_root()) / "run-mounts" / key
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path
