"""COPY: build-context files into the rootfs, with Dockerfile semantics.

- A directory source copies its contents; a file source copies the file.
- The destination is a directory when it ends in "/", when it already is one, or
  when there are several sources (then it must end in "/", as Docker requires).
- Globs (*, ?, [..]) expand inside the source root, sorted; no match is an error.
- Symlinks inside a copied tree stay symlinks; a top-level symlink source is
  followed, and must stay inside the source root.
- `--exclude` patterns (.dockerignore's syntax) leave out what they match below a
  source, matched against the path relative to that source; a source named or
  globbed at the top is never left out (BuildKit's fsutil copier does the same).
- `--parents` keeps each match's path under DEST (a directory), from the source's
  `/./` pivot if it has one, else whole: `a/./b/*.txt` -> DEST/b/x.txt. Its globs
  take `**` (any number of directories) and may match nothing (BuildKit's include
  patterns); `--exclude` then matches the kept path, the match itself included.

Normalisation, for images that do not depend on the checkout (documented in the
README): files get mode 0755 if any execute bit is set, else 0644; directories
0755; --chmod replaces both. Owner is --chown (default 0:0). Every copied entry's
mtime is SOURCE_DATE_EPOCH. Contract: not atomic (a failed COPY fails the build,
and the work dir is thrown away), idempotent for the same inputs.
"""

from __future__ import annotations

import errno
import glob
import os
import posixpath
import shutil
import stat
from pathlib import Path

from acbuild.engine.execute.paths import resolve_in_root
from acbuild import placeholders
from acbuild.errors import BuildError, SourcePos
from acbuild.files import tree_bytes
from acbuild.records import dataclass
from acbuild.report import QUIET, Meter, Reporter

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class CopyAttrs:
    uid: int = 0
    gid: int = 0
    chmod: int | None = None
    mtime: int = 0
    chown_allowed: bool = True  # False when rootless: ownership is mapped at write time


def copy_into_rootfs(
    source_root: Path,
    sources: tuple[str, ...],
    rootfs: Path,
    dest: str,
    attrs: CopyAttrs,
    pos: SourcePos,
    *,
    source_in_rootfs: bool = False,
    ignore=None,
    digests: dict[str, str] | None = None,
    reporter: Reporter = QUIET,
    exclude=None,
    parents: bool = False,
) -> list[str]:
    """Copy sources (relative to source_root) to dest inside rootfs. Returns the
    image paths written. `ignore(relpath) -> bool` filters context files,
    `exclude(relpath) -> bool` (COPY --exclude) paths relative to each source. With
    `digests`, each regular file's sha256 is recorded (host path -> hex) from the
    very bytes copied, so the step cache can tell a file that changed since its
    key was made (engine.driver). `reporter` shows the progress of a copy over a second."""
    if parents:
        with reporter.meter(f"copy to {dest}", None) as meter:
            return _copy_parents(source_root, sources, rootfs, dest, attrs, pos, source_in_rootfs, ignore, digests, exclude,
                                 meter)
    matches = select_sources(source_root, sources, pos, source_in_rootfs=source_in_rootfs, ignore=ignore)
    total = None
    if reporter.wants_total:
        total = sum(tree_bytes(host) if stat.S_ISDIR(st.st_mode) else st.st_size for _, host, st in matches)
    with reporter.meter(f"copy to {dest}", total) as meter:
        return _copy_matches(matches, rootfs, dest, attrs, pos, ignore, digests, meter, exclude)


def _copy_matches(matches, rootfs: Path, dest: str, attrs: CopyAttrs, pos: SourcePos, ignore, digests,
                  meter: Meter, exclude=None) -> list[str]:
    dest_is_dir = dest.endswith("/") or len(matches) > 1
    if len(matches) > 1 and not dest.endswith("/"):
        raise BuildError(f'COPY: with several sources the destination must be a directory ending in "/" (got "{dest}")', pos)
    try:
        dest_host = resolve_in_root(rootfs, dest)
        if dest_host.is_dir():
            dest_is_dir = True
        written: list[str] = []
        for rel, host, st in matches:
            if stat.S_ISDIR(st.st_mode):
                into = dest_host
                created = make_dirs(rootfs, into, attrs)
                _copy_tree(host, dest_host, rootfs, attrs, rel, ignore, written, digests, meter, exclude)
            else:
                target = dest_host / posixpath.basename(rel) if dest_is_dir else dest_host
                into = target.parent
                created = make_dirs(rootfs, into, attrs)
                _copy_entry(host, target, attrs, st, digests)
                meter.advance(st.st_size if stat.S_ISREG(st.st_mode) else 0)
                written.append(_image_path(rootfs, target))
            # Directories this COPY wrote into carry the epoch too, as what it copied
            # does (Go acbuild's copy-to-dir tests look at them on disk).
            changed = {into, *created, *([created[0].parent] if created else [])}
            for directory in changed:
                os.utime(directory, (attrs.mtime, attrs.mtime), follow_symlinks=False)
    except OSError as err:
        raise BuildError(f"COPY: {err.filename or dest}: {err.strerror}", pos) from err
    return written


