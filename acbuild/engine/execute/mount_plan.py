"""The plan of a sandbox's mounts, made in the parent with no side effects: which set-up
steps init runs, in order, and which mount points must first be created in the rootfs
(and removed again after the run); plus the overlay's scratch dirs beside the rootfs."""

from __future__ import annotations

import os
from pathlib import Path

from acbuild.engine.execute import hardening
from acbuild.engine.execute.mount_ops import (
    LoopbackUp, MakePrivate, MaskPath, MountBind, MountFs, MountOverlay, MountRoot, MountSys, PivotRoot,
    ReadOnlyPath, SetHostname, SetupOp, Symlink, ensure_mount_point, trace)
from acbuild.engine.execute.sandbox_spec import SandboxSpec
from acbuild.engine.execute.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID
from acbuild.engine.execute.users import in_image
from acbuild.errors import BuildError
from acbuild.records import dataclass, field, replace
from acbuild.userns import overlay_userxattr

_FRESH = ("/proc", "/dev", "/sys", "/tmp", "/run")  # get a new mount every run


@dataclass
class MountPlan:
    root: Path
    steps: list[SetupOp]
    placeholders: list[tuple[Path, str]]  # (host path, "dir" | "file") to create, in order
    fresh: list[str]  # in-image paths that get a new mount: what is below them is not on disk
    # The empty lower dir of the overlay "/" (None: no such overlay). A missing top-level
    # mount point of _FRESH is made there, not in the rootfs: the overlay shows it, the
    # rootfs is not touched, and a build's scratch keeps it for the next RUN (a mkdir and
    # an rmdir in the rootfs per mount point and RUN were 1-2 ms each on a busy disk).
    lower: Path | None = None
    underlay: list[str] = field(default_factory=list)  # names made (or to make) in `lower`

    def at(self, inner_path: str, kind: str = "dir", *, fresh: bool = False) -> Path:
        """The host path of a mount point; plan a placeholder if it is missing on disk."""
        inner = in_image(self.root, inner_path)
        if inner == "/":
            raise BuildError(f"RUN: cannot mount over the image's root ({inner_path})")
        parts = inner.strip("/").split("/")
        if fresh and self.lower is not None and len(parts) == 1 and not os.path.lexists(self.root / parts[0]):
            self.underlay.append(parts[0])
        elif not any(inner == f or inner.startswith(f + "/") for f in self.fresh):
            for i in range(1, len(parts) + 1):
                p = self.root.joinpath(*parts[:i])
                if not os.path.lexists(p) and all(p != q for q, _ in self.placeholders):
                    self.placeholders.append((p, kind if i == len(parts) else "dir"))
        return self.root / inner.lstrip("/")


def plan_setup(spec: SandboxSpec, root: Path, rootless: bool, scratch: Path | None = None) -> MountPlan:
    """`scratch`: an empty dir beside the rootfs, for the overlay's empty lower and work
    dirs when the spec has no lower layers."""
    root_mount = root_step(spec, root, scratch)
    # missing mount points go in the overlay's own empty lower dir, the bottom layer when
    # there is a scratch dir and no dependency below (with DEPENDENCY, in the rootfs)
    own_lower = root_mount.overlay is not None and not spec.lower_layers and scratch is not None
    lower = scratch / "lower" if own_lower else None
    plan = MountPlan(root, [MakePrivate(), root_mount], [], [], lower)
    proc, dev, sys_, tmp, run = (plan.at(p, fresh=True) for p in _FRESH)
    if plan.underlay:  # should the overlay fail and the rootfs be bound instead, they go there
        plan.steps[1] = replace(root_mount, bind_mount_points=tuple(root / n for n in plan.underlay))
    plan.fresh.extend(in_image(root, p) for p in _FRESH)
    kernel_fs = (plan.fresh[0], plan.fresh[2])  # /proc and /sys: no binds inside them
    pts_gid = "" if rootless else ",gid=5"  # gid 5 (tty) is not mapped in a user namespace
    size = f"size={spec.tmpfs_size}"
    def under(mount_point: Path, fresh: str, paths: tuple[str, ...]) -> list[Path]:  # /proc/x -> proc/x
        return [mount_point / p.removeprefix(fresh + "/") for p in paths if p.startswith(fresh + "/")]
    plan.steps += [
        MountFs("proc", proc, MS_NOSUID | MS_NODEV | MS_NOEXEC),
        *map(MaskPath, under(proc, "/proc", hardening.MASKED_PATHS)),
        *map(ReadOnlyPath, under(proc, "/proc", hardening.READ_ONLY_PATHS)),
        MountFs("tmpfs", dev, MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=1m"),
        *(MountBind(Path("/dev", n), dev / n, recursive=False)
          for n in ("null", "zero", "full", "random", "urandom", "tty")),
        *(Symlink(t, dev / n) for n, t in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                           ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))),
        MountFs("devpts", dev / "pts", MS_NOSUID | MS_NOEXEC, f"newinstance,ptmxmode=0666,mode=620{pts_gid}"),
        Symlink("pts/ptmx", dev / "ptmx"),
        MountFs("tmpfs", dev / "shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,{size}"),
        MountSys(sys_),
        *map(MaskPath, under(sys_, "/sys", hardening.MASKED_PATHS)),
        MountFs("tmpfs", tmp, MS_NOSUID | MS_NODEV, f"mode=1777,{size}"),
        MountFs("tmpfs", run, MS_NOSUID | MS_NODEV, f"mode=755,{size}"),
    ]
    if spec.network == "host":
        for source, inner in ((spec.resolv_conf or Path("/etc/resolv.conf"), "/etc/resolv.conf"),
                              (Path("/etc/hosts"), "/etc/hosts")):
            if source.exists():
                plan.steps.append(MountBind(source, plan.at(inner, "file"), read_only=True))
    for b in spec.binds:
        inner = in_image(root, b.target) if b.target.startswith("/") else ""
        if not inner or any(inner == k or inner.startswith(k + "/") for k in kernel_fs):
            raise BuildError(f"RUN: bad mount target {b.target!r} (need an absolute path outside /proc and /sys)")
        if not b.source.exists():
            raise BuildError(f"RUN: mount source {b.source}: No such file or directory")
        kind = "dir" if b.source.is_dir() else "file"
        plan.steps.append(MountBind(b.source.resolve(), plan.at(b.target, kind), read_only=b.read_only))
        plan.fresh.append(inner)
    plan.steps.append(PivotRoot(root))
    plan.steps.append(SetHostname(spec.hostname))
    if spec.network == "none":
        plan.steps.append(LoopbackUp())
    return plan


