"""DEPENDENCY during a build: the dependencies' files are visible to later steps, but the
written image holds only what this build added.

The manifest's dependencies are rendered (engine.render) into the session's read-only
`deps/` dir the first time a step needs them (RUN, COPY, WORKDIR), again when the list
changes. Two modes, chosen once per session and kept in `deps.json`:

- overlay: RUN mounts overlayfs(lower=deps, upper=rootfs) inside its sandbox, so the
  command's changes land in the rootfs and deletions become overlayfs whiteouts there
  (char device 0/0; opaque directories carry a *.overlay.opaque xattr). COPY and WORKDIR
  write to the rootfs directly; `copy_up` first recreates (like overlayfs copy-up) the
  dependency directories on the way, following a dependency's symlinks.
- copy: where overlayfs is unavailable (ACBUILD_NO_OVERLAY=1, or the mount fails with
  EPERM/ENODEV/EINVAL), the dependencies are copied into the rootfs below what is there
  (the rootfs's own entries win), and a notice is printed once per build.

Writing (`output_tree`), the same rules in both modes: whiteouts are never written;
entries identical to the dependency's (same type, mode, owner, content hash, link target,
device number; mtime ignored) are left out, and so is a directory identical to the
dependency's with nothing written below it. When a dependency path visible before is
gone (a RUN deleted it), the manifest gets a pathWhitelist listing every path of the
build's merged view (dependencies + this image), as docker2aci --nosquash does; a
PATH-WHITELIST given in the ACIfile is intersected with it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild import placeholders
from acbuild.aci import manifest as m
from acbuild.engine.execute.paths import walk_path
from acbuild.errors import BuildError, SourcePos
from acbuild.userns import overlay_userxattr

NO_OVERLAY_ENV = "ACBUILD_NO_OVERLAY"
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")
_WHITEOUT = ("trusted.overlay.whiteout", "user.overlay.whiteout")  # a file as whiteout (kernel 6.7 xwhiteout)
_notice_printed = False
OVERLAY_PROBE_MEMO = ".overlay-probe"  # in a work dir: what the probe found there
_overlay_by_fs: dict[int, bool] = {}  # st_dev of a work dir -> whether overlayfs mounts there


def _state_path(session) -> Path:
    return session.workdir / "deps.json"


def _load_state(session) -> dict | None:
    try:
        return json.loads(_state_path(session).read_text())
    except FileNotFoundError:
        return None


def deps_dir(session) -> Path:
    return session.workdir / "deps"


def overlay_work(session) -> Path:
    work = session.workdir / "ovl-work"
    work.mkdir(exist_ok=True)
    return work


def prepare(session, pos: SourcePos | None) -> tuple[Path, ...]:
    """Make the manifest's dependencies visible to the next step; return the lower layers a
    RUN must mount (overlay mode) or () (copy mode, or no dependencies)."""
    from acbuild.files import remove_tree
    from acbuild.engine.deps.render import render_into

    wanted = [_encode(d) for d in session.manifest.dependencies]
    state = _load_state(session)
    if state is None and not wanted:
        return ()
    if state is not None and state["deps"] == wanted:
        return (deps_dir(session),) if state["mode"] == "overlay" else ()
    lower = deps_dir(session)
    if state is not None and state["mode"] == "copy":  # take the old dependencies out again
        for path in sorted(_identical(session.rootfs, lower), key=len, reverse=True):
            _remove(session.rootfs / path.lstrip("/"))
    remove_tree(lower)
    _state_path(session).unlink(missing_ok=True)
    if not wanted:
        return ()
    lower.mkdir()
    render_into(session.manifest.dependencies, lower, session.options, pos)
    mode = "overlay" if overlay_works(session.workdir) else "copy"
    if mode == "copy":
        _notice(session.options.reporter)
        merge_below(lower, session.rootfs)
    tmp = _state_path(session).with_suffix(".tmp")
    tmp.write_text(json.dumps({"deps": wanted, "mode": mode}))
    os.replace(tmp, _state_path(session))
    return (lower,) if mode == "overlay" else ()


def _encode(dep: m.Dependency) -> list:
    return [dep.image_name, dep.image_id, [[label.name, label.value] for label in dep.labels]]


def _notice(reporter) -> None:
    global _notice_printed
    if not _notice_printed:
        reporter.note("overlayfs is unavailable here; dependencies are copied into the rootfs "
                      "and left out of the image again when it is written")
        _notice_printed = True


def overlay_works(workdir: Path) -> bool:
    """Can an overlay with its upper dir on `workdir`'s filesystem be mounted (in a
    throw-away namespace, as RUN mounts it)? Probed once per filesystem and process, or
    remembered in `workdir` from an earlier process."""
    if os.environ.get(NO_OVERLAY_ENV, "") not in ("", "0"):
        return False
    dev = os.stat(workdir).st_dev
    if dev not in _overlay_by_fs:
        _overlay_by_fs[dev] = _remembered_probe(workdir, dev)
    return _overlay_by_fs[dev]


def _remembered_probe(workdir: Path, dev: int) -> bool:
    """The probe's answer, written down in `workdir` for the next process: an interactive
    session runs one per `acbuild run`, and the probe (a fork, a mount, three dirs) is a
    tenth of its time. The answer holds while the boot, the filesystem and the user's
    mapping are the ones it was found with."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return _probe_in(workdir)
    key = f"{boot} {dev} {os.geteuid()} {overlay_userxattr()}"
    memo = workdir / OVERLAY_PROBE_MEMO
    try:
        found, _, answer = memo.read_text().rpartition(" ")
        if found == key and answer in ("yes", "no"):
            return answer == "yes"
    except OSError:
        pass
    works = _probe_in(workdir)
    try:
        tmp = memo.with_suffix(".tmp")
        tmp.write_text(f"{key} {'yes' if works else 'no'}")
        os.replace(tmp, memo)
    except OSError:  # a read-only work dir: probe again next time
        pass
    return works


