"""Which ids this process can give files, and the user namespace that gives a rootless
user all of theirs.

An unprivileged user is allowed ranges of host ids by /etc/subuid and /etc/subgid.
Like buildah and podman, acbuild maps container id 0 to the invoking user and ids
1..N to the user's first subordinate range, through Debian's setuid newuidmap and
newgidmap, and does its rootfs work (extraction, COPY, RUN, the writer, launch) in
that namespace. There it is root over those ids: chown, setgroups, useradd and
apt-get's _apt user work, files on disk carry the shifted host ids, and stat()
inside shows them unshifted, so the writer puts the container ids in the tar.

What a user namespace cannot hold on disk, device nodes, acbuild.placeholders keeps.

The three cases, `id_space()`:
- ROOT: real root in the initial namespace: every id, device nodes.
- SUBORDINATE: root of a user namespace (ours, or a container's): ids 0..N-1.
- SINGLE: an unprivileged user without subordinate ranges: the user alone, who is
  0 inside each RUN's own namespace; other owners are squashed to 0, which
  acbuild refuses unless --squash-owners says so.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import AcbuildError

CLONE_NEWUSER = 0x10000000
SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")


class IdSpace(enum.Enum):
    ROOT = "root"
    SUBORDINATE = "subordinate"
    SINGLE = "single"


def _map_lines(which: str = "uid") -> list[tuple[int, int, int]]:
    """/proc/self/{uid,gid}_map as (inside, outside, count) triples."""
    with open(f"/proc/self/{which}_map") as f:
        return [tuple(map(int, line.split())) for line in f if line.strip()]  # type: ignore[misc]


@functools.cache
def in_initial_namespace() -> bool:
    """Is this the host's user namespace (its map is the identity over all 2^32-1 ids)?"""
    return _map_lines() == [(0, 0, 4294967295)]


def id_space() -> IdSpace:
    if os.geteuid() != 0:
        return IdSpace.SINGLE
    return IdSpace.ROOT if in_initial_namespace() else IdSpace.SUBORDINATE


def can_make_devices() -> bool:
    """mknod of a device needs CAP_MKNOD in the initial user namespace."""
    return id_space() is IdSpace.ROOT


@functools.cache
def mapped_ids() -> int:
    """How many container ids, from 0, both maps hold without a gap (ROOT: all)."""
    counts = []
    for which in ("uid", "gid"):
        top = 0
        for inside, _, count in sorted(_map_lines(which)):
            if inside > top:
                break
            top = max(top, inside + count)
        counts.append(top)
    return min(counts)


def describe_mapping() -> str:
    """The maps in effect, as one line (step cache keys depend on it: the same files
    on disk mean other container ids under another map)."""
    return ";".join(" ".join(f"{a}:{b}:{c}" for a, b, c in _map_lines(w)) for w in ("uid", "gid"))


# --- owners ----------------------------------------------------------------------

_squash_owners = False


def set_squash_owners(on: bool) -> None:
    """--squash-owners: owners this process cannot keep become 0 instead of an error."""
    global _squash_owners
    _squash_owners = on


class OwnerError(AcbuildError):
    pass


def usable_ids() -> int:
    """How many ids, from 0, this process can give files and processes."""
    space = id_space()
    return 1 << 32 if space is IdSpace.ROOT else 1 if space is IdSpace.SINGLE else mapped_ids()


def _why_not() -> str:
    if id_space() is IdSpace.SINGLE and planned_mapping() is not None:
        return f"acbuild runs without the subordinate ids of {_user()} here (ACBUILD_USERNS=single?)"
    if id_space() is IdSpace.SINGLE:
        return (f"{_user()} has no subordinate ids in {SUBUID} and {SUBGID} (add a range, e.g. usermod "
                f"--add-subuids 100000-165535 --add-subgids 100000-165535 {_user()})")
    return (f"this user namespace maps the ids 0-{mapped_ids() - 1} only (the invoking user and the range in "
            f"{SUBUID} and {SUBGID}): give {_user()} a larger range")


def owner_for(uid: int, gid: int, what: str) -> tuple[int, int] | None:
    """The owner to give a file the image says is uid:gid: (uid, gid), (0, 0) when it
    cannot be kept and --squash-owners allows that, or None to leave the creating
    user's (SINGLE, where that user is 0 in the image). Raises OwnerError, naming
    `what`, for an owner that would be lost."""
    single = id_space() is IdSpace.SINGLE
    limit = usable_ids()
    if uid < limit and gid < limit:
        return None if single else (uid, gid)
    if _squash_owners:
        return None if single else (0, 0)
    raise OwnerError(f"{what}: owned by {uid}:{gid}, which this rootless build cannot keep: {_why_not()}; "
                     "or pass --squash-owners to make such owners 0")


def check_process_ids(ids: tuple[int, ...], what: str) -> None:
    """A process (RUN, the app) can only take ids that are mapped: no squashing those."""
    beyond = [i for i in ids if i >= usable_ids()]
    if beyond:
        raise OwnerError(f"{what}: id {beyond[0]} is not mapped: {_why_not()}")