def release_overlay_work(work: Path) -> None:
    """overlayfs leaves work/work at mode 0 (let its owner, rootless: the user, remove it)
    and, after a volatile mount, work/work/incompat/volatile/, on which it refuses to mount
    again: remove that."""
    incompat = work / "work/incompat"
    for d in (work / "work", incompat, incompat / "volatile") if os.geteuid() != 0 else ():  # root needs no x bit
        try:
            os.chmod(d, 0o700)
        except OSError:
            return
    for p in (incompat / "volatile/dirty", incompat / "volatile", incompat):
        try:
            os.unlink(p) if p.name == "dirty" else os.rmdir(p)
        except OSError:
            pass


def root_step(spec: SandboxSpec, root: Path, scratch: Path | None) -> MountRoot:
    """The overlay that becomes "/": the spec's lower layers (DEPENDENCY) below the rootfs,
    or an empty dir from `scratch`; nodev, and nosuid unless setuid is allowed."""
    flags = MS_NODEV | (0 if spec.allow_setuid else MS_NOSUID)
    if spec.upper is not None:  # never a bind: the rootfs must not be written
        if spec.lower_layers or scratch is None:
            if spec.overlay_work is None:
                raise BuildError("RUN: a separate upper dir needs an overlay work dir "
                                 "(or, without lower layers, a scratch dir)")
            lower, work = (root, *(Path(p).resolve() for p in spec.lower_layers)), Path(spec.overlay_work).resolve()
        else:  # the scratch's lower dir below the rootfs holds its missing mount points
            lower, work = (root, scratch / "lower"), scratch / "root-work"
        overlay = MountOverlay(lower, Path(spec.upper).resolve(), work, overlay_userxattr(), flags, root)
        return MountRoot(root, flags, overlay, may_bind=False)
    if spec.lower_layers:
        if spec.overlay_work is None:
            raise BuildError("RUN: lower layers need an overlay work dir")
        lower, work = tuple(Path(p).resolve() for p in spec.lower_layers), Path(spec.overlay_work).resolve()
    elif scratch is not None:
        lower, work = (scratch / "lower",), scratch / "root-work"
    else:
        return MountRoot(root, flags, None, may_bind=True)
    return MountRoot(root, flags, MountOverlay(lower, root, work, overlay_userxattr(), flags),
                     may_bind=not spec.lower_layers)


def make_scratch(root: Path) -> Path | None:
    """Empty lower and work dirs for the overlay, on the rootfs's filesystem (removed by
    remove_scratch; one run at a time uses a rootfs, so one name per rootfs and process).
    None where the rootfs's parent is not ours to write."""
    scratch = root.parent / f".{root.name}.sandbox-{os.getpid()}"
    try:
        return ensure_scratch(scratch)
    except PermissionError:
        return None


def ensure_scratch(scratch: Path) -> Path:
    for d in (scratch, scratch / "lower", scratch / "root-work"):
        if not d.is_dir():
            d.mkdir(mode=0o700)
    return scratch


def remove_scratch(scratch: Path) -> None:
    try:
        with os.scandir(scratch / "lower") as entries:  # the underlay's mount points
            for e in entries:
                os.rmdir(e.path)
    except OSError:  # never made, or not ours: rmdir(lower) below leaves it then
        pass
    for d in (scratch / "root-work/work", scratch / "root-work/index", scratch / "root-work", scratch / "lower", scratch):
        try:
            os.rmdir(d)
        except OSError:  # never made, or not ours to remove: the caller's dir goes with it
            pass


def make_placeholders(plan: MountPlan, debug: bool) -> list[tuple[Path, str]]:
    """Create the plan's mount points; return what to remove after the run (the rootfs's
    placeholders, and where the overlay fell back to a bind, the underlay's there)."""
    made: list[tuple[Path, str]] = []
    try:
        for name in plan.underlay:
            if not os.path.isdir(plan.lower / name):
                trace(debug, f"create mount point {name} in the overlay's lower dir")
                os.mkdir(plan.lower / name)
            made.append((plan.root / name, "dir"))  # absent unless the overlay fell back to a bind
        for path, kind in plan.placeholders:
            trace(debug, f"create mount point {path} for this run ({kind})")
            ensure_mount_point(path, kind)
            made.append((path, kind))
    except OSError as e:
        remove_placeholders(made, debug)
        raise BuildError(f"RUN: create mount point {e.filename}: {e.strerror}") from e
    return made


def remove_placeholders(made: list[tuple[Path, str]], debug: bool) -> None:
    """Remove what we created, deepest first; keep anything the command put there."""
    for path, kind in reversed(made):
        try:
            if kind == "dir":
                os.rmdir(path)
            elif path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
                path.unlink()
            else:
                continue
            trace(debug, f"removed mount point {path}")
        except OSError:
            pass  # not empty: the command wrote there, so it belongs to the image now
