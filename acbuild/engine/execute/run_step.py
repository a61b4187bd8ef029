"""RUN: turn a Run instruction and the session's manifest into a sandbox spec,
run it, and fail the build on a non-zero status.

The command sees the image's environment (plus a default PATH and the ARG values
in scope), working directory, user and group; RUN --mount binds and cache dirs
exist only for the step.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from acbuild import plan as p
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.errors import BuildError


def run_step(session, i: p.Run) -> None:
    from acbuild.engine.deps.overlay import overlay_work, prepare
    from acbuild.engine.execute.sandbox import DEFAULT_PATH, Bind, SandboxSpec, run_sandboxed

    app = session.manifest.app
    env = {"PATH": DEFAULT_PATH}
    env.update(dict(i.arg_env))
    if app is not None:
        env.update({e.name: e.value for e in app.environment})
    network = i.network or session.options.network
    lower = prepare(session, i.pos)  # DEPENDENCY: their files below the rootfs (engine.layers)
    spec = SandboxSpec(
        rootfs=session.rootfs,
        argv=tuple(i.argv),
        env=tuple(env.items()),
        cwd=(app.working_directory if app else "") or "/",
        user=app.user if app else "0",
        group=app.group if app else "0",
        supplementary_gids=tuple(app.supplementary_gids) if app else (),
        network=network,
        binds=tuple(_bind(session, mount, i, Bind) for mount in i.mounts),
        lower_layers=lower,
        overlay_work=overlay_work(session) if lower else None,
        scratch=None if lower else overlay_work(session),  # kept for the session's next RUN
        tmpfs_size=session.options.tmpfs_size,
    )
    try:
        status = run_sandboxed(spec, debug=session.options.debug)
    except BuildError as err:
        raise BuildError(err.message, i.pos) from err
    if status != 0:
        raise BuildError(f"RUN exited with status {status}", i.pos)


def _bind(session, mount: p.RunMount, i: p.Run, bind_type):
    if mount.type == "bind":
        source = resolve_in_root(session.options.context, mount.source)
        if not source.exists():
            raise BuildError(f'RUN --mount: "{mount.source}" not found in the build context', i.pos)
        return bind_type(source=source, target=mount.target, read_only=mount.read_only)
    return bind_type(source=cache_mount_dir(session, mount), target=mount.target, read_only=False)


def cache_mount_dir(session, mount: p.RunMount) -> Path:
    """A persistent directory for RUN --mount=type=cache, keyed by id (or target)."""
    from acbuild.dirs import cache_root

    key = hashlib.sha256((mount.id or mount.target).encode()).hexdigest()[:32]
    path = (session.options.cache_dir or cache_root()) / "run-mounts" / key
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path
