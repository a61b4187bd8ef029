"""The namespace sandbox that RUN steps execute in.

Contract: `run_sandboxed(spec)` runs `spec.argv` with `spec.rootfs` as "/" in new mount,
PID, UTS, IPC and (unless network="host") network namespaces, plus a user namespace when
the caller is not root; it returns the command's exit status (128+N if signal N killed
it). Writes to the rootfs stay; everything mounted for the run lives in a private mount
namespace that dies with the run, and the mount points the run had to create in the
rootfs are removed again by the parent, on success, failure and Ctrl-C alike.

Process structure (chosen over "the command is PID 1", whose default signal dispositions
are ignored and which may not reap orphans):

    parent (engine) --fork--> [rootless: helper: unshare(), uid/gid maps --fork-->]
        init = PID 1: [as root: unshare()], mounts, pivot_root, hostname, lo up; then
        the command's fds, hardening, ids and cwd --posix_spawn--> PID 2: the command

As root the parent unshares only the PID namespace for the fork (and returns to its own);
rootless, the user namespace must come first, which the parent cannot leave again, so a
helper does it. Whoever forked init answers SIGINT/SIGTERM with SIGKILL to it, which
makes the kernel kill every process of the PID namespace. Init forwards signals to the
command, reaps orphans and exits with the command's status. No interpreter is started:
forks and a vfork-like spawn only, so a RUN costs a few milliseconds.

Hardening (acbuild.engine.execute.hardening, measured against runc's default spec and Docker's
default profile): "/" is an overlay over the rootfs, mounted nodev (and nosuid when the
spec asks), named in mountinfo by /proc/self/fd paths so no host path shows; /proc and
/sys carry runc's masked and read-only paths; /tmp, /run and /dev/shm are tmpfs of
`tmpfs_size`; the command gets no descriptor above 2, Docker's capability set less
CAP_MKNOD, the seccomp filter, and no_new_privs when the spec says it needs no setuid.
Init, hardened as the command is, is undumpable, so the command cannot read the parent's
memory init inherited.

The parts, one idea each: sandbox_spec (what the caller asks for), mount_plan (the mounts
and mount points a run needs, planned in the parent), mount_ops (the set-up steps init
executes), sandbox_process (helper, init and command, and the parent's fork and wait),
syscalls (the ctypes wrappers). All import-light (stdlib + ctypes): they run in the freshly
forked child. This module checks the spec, prepares the run and cleans up after it.
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.engine.execute import hardening
from acbuild.engine.execute.mount_plan import (
    ensure_scratch, make_placeholders, make_scratch, plan_setup, release_overlay_work, remove_placeholders,
    remove_scratch)
from acbuild.engine.execute.sandbox_process import Stream, fork_and_wait
from acbuild.engine.execute.sandbox_spec import DEFAULT_PATH, Bind, SandboxSpec  # noqa: F401 (callers import them here)
from acbuild.engine.execute.users import resolve_group, resolve_user
from acbuild.errors import BuildError
from acbuild.userns import OwnerError, check_process_ids


def _resolve_ids(spec: SandboxSpec, root: Path, rootless: bool):
    try:
        uid, _ = resolve_user(root, spec.user)
        gid = resolve_group(root, spec.group)
    except BuildError as e:
        raise BuildError(f"RUN: {e}") from e
    groups = tuple(sorted(set(spec.supplementary_gids)))
    try:  # the one rule for which ids a rootless build has (acbuild.userns)
        check_process_ids((uid, gid, *groups), f"RUN: cannot run as {spec.user or 0}:{spec.group or 0}")
    except OwnerError as e:
        raise BuildError(e.message) from None
    return None if rootless else (uid, gid, groups)


def run_sandboxed(spec: SandboxSpec, *, stdin: Stream = None, stdout: Stream = None,
                  stderr: Stream = None, debug: bool = False) -> int:
    """Run `spec` in a fresh sandbox; return its exit status (128+N when killed by N).

    Set-up or exec failures raise BuildError("RUN: <reason>"); SIGINT/SIGTERM received
    while waiting kill the whole sandbox and are re-raised as KeyboardInterrupt after
    clean-up. Not re-entrant per rootfs: one run at a time may use a given rootfs.
    """
    if not spec.argv:
        raise BuildError("RUN: empty command")
    if spec.network not in ("none", "host"):
        raise BuildError(f"RUN: unknown network mode {spec.network!r} (use none or host)")
    root = Path(spec.rootfs).resolve()
    if not root.is_dir():
        raise BuildError(f"RUN: rootfs {root} is not a directory")
    rootless = os.geteuid() != 0
    # users and groups come from the image's /etc/passwd, which may be in a lower layer
    layers = [r for r in (root, *map(Path, spec.lower_layers)) if os.path.lexists(r / "etc/passwd")]
    ids = _resolve_ids(spec, layers[0] if layers else root, rootless)
    hardening.prepare()  # the filter compiled here, once: the child only loads it
    made_scratch = not spec.lower_layers and spec.scratch is None and spec.upper is None
    scratch = make_scratch(root) if made_scratch else spec.scratch and ensure_scratch(Path(spec.scratch))
    try:
        try:
            plan = plan_setup(spec, root, rootless, scratch)
        except OSError as e:  # a symlink loop on the way to a mount point
            raise BuildError(f"RUN: resolve {e.filename} in the image: {e.strerror}") from e
        made = make_placeholders(plan, debug)
        try:
            return fork_and_wait(spec, plan, ids, (stdin, stdout, stderr), debug, rootless)
        finally:
            remove_placeholders(made, debug)
    finally:
        if scratch is not None:
            release_overlay_work(scratch / "root-work")
        if made_scratch and scratch is not None:
            remove_scratch(scratch)
        if spec.overlay_work is not None:
            release_overlay_work(Path(spec.overlay_work))