def _probe_in(workdir: Path) -> bool:
    from acbuild.files import remove_tree
    from acbuild.engine.execute.mount_plan import release_overlay_work

    probe = workdir / "ovl-probe"
    try:
        for d in ("lower", "upper", "work"):
            (probe / d).mkdir(parents=True, exist_ok=True)
        code = probe_overlay(probe / "lower", probe / "upper", probe / "work")
    finally:
        release_overlay_work(probe / "work")
        remove_tree(probe)
    if code in (0, errno.EPERM, errno.ENODEV, errno.EINVAL, errno.EACCES, errno.ENOTSUP):
        return code == 0
    raise BuildError(f"overlayfs probe: {os.strerror(code)}")


def probe_overlay(lower: Path, upper: Path, work: Path) -> int:
    """Try the overlay mount RUN would make, in a throw-away mount (and, rootless, user)
    namespace; return 0 when it works, else the errno (EPERM, ENODEV, EINVAL...)."""
    from acbuild.engine.execute.mount_ops import MakePrivate, MountOverlay
    from acbuild.engine.execute.syscalls import CLONE_NEWNS, CLONE_NEWUSER, unshare

    rootless = os.geteuid() != 0
    step = MountOverlay((lower,), upper, work, overlay_userxattr())
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            uid, gid = os.geteuid(), os.getegid()
            unshare(CLONE_NEWNS | (CLONE_NEWUSER if rootless else 0))
            if rootless:
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            MakePrivate().execute()
            step.execute()
        except OSError as e:
            code = e.errno or errno.EINVAL
        except BaseException:
            code = errno.EINVAL
        os.write(wfd, str(code).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        answer = r.read().decode() or str(errno.EINVAL)
    os.waitpid(pid, 0)
    return int(answer)


# --- COPY and WORKDIR into dependency paths ------------------------------------------------------


def copy_up(session, path: str, pos: SourcePos | None) -> str:
    """`path` resolved in the merged view (symlinks of dependencies followed inside the
    image), with the dependency directories on the way recreated in the rootfs, keeping
    their mode and owner. Returns the resolved absolute image path (a trailing "/" kept)."""
    lower = prepare(session, pos)
    if not lower:
        return path
    upper, deps = session.rootfs, lower[0]

    def entry(done: list[str], part: str):
        """The merged view's entry: the rootfs's, else the dependencies' (a directory
        of theirs is recreated in the rootfs on the way)."""
        up, low = upper.joinpath(*done, part), deps.joinpath(*done, part)
        st = _lstat(up)
        if st is not None:
            return st, up
        st = _lstat(low)
        if st is not None and stat.S_ISDIR(st.st_mode):
            up.mkdir()
            _copy_meta(low, up, st)
        return st, low

    done = walk_path(path, entry, error=BuildError(f"{path}: too many levels of symbolic links", pos))
    return "/" + "/".join(done) + ("/" if path.endswith("/") and done else "")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _copy_meta(src: Path, dst: Path, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# --- copy mode -----------------------------------------------------------------------------------


def merge_below(src: Path, dst: Path) -> None:
    """Copy `src`'s tree into `dst` where `dst` has nothing yet; dst's entries win, and
    nothing goes below a dst non-directory (as rendering does)."""
    with os.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        target = dst / entry.name
        st = entry.stat(follow_symlinks=False)
        have = _lstat(target)
        if have is not None:
            if stat.S_ISDIR(have.st_mode) and stat.S_ISDIR(st.st_mode):
                merge_below(Path(entry.path), target)
            continue
        if stat.S_ISDIR(st.st_mode):
            target.mkdir()
            merge_below(Path(entry.path), target)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(entry.path, target, follow_symlinks=False)
            placeholders.copy_mark(entry.path, os.fspath(target), st)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            if not placeholders.make_node(os.fspath(target), st.st_mode, st.st_rdev):
                raise BuildError(f"cannot keep device node {target}: its file system holds no user xattrs "
                                 "for a placeholder (set TMPDIR to a dir on ext4, xfs or btrfs)")
        else:
            continue
        _copy_meta(Path(entry.path), target, st)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            pass
    else:
        path.unlink(missing_ok=True)


# --- writing -------------------------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout(path: str | Path, st: os.stat_result) -> bool:
    """An overlayfs whiteout: a char device 0:0, or an empty file marked by xattr."""
    if _is_whiteout(st):
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and any(_has_xattr(path, name) for name in _WHITEOUT)


def _has_xattr(path: str | Path, name: str, value: bytes | None = None) -> bool:
    try:
        got = os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return False
    return value is None or got == value


def is_opaque(path: str | Path) -> bool:
    return any(_has_xattr(path, name, b"y") for name in _OPAQUE)


def _listing(top: Path) -> dict[str, os.stat_result]:
    """Every entry below `top`: "/a/b" -> lstat."""
    out: dict[str, os.stat_result] = {}

    def walk(d: Path, rel: str) -> None:
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                out[f"{rel}/{e.name}"] = st
                if stat.S_ISDIR(st.st_mode):
                    walk(Path(e.path), f"{rel}/{e.name}")
    walk(top, "")
    return out


def merged_view(upper: Path, lower: Path | None) -> dict[str, bool]:
    """What the build saw: path -> is a directory. With `lower`, overlayfs's rules
    (whiteouts hide, opaque dirs hide the lower dir's content, upper wins)."""
    view: dict[str, bool] = {}

    def walk(rel: str, up: Path | None, low: Path | None) -> None:
        names = set(os.listdir(up)) if up is not None else set()
        low_names = set(os.listdir(low)) if low is not None else set()
        for name in sorted(names | low_names):
            path = f"{rel}/{name}"
            if name in names:
                st = os.lstat(up / name)
                if _is_whiteout(st):
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                view[path] = is_dir
                if is_dir:
                    below = low / name if low is not None and name in low_names and (low / name).is_dir() \
                        and not (low / name).is_symlink() and not is_opaque(up / name) else None
                    walk(path, up / name, below)
            else:
                is_dir = (low / name).is_dir() and not (low / name).is_symlink()
                view[path] = is_dir
                if is_dir:
                    walk(path, None, low / name)
    walk("", upper, lower)
    return view


def _same(a: Path, sa: os.stat_result, b: Path, sb: os.stat_result) -> bool:
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if stat.S_ISREG(sa.st_mode):
        if placeholders.device_of(os.fspath(a), sa) != placeholders.device_of(os.fspath(b), sb):
            return False  # a device's placeholder is that device, not an empty file
        return sa.st_size == sb.st_size and _digest(a) == _digest(b)
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    return True  # directories and fifos: type, mode and owner are all there is


def _digest(path: Path) -> bytes:
    import hashlib  # only a dependency's copy-up compares contents; a plain RUN imports this module too

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def _identical(tree: Path, deps: Path) -> set[str]:
    """Entries of `tree` that only repeat the dependencies (and whiteouts): not written."""
    mine, theirs = _listing(tree), _listing(deps)
    skip: set[str] = set()
    kept_below: set[str] = set()
    for path in sorted(mine, key=lambda x: (x.count("/"), x), reverse=True):  # children first
        st = mine[path]
        other = theirs.get(path)
        if _is_whiteout(st):
            skip.add(path)
            continue
        same = other is not None and _same(tree / path[1:], st, deps / path[1:], other)
        if same and not (stat.S_ISDIR(st.st_mode) and path in kept_below):
            skip.add(path)
            continue
        parent = path.rsplit("/", 1)[0]
        while parent:
            kept_below.add(parent)
            parent = parent.rsplit("/", 1)[0]
    return skip


def _whitelist(session, state: dict) -> list[str] | None:
    """The pathWhitelist the image needs, or None when no dependency path was deleted."""
    deps = deps_dir(session)
    view = merged_view(session.rootfs, deps if state["mode"] == "overlay" else None)
    lower = merged_view(deps, None)
    deleted = [p for p in lower if p not in view and view.get(p.rsplit("/", 1)[0] or "/", True)]
    if not deleted:
        return None
    paths = set(view)
    if session.manifest.path_whitelist:
        paths &= set(session.manifest.path_whitelist)
    return sorted(paths)


@contextmanager
def output_tree(session) -> Iterator[tuple[Path, bytes]]:
    """(rootfs dir, manifest JSON) to write: the session's own, or, after dependencies were
    rendered, a staging tree of hard links holding only what this build added."""
    state = _load_state(session)
    if state is None:
        yield session.rootfs, session.manifest.to_json()
        return
    from acbuild.files import remove_tree

    manifest = m.ImageManifest.from_json(session.manifest.to_json())
    whitelist = _whitelist(session, state)
    if whitelist is not None:
        manifest.path_whitelist = whitelist
    skip = _identical(session.rootfs, deps_dir(session))
    stage = session.workdir / "out-stage"
    remove_tree(stage)
    try:
        _link_tree(session.rootfs, stage, "", skip)
        yield stage, manifest.to_json()
    finally:
        remove_tree(stage)


def _link_tree(src: Path, dst: Path, rel: str, skip: set[str]) -> None:
    """Hard links of src's non-directories; directories recreated with their metadata."""
    st = os.lstat(src)
    dst.mkdir()
    with os.scandir(src) as it:
        for e in it:
            path = f"{rel}/{e.name}"
            if path in skip:
                continue
            if e.is_dir(follow_symlinks=False):
                _link_tree(Path(e.path), dst / e.name, path, skip)
            else:
                os.link(e.path, dst / e.name, follow_symlinks=False)
    _copy_meta(src, dst, st)
