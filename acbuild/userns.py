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

import enum
import functools
import os
import pwd
import shutil
import signal
import sys
from pathlib import Path

from acbuild.errors import AcbuildError
from acbuild.records import dataclass

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


def overlay_userxattr() -> bool:
    """overlayfs keeps its markers in trusted.* xattrs, which need the host's root;
    in any user namespace it must use user.overlay.* (the userxattr option)."""
    return id_space() is not IdSpace.ROOT


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
_squashed: list[str] = []  # what --squash-owners made 0 (beyond a range: said at the end)


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


def why_not_mapped() -> str:
    """Why ids beyond usable_ids() are not there, and what gives them."""
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
        _squashed.append(what)
        return None if single else (0, 0)
    raise OwnerError(f"{what}: owned by {uid}:{gid}, which this rootless build cannot keep: {why_not_mapped()}; "
                     "or pass --squash-owners to make such owners 0")


def check_process_ids(ids: tuple[int, ...], what: str) -> None:
    """A process (RUN, the app) can only take ids that are mapped: no squashing those."""
    beyond = [i for i in ids if i >= usable_ids()]
    if beyond:
        raise OwnerError(f"{what}: id {beyond[0]} is not mapped: {why_not_mapped()}")


def host_owner_for(path: str, st: os.stat_result) -> tuple[int, int] | None:
    """owner_for a host file copied into an image (FROM DIR): as root its ids; in a
    user namespace the ids it shows, where host ids outside show as the overflow id
    (65534) and cannot be told from a real one; for a single-id user, its own files
    are 0 and any other owner is squashed."""
    space = id_space()
    if space is IdSpace.SUBORDINATE and _overflow() in (st.st_uid, st.st_gid):
        if _squash_owners:
            _squashed.append(path)
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
    """The one line to print up front when every owner will be squashed, or None."""
    if id_space() is IdSpace.SINGLE and _squash_owners:
        return f"--squash-owners: every file of the image is owned by 0:0 ({why_not_mapped()})"
    return None


def squashed_report() -> str | None:
    """The one line to print at the end when owners beyond a range were made 0."""
    if id_space() is IdSpace.SINGLE or not _squashed:
        return None  # SINGLE: said up front
    return (f"--squash-owners: {len(_squashed)} file(s) owned beyond the ids this user namespace maps "
            f"became 0:0, first {_squashed[0]}")


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


def _unshare_user() -> str:
    """unshare(CLONE_NEWUSER); "" or why not."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) == 0:
        return ""
    return os.strerror(ctypes.get_errno())


def _write_maps(mapping: Mapping, pid: int) -> str:
    """newuidmap and newgidmap on `pid`; "" or what they said."""
    import subprocess

    for tool, args in (("newuidmap", mapping.uid_args()), ("newgidmap", mapping.gid_args())):
        path = shutil.which(tool)
        if path is None:
            return f"{tool} is missing (Debian package uidmap)"
        done = subprocess.run([path, str(pid), *args], capture_output=True, text=True)
        if done.returncode != 0:
            return done.stderr.strip() or f"{tool} exited with status {done.returncode}"
    return ""


def enter(mapping: Mapping) -> str:
    """Continue in a new user namespace with `mapping`, as its root; or return why
    not ("") and stay. Only a process outside a namespace may write its maps, so
    the work goes on in a child: it unshares, this process maps it and then only
    waits, forwarding SIGTERM and SIGHUP (the terminal sends SIGINT to both) and
    exiting with its status. If the maps cannot be written (a nested namespace, a
    nosuid newuidmap), the child ends and this process goes on as it was."""
    import threading

    global _invoker
    if threading.active_count() > 1:
        return "acbuild started a thread before entering the user namespace (a bug)"
    invoker = _user()
    sys.stdout.flush()
    sys.stderr.flush()
    unshared_r, unshared_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(unshared_r)
        os.close(verdict_w)
        failure = _unshare_user()
        os.write(unshared_w, failure.encode() or b"ok")
        os.close(unshared_w)
        if failure or os.read(verdict_r, 2) != b"ok":
            os._exit(0)
        os.close(verdict_r)
        os.setresgid(0, 0, 0)  # the supplementary groups stay: they still open the user's files
        os.setresuid(0, 0, 0)
        _die_with_parent(parent)
        _invoker = invoker
        in_initial_namespace.cache_clear()
        mapped_ids.cache_clear()
        return ""
    os.close(unshared_w)
    os.close(verdict_r)
    with os.fdopen(unshared_r, "rb") as f:
        said = f.read().decode(errors="replace")
    failure = "" if said == "ok" else f"cannot make a user namespace: {said}"
    if not failure:
        failure = _write_maps(mapping, child)
    os.write(verdict_w, b"no" if failure else b"ok")
    os.close(verdict_w)
    if failure:
        os.waitpid(child, 0)
        return failure
    _wait_for(child)


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the waiting parent dies (set after the id change, which clears it)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before that
        os._exit(143)


def _wait_for(child: int):
    """Wait for the child doing the work; end as it ended (never returns)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets the terminal's too
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    def forward(number: int, _frame) -> None:
        try:
            os.kill(child, number)
        except ProcessLookupError:
            pass  # it has just ended: waitpid says how

    for forwarded in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, forward)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def enter_for_rootfs_work() -> str | None:
    """What commands that make image trees call first: an unprivileged user with
    subordinate ranges continues in the namespace that maps them (SUBORDINATE);
    root stays ROOT; a user without ranges stays SINGLE. Returns the one line to
    print when a user with ranges could not enter (and stays SINGLE)."""
    if os.geteuid() == 0 or os.environ.get("ACBUILD_USERNS") == "single":
        return None
    mapping = planned_mapping()
    if mapping is None:
        return None
    failure = enter(mapping)
    if failure:
        return (f"cannot use the subordinate ids of {_user()} ({failure}): building with the user's id "
                "alone; set ACBUILD_USERNS=single to say so and not try")
    return None
