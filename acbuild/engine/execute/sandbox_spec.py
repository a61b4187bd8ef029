"""What a caller asks the sandbox for: `SandboxSpec`, `run_sandboxed`'s one argument."""

from __future__ import annotations

from pathlib import Path

from acbuild.engine.execute import hardening
from acbuild.records import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Bind:
    """A host path visible at `target` (absolute, inside the rootfs) during one run only."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class SandboxSpec:
    rootfs: Path  # the image's rootfs dir, written by the command
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    user: str = "0"  # name (the image's /etc/passwd) or number
    group: str = "0"  # name (the image's /etc/group) or number
    supplementary_gids: tuple[int, ...] = ()
    hostname: str = "acbuild"
    network: str = "none"  # "none": new netns, only lo up; "host": the host's network
    binds: tuple[Bind, ...] = ()
    resolv_conf: Path | None = None  # network="host": bound read-only at /etc/resolv.conf
    # Dependencies (engine.layers): read-only layers below the rootfs, highest first, merged
    # with overlayfs so the command sees them while its changes (and whiteouts) land in the
    # rootfs, the upper dir. overlay_work: an empty dir on the rootfs's filesystem.
    lower_layers: tuple[Path, ...] = ()
    overlay_work: Path | None = None
    # A separate upper dir (engine.execute.layer: RUN steps as snapshots, launch): the rootfs
    # itself becomes the top lower layer, read-only, and the command's changes (whiteouts
    # included) land in `upper`, an empty dir on the rootfs's filesystem; needs overlay_work
    # or, without lower layers, `scratch`.
    upper: Path | None = None
    # Without lower layers, "/" is still an overlay (mountinfo then names no host path), over
    # an empty lower dir that also holds the top-level mount points the rootfs lacks (/proc,
    # /tmp...); `scratch`: a dir of the caller's on the rootfs's filesystem where those dirs
    # stay between runs (None: made beside the rootfs and removed after the run; with
    # `upper`, the missing mount points are then made in the rootfs for the run).
    scratch: Path | None = None
    # Setuid: no_new_privileges for commands that need no setuid binary (RUN as root gains
    # nothing from one; launch sets it unless --allow-setuid); nosuid on the rootfs too.
    # False (launch, unless --allow-setuid): the rootfs is nosuid and the command runs with
    # no_new_privs. True (RUN: `USER app` steps call sudo and su): setuid works, and only a
    # command running as root gets no_new_privs, which costs it nothing.
    allow_setuid: bool = True
    tmpfs_size: int = hardening.DEFAULT_TMPFS_SIZE  # bytes, each of /tmp, /run and /dev/shm