def select_sources(
    source_root: Path, sources: tuple[str, ...], pos: SourcePos, *, source_in_rootfs: bool = False, ignore=None,
    parents: bool = False,
) -> list[tuple[str, Path, os.stat_result]]:
    """What a COPY takes: (relative name, host path, lstat) per source or glob match,
    every path resolved inside source_root as a chroot would, so a symlink (at the
    top or in a glob's directories) can never reach outside it. The cache key
    (engine.stepkeys) hashes exactly this selection. With `parents` (COPY
    --parents), `**` spans directories and a glob may match nothing."""
    where = "the source stage" if source_in_rootfs else "the build context"
    selected = []
    for src in sources:
        rel = posixpath.normpath(src.lstrip("/")) if source_in_rootfs else posixpath.normpath(src)
        wildcard = bool(_GLOB_CHARS & set(rel))
        if rel in ("", "."):
            names = ["."]
        elif wildcard:
            # glob walks the host's view; each match is then resolved inside the root, and
            # a match that only exists through a link leading outside is dropped.
            names = sorted(glob.glob(rel, root_dir=source_root, include_hidden=True, recursive=parents))
        else:
            names = [rel]
        found = []
        for name in names:
            if ignore is not None and name != "." and ignore(name):
                continue  # .acbuildignore hides top-level sources and glob matches too
            try:
                host = resolve_in_root(source_root, name)  # a top-level symlink is followed, inside the root
                st = os.lstat(host)
            except OSError as err:
                if err.errno == 40:  # ELOOP
                    raise BuildError(f'COPY: "{src}": too many levels of symbolic links', pos) from err
                continue
            found.append((name, host, st))
        if not found and not (parents and wildcard):
            raise BuildError(f'COPY: "{src}" not found in {where}', pos)
        selected.extend(found)
    return selected


def _pivots(source_root, src, pos, source_in_rootfs, ignore) -> list[tuple[str, str]]:
    """(directory whose path is not kept, pattern below it) for a --parents source:
    split at its first `/./` (BuildKit's strings.Cut), else the whole path below the
    source root. The directory may be a glob too (`a/b*/./c`): each match is one."""
    head, cut, pattern = src.partition("/./")
    if not cut:
        return [(".", src)]
    return [(rel, pattern) for rel, _, st in select_sources(source_root, (head,), pos, source_in_rootfs=source_in_rootfs,
                                                            ignore=ignore, parents=True) if stat.S_ISDIR(st.st_mode)]


def _copy_parents(source_root, sources, rootfs, dest, attrs, pos, source_in_rootfs, ignore, digests, exclude,
                  meter: Meter) -> list[str]:
    """COPY --parents: each match at DEST/<its path below the pivot>."""
    written: list[str] = []
    try:
        dest_host = resolve_in_root(rootfs, dest.rstrip("/") + "/")
        changed = set(make_dirs(rootfs, dest_host, attrs)) | {dest_host}
        for src in sources:
            for pivot, pattern in _pivots(source_root, src, pos, source_in_rootfs, ignore):
                below_pivot = pattern if pivot == "." else posixpath.join(pivot, pattern)
                for rel, host, st in select_sources(source_root, (below_pivot,), pos, source_in_rootfs=source_in_rootfs,
                                                    ignore=ignore, parents=True):
                    kept = posixpath.relpath(rel, pivot)
                    if exclude is not None and kept != "." and exclude(kept):
                        continue
                    target = dest_host if kept == "." else resolve_in_root(rootfs, f"{dest.rstrip('/')}/{kept}")
                    changed |= set(make_dirs(rootfs, target if stat.S_ISDIR(st.st_mode) else target.parent, attrs))
                    if stat.S_ISDIR(st.st_mode):
                        below = None if exclude is None else (lambda child, kept=kept: exclude(posixpath.join(kept, child)))
                        _copy_tree(host, target, rootfs, attrs, rel, ignore, written, digests, meter, below)
                    else:
                        _copy_entry(host, target, attrs, st, digests)
                        written.append(_image_path(rootfs, target))
        for directory in changed:
            os.utime(directory, (attrs.mtime, attrs.mtime), follow_symlinks=False)
    except OSError as err:
        raise BuildError(f"COPY: {err.filename or dest}: {err.strerror}", pos) from err
    return written


def _image_path(rootfs: Path, host: Path) -> str:
    return "/" + str(host.relative_to(rootfs))


