"""Safe extraction of an .aci's rootfs (or of a plain tar archive, for ADD).

Nothing is ever written outside `dest`: parent paths are walked with directory
fds and O_NOFOLLOW, so a symlink in the archive is never followed; a later entry
replaces an earlier one (a symlink to a directory is replaced, not followed).
The archive is read and checked by `aci/archive.py` in the same pass, so
extraction refuses every layout problem that validate reports. Memory is flat in
image size."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from acbuild import placeholders
from acbuild.aci.archive import AciContents, LayoutChecker, clean_name, open_tar, read_manifest_entry
from acbuild.aci.readahead import CHUNK
from acbuild.aci.tarstream import Entry, TarReader
from acbuild.errors import ImageError
from acbuild.records import dataclass
from acbuild.userns import owner_for

# Decides whether an entry is extracted: (cleaned archive name, "rootfs" or
# "rootfs/usr/bin/x", is_directory) -> keep. Dependency rendering
# (acbuild.engine.deps.render) passes its first-provider-wins and pathWhitelist
# filter here.
PathFilter = Callable[[str, bool], bool]


class _Tree:
    """Directory-fd access below `root`: every component is opened with
    O_NOFOLLOW, so no symlink is followed on the way. One cursor fd is kept and
    moved (up with "..", down one component at a time), so a deep tree costs
    what its path changes cost, not depth x entries, and one descriptor."""

    def __init__(self, root: Path):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._parts: list[str] = []
        self._fd: int | None = None

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)

    def forget(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._parts = []

    def invalidate(self, rel: list[str]) -> None:
        """Drop the cursor if it lies at or under `rel` (which may be replaced)."""
        if self._fd is not None and self._parts[: len(rel)] == rel:
            self.forget()

    def dir(self, parts: list[str], create: bool = False) -> int:
        """An fd for root/parts (owned by the tree; do not close)."""
        if self._fd is not None:
            common = 0
            for a, b in zip(self._parts, parts):
                if a != b:
                    break
                common += 1
            up = len(self._parts) - common
            if up > common:  # cheaper from the root
                self.forget()
            else:
                try:
                    for _ in range(up):
                        self._step("..")
                        self._parts.pop()
                except OSError:  # e.g. a directory already made 0000: start again from the root
                    self.forget()
        if self._fd is None:
            self._fd = os.dup(self.root_fd)
            self._parts = []
        for comp in parts[len(self._parts):]:  # self._parts is a prefix of parts now
            if create:
                try:
                    os.mkdir(comp, 0o755, dir_fd=self._fd)
                    os.chmod(comp, 0o755, dir_fd=self._fd)  # not the caller's umask
                except FileExistsError:
                    pass
            try:
                self._step(comp)
            except BaseException:
                self.forget()
                raise
            self._parts.append(comp)
        return self._fd

    def _step(self, comp: str) -> None:
        assert self._fd is not None
        fd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._fd)
        os.close(self._fd)
        self._fd = fd

    def parent(self, parts: list[str], create: bool) -> int:
        """An fd for the directory holding parts[-1] (owned by the tree; do not close)."""
        return self.dir(parts[:-1], create)


def _remove(pfd: int, name: str, keep_dir: bool) -> None:
    """Make room for a new entry `name` (a directory stays when keep_dir)."""
    from acbuild.files import remove_tree_at

    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            remove_tree_at(pfd, name)
    else:
        os.unlink(name, dir_fd=pfd)


def extract_rootfs(
    path: Path,
    dest: Path,
    *,
    path_filter: PathFilter | None = None,
    tarball: bool = False,
) -> AciContents:
    """Extract the rootfs/ entries of the .aci `path` into `dest` (which becomes
    the rootfs; it is created if missing). Any layout problem that validate
    reports raises ImageError naming the entry; `dest` may then hold a partial
    tree, which the caller removes. With `tarball`, `path` is a plain tar archive
    (Dockerfile ADD): every entry is taken as if it were under rootfs/, with the
    same checks, so nothing lands outside `dest`. Owners are kept as far as this
    process can (acbuild.userns.owner_for: an owner that would be lost raises
    OwnerError); device nodes that cannot be made become placeholders
    (acbuild.placeholders)."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    checker = LayoutChecker()
    manifest = None
    skipped: list[str] = []
    dirs: list[tuple[list[str], Entry]] = []
    tree = _Tree(dest)
    creator = _Creator.of(dest)
    try:
        with open_tar(path) as (tar, reader, compression):
            if tarball:  # a plain archive has neither; its entries are all rootfs
                checker.manifest = checker.rootfs = True
            for m in tar:
                if tarball:
                    _under_rootfs(m)
                checked = checker.check(m)
                if checked is None or checker.problems:
                    raise ImageError(f"refusing unsafe entry: {checker.unsafe}" if checker.unsafe
                                     else checker.problems[0], path=path)
                name, parts = checked
                if name == "manifest":
                    manifest = read_manifest_entry(path, tar, m, True)
                if not parts or parts[0] != "rootfs":
                    continue
                rel = parts[1:]
                if path_filter is not None and not path_filter(name, m.isdir()):
                    continue
                try:
                    if not rel:
                        dirs.append((rel, m))
                    elif _extract_one(tar, tree, rel, m, owner_for(m.uid, m.gid, f"{path}: {name}"), skipped, creator):
                        dirs.append((rel, m))
                except (OSError, OverflowError) as e:
                    raise ImageError(f"extract {name}: {e}", path=path) from e
            image_id = reader.drain()
        problems = checker.finish()
        if problems:
            raise ImageError(f"refusing unsafe entry: {checker.unsafe}" if checker.unsafe
                             else problems[0], path=path)
        # Directory modes and times last, children before parents (children changed
        # them); in reverse path order the cursor moves between neighbours only.
        dirs.sort(key=lambda d: d[0], reverse=True)
        for rel, m in dirs:
            try:
                _set_dir_meta(tree, rel, m, owner_for(m.uid, m.gid, f"{path}: rootfs/{'/'.join(rel)}"))
            except (OSError, OverflowError) as e:
                raise ImageError(f"extract {'/'.join(['rootfs', *rel])}: {e}", path=path) from e
    finally:
        tree.close()
    return AciContents(manifest or b"", image_id, compression, [], checker.entries, skipped)