def host_owner_for(path: str, st: os.stat_result) -> tuple[int, int] | None:
    """owner_for a host file copied into an image (FROM DIR): as root its ids; in a
    user namespace the ids it shows, where host ids outside show as the overflow id
    (65534) and cannot be told from a real one; for a single-id user, its own files
    are 0 and any other owner is squashed."""
    space = id_space()
    if space is IdSpace.SUBORDINATE and _overflow() in (st.st_uid, st.st_gid):
        if _squash_owners:
            return 0, 0
        raise OwnerError(f"{path}: owned by a host user or group outside this user namespace (shown as "
                         f"{_overflow()}), which the image cannot keep: copy the tree as that user, or pass "
                         "--squash-owners to make such owners 0")
    if space is IdSpace.SINGLE:
        mine = (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
        return None if mine else owner_for(st.st_uid, st.st_gid, path)
    return owner_for(st.st_uid, st.st_gid, path)


@functools.cache
def _overflow() -> int:
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


def squash_notice() -> str | None:
    """The one line to print when owners will be squashed, or None."""
    if id_space() is IdSpace.SINGLE and _squash_owners:
        return (f"--squash-owners: {_user()} has no subordinate ids in {SUBUID}: every file of the image "
                "is owned by 0:0")
    return None


_invoker: str | None = None  # set by enter(): inside, getuid() is 0


def _user() -> str:
    if _invoker is not None:
        return _invoker
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# --- subordinate ranges ----------------------------------------------------------


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


def subordinate_range(path: Path, name: str, uid: int) -> IdRange | None:
    """The first range /etc/subuid (or subgid) gives the user, by name or number."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0:
            return IdRange(start, count)
    return None


@dataclass(frozen=True)
class Mapping:
    """What to map: container 0 = the user (uid, gid), 1..N = the subordinate ranges."""
    uid: int
    gid: int
    uids: IdRange
    gids: IdRange

    @property
    def size(self) -> int:
        return 1 + min(self.uids.count, self.gids.count)

    def uid_args(self) -> list[str]:
        return ["0", str(self.uid), "1", "1", str(self.uids.start), str(self.size - 1)]

    def gid_args(self) -> list[str]:
        return ["0", str(self.gid), "1", "1", str(self.gids.start), str(self.size - 1)]


def planned_mapping() -> Mapping | None:
    """The mapping the invoking user is allowed, or None without subordinate ranges."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids, gids = subordinate_range(SUBUID, name, uid), subordinate_range(SUBGID, name, uid)
    if uids is None or gids is None:
        return None
    return Mapping(uid, gid, uids, gids)


class NamespaceError(AcbuildError):
    pass


def enter(mapping: Mapping) -> None:
    """Move this (single-threaded) process into a new user namespace with `mapping`,
    as its root. A child left in the host namespace runs newuidmap/newgidmap on us
    (only a process outside may write our maps); we wait for it, then become 0:0
    without the host's supplementary groups (they are not mapped)."""
    global _invoker
    tools = [shutil.which(t) for t in ("newuidmap", "newgidmap")]
    if None in tools:
        raise NamespaceError("subordinate ids need newuidmap and newgidmap (Debian package uidmap)")
    ready_r, ready_w = os.pipe()
    err_r, err_w = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(ready_w)
            os.close(err_r)
            if os.read(ready_r, 1) == b"1":
                for tool, args in zip(tools, (mapping.uid_args(), mapping.gid_args())):
                    done = subprocess.run([tool, str(parent), *args], capture_output=True, text=True)
                    if done.returncode != 0:
                        os.write(err_w, f"{os.path.basename(tool)}: {done.stderr.strip()}".encode())
                        break
                else:
                    code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    os.close(err_w)
    libc = ctypes.CDLL(None, use_errno=True)
    unshared = libc.unshare(CLONE_NEWUSER) == 0
    failure = "" if unshared else os.strerror(ctypes.get_errno())
    os.write(ready_w, b"1" if unshared else b"0")
    os.close(ready_w)
    _, status = os.waitpid(child, 0)
    with os.fdopen(err_r, "rb") as f:
        reason = f.read().decode(errors="replace")
    if not unshared:
        raise NamespaceError(f"cannot make a user namespace: {failure} "
                             "(is kernel.unprivileged_userns_clone or user.max_user_namespaces 0?)")
    if status != 0:
        raise NamespaceError(f"cannot map the subordinate ids of {SUBUID} and {SUBGID}: "
                             f"{reason or 'newuidmap failed'}")
    _invoker = _user()
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    in_initial_namespace.cache_clear()
    mapped_ids.cache_clear()


def enter_for_rootfs_work() -> IdSpace:
    """What commands that make image trees call first: an unprivileged user with
    subordinate ranges moves into the namespace that maps them (SUBORDINATE); root
    stays ROOT; a user without ranges stays SINGLE."""
    if os.geteuid() != 0 and os.environ.get("ACBUILD_USERNS") != "single":
        mapping = planned_mapping()
        if mapping is not None:
            enter(mapping)
    return id_space()