def make_dirs(rootfs: Path, path: Path, attrs: CopyAttrs) -> list[Path]:
    """mkdir -p inside rootfs; new directories get 0755, the owner and the epoch.
    Returns them, outermost first."""
    missing = []
    current = path
    while not current.exists() and current != rootfs:
        missing.append(current)
        current = current.parent
    missing.reverse()
    for directory in missing:
        directory.mkdir()
        _set_attrs(directory, 0o755, attrs)
    return missing


def _set_attrs(path: Path, mode: int, attrs: CopyAttrs, *, link: bool = False) -> None:
    """Owner, mode and mtime of a path in the rootfs, never following a symlink:
    a link in an image may point anywhere on the host."""
    if attrs.chown_allowed:
        os.chown(path, attrs.uid, attrs.gid, follow_symlinks=False)
    if not link:
        if stat.S_ISLNK(os.lstat(path).st_mode):  # Linux chmod cannot refuse to follow
            raise OSError(errno.ELOOP, "refusing to change a mode through a symlink", str(path))
        os.chmod(path, mode)
    os.utime(path, (attrs.mtime, attrs.mtime), follow_symlinks=False)


def _mode_for(st: os.stat_result, attrs: CopyAttrs) -> int:
    if attrs.chmod is not None:
        return attrs.chmod
    if stat.S_ISDIR(st.st_mode):
        return 0o755
    return 0o755 if st.st_mode & 0o111 else 0o644


def _remove_existing(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _copy_entry(src: Path, target: Path, attrs: CopyAttrs, st: os.stat_result,
                digests: dict[str, str] | None = None) -> None:
    if stat.S_ISLNK(st.st_mode):
        if target.is_symlink() or target.exists():
            _remove_existing(target)
        os.symlink(os.readlink(src), target)
        _set_attrs(target, 0, attrs, link=True)
        return
    if not stat.S_ISREG(st.st_mode) or placeholders.device_of(os.fspath(src), st) is not None:
        return  # sockets, fifos, devices (and rootless, their placeholders) are not copied
    # Always a new inode: never write into an existing file, which may be a hard
    # link shared with a step-cache snapshot (engine.cache).
    if target.is_symlink() or target.exists():
        _remove_existing(target)
    if digests is None:
        shutil.copyfile(src, target, follow_symlinks=False)
    else:
        digests[os.path.normpath(src)] = _copy_hashing(src, target)
    _set_attrs(target, _mode_for(st, attrs), attrs)


def _copy_hashing(src: Path, target: Path) -> str:
    """Copy a regular file and return the sha256 of the bytes written."""
    import hashlib  # here: a RUN-only command (acbuild run) loads this module, not OpenSSL

    h = hashlib.sha256()
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # as copyfile(follow_symlinks=False)
    with open(fd, "rb", buffering=0) as fin, open(target, "xb") as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def _copy_tree(src_dir: Path, dest_dir: Path, rootfs: Path, attrs: CopyAttrs, rel: str, ignore, written: list[str],
               digests: dict[str, str] | None, meter: Meter, exclude=None) -> None:
    """Copy what is below src_dir into dest_dir, depth first with sorted names, on
    an explicit stack (a context thousands of levels deep is fine); a directory's
    attributes are set when its contents are done. `ignore` sees context paths
    (rel/child), `exclude` paths below src_dir (child)."""
    from acbuild.files import walk

    prefix = "" if rel == "." else rel + "/"

    def prune(child: str, _st) -> bool:
        return (ignore is not None and ignore(prefix + child)) or (exclude is not None and exclude(child))

    with _Copier() as copier:
        for path, child, st, leaving in walk(os.fspath(src_dir), prune=prune if ignore or exclude else None, post_order=True):
            target = dest_dir / child
            if leaving:
                copier.wait()  # its files are in place before its mtime is set
                _set_attrs(target, _mode_for(st, attrs), attrs)
                written.append(_image_path(rootfs, target))
            elif stat.S_ISDIR(st.st_mode):
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()
                if not target.exists():
                    target.mkdir()
            else:
                copier.submit(_copy_entry, Path(path), target, attrs, st, digests)
                if stat.S_ISREG(st.st_mode):
                    meter.advance(st.st_size)
                written.append(_image_path(rootfs, target))


class _Copier:
    """Files of a tree copied by a few threads: creating a file waits on the
    filesystem's journal (up to ms each on a busy disk), and the waits overlap;
    open/read/write/hash release the GIL. Directories are made by the caller, in
    walk order, before anything inside them is submitted, and `wait()` drains every
    copy before a directory's own attributes are set; at most LIMIT copies are in
    flight. Leaving the `with` block waits for all of them, an error or not, so no
    thread writes after the COPY has returned or failed."""

    THREADS = 4
    LIMIT = 64

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="copy")
        self._pending: list = []

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        if len(self._pending) >= self.LIMIT:
            self.wait()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # the first error is raised here, in walk order

    def __enter__(self) -> _Copier:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