def _under_rootfs(m: Entry) -> None:
    """A plain archive's entry, named as the same entry of an image's rootfs."""
    if not m.name.startswith("/"):
        m.name = "rootfs/" + m.name
    if m.islnk() and not m.linkname.startswith("/"):
        m.linkname = "rootfs/" + m.linkname


@dataclass(frozen=True)
class _Creator:
    """What a new file gets without being told, so the calls that would set the same
    can be left out (a Debian rootfs is ~8,700 entries, most of them root's).
    `owner`: the creator's (uid, gid), which every new entry has when `dest` was an
    empty directory without setgid (so no directory in it passes a group on: each was
    made here, 0700, and gets its mode only at the end); None otherwise. `umask`: this
    process's, or None when unknown (then every file is chmodded)."""

    owner: tuple[int, int] | None
    umask: int | None

    @staticmethod
    def of(dest: Path) -> _Creator:
        st = os.stat(dest)
        fresh = not (st.st_mode & stat.S_ISGID) and not os.listdir(dest)
        try:
            with open("/proc/self/status", "rb") as f:
                umask = next((int(line.split()[1], 8) for line in f if line.startswith(b"Umask:")), None)
        except (OSError, ValueError, IndexError):
            umask = None
        return _Creator((os.geteuid(), os.getegid()) if fresh else None, umask)

    def must_chown(self, owner: tuple[int, int] | None) -> bool:
        return owner is not None and owner != self.owner

    def must_chmod(self, mode: int) -> bool:
        """Is a file opened with mode & 0o777 not left with mode & 0o7777 yet?"""
        if mode & 0o7000:  # not given by open, and chown clears setuid
            return True
        return self.umask is None or bool(mode & self.umask)


def _extract_one(tar: TarReader, tree: _Tree, rel: list[str], m: Entry,
                 owner: tuple[int, int] | None, skipped: list[str], creator: _Creator) -> bool:
    """Create one entry, owned by `owner` (None: as made); True for a directory
    (its metadata is set at the end). An entry of that name is replaced (a directory
    kept for a directory): looked for only when the creation finds it, since most
    names are new."""
    tree.invalidate(rel)
    pfd = tree.parent(rel, create=True)
    name = rel[-1]
    if m.isdir():
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=pfd).st_mode):
                _remove(pfd, name, keep_dir=False)
                os.mkdir(name, 0o700, dir_fd=pfd)
        return True
    if m.isreg():
        mode = m.mode & 0o7777
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            _remove(pfd, name, keep_dir=False)
            fd = os.open(name, flags, mode & 0o777, dir_fd=pfd)
        try:
            while data := tar.data(CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            if creator.must_chown(owner):
                os.fchown(fd, *owner)  # type: ignore[misc]
            if creator.must_chmod(mode):
                os.fchmod(fd, mode)  # after chown, which clears setuid
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        return False
    if m.issym():
        try:
            os.symlink(m.linkname, name, dir_fd=pfd)
        except FileExistsError:
            _remove(pfd, name, keep_dir=False)
            os.symlink(m.linkname, name, dir_fd=pfd)
    elif m.islnk():
        tparts = clean_name(m.linkname)[1][1:]
        # The target's parent, walked without following symlinks (own fd, not the cursor).
        tfd = _open_dir(tree.root_fd, tparts[:-1])
        try:
            try:
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileExistsError:
                _remove(pfd, name, keep_dir=False)
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return False  # shares the target's inode and metadata
    elif m.ischr() or m.isblk() or m.isfifo():
        _remove(pfd, name, keep_dir=False)
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        if not placeholders.make_node(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd):
            raise ImageError(f"cannot keep device node rootfs/{'/'.join(rel)}: this file system holds "
                             "no user xattrs for its placeholder")
        if owner is not None:
            os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
        return False
    else:
        _remove(pfd, name, keep_dir=False)
        skipped.append("/".join(["rootfs", *rel]))
        return False
    if creator.must_chown(owner):
        os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)  # type: ignore[misc]
    os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    return False


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """An fd for root/parts, never through a symlink (O_NOFOLLOW at every step)."""
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_dir_meta(tree: _Tree, rel: list[str], m: Entry, owner: tuple[int, int] | None) -> None:
    try:
        fd = tree.dir(rel)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP):
            return  # a later entry replaced this directory
        raise
    if owner is not None:
        os.fchown(fd, *owner)
    os.fchmod(fd, m.mode & 0o7777)
    os.utime(fd, (m.mtime, m.mtime))
