"""Step cache keys: what a step's result depends on, hashed, chained from FROM.

    key(FROM)   = sha256(VERSION, settings, FROM without its alias, base digest)
    key(step k) = sha256(key(k-1), the instruction without its position, inputs)

- settings: what changes the bytes of every step: SOURCE_DATE_EPOCH, the effective
  uid (rootless builds own their files) and the user namespace's id maps
  (acbuild.userns), the default RUN network, overlay on/off,
  the dependency search path.
- the instruction: `as_dict()` minus the position; ARG values are already
  substituted and a RUN's ARG environment (arg_env) is part of it.
- inputs: COPY from the context: every copied entry's name, type, content sha256
  (through the stat cache), exec bit (no mode at all with --chmod) and link target,
  after .acbuildignore; never mtimes or owners (COPY sets both). COPY --from: the
  source stage's final key. RUN --mount=type=bind: the bound path's content with full
  modes, after .acbuildignore. RUN --mount=type=cache: not keyed (as in BuildKit).
  FROM IMAGE.aci: the file's sha256; FROM DIR: its content with full modes; FROM an
  earlier stage: that stage's final key; FROM NAME: the image ID it resolves to
  (engine.base); FROM scratch: nothing more.

A source that cannot be read is keyed as such; the step then misses and runs, and
reports the real error. Contract: pure apart from reading files; the same inputs give
the same keys on any machine.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import stat
from pathlib import Path

from acbuild import plan as p
from acbuild.engine.execute.copy import select_sources
from acbuild.engine.execute.paths import resolve_in_root
from acbuild.engine.cache.statcache import SIG_SIZE, StatCache, pack_sig
from acbuild.errors import AcbuildError
from acbuild.userns import describe_mapping

VERSION = "acbuild-step-cache-1"
SPLIT_MIN_FILES = 5000  # a context the stat cache knows this many files of is walked in two processes


def settings_text(options) -> str:
    from acbuild.engine.deps.overlay import NO_OVERLAY_ENV

    return json.dumps({
        "source_date_epoch": options.source_date_epoch,
        "euid": os.geteuid(),
        "id_maps": describe_mapping(),  # the same files on disk are other ids under another map
        "network": options.network,
        "no_overlay": os.environ.get(NO_OVERLAY_ENV, "") not in ("", "0"),
        "image_dirs": [str(d) for d in options.image_dirs],
        # --platform: the images picked from an index and scratch's os/arch labels
        **({"platform": str(options.platform)} if options.platform else {}),
    }, sort_keys=True)


def _h(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def canonical(i: p.Instruction) -> str:
    data = i.as_dict()
    data.pop("at", None)
    data.pop("alias", None)  # renaming a stage does not change what it holds
    data.pop("from_stage", None)  # replaced by the source stage's key
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


_by_name = operator.attrgetter("name")


def _dir_line(name: str, mode: int, full_modes: bool) -> str:
    return f"D {name} {stat.S_IMODE(mode) if full_modes else 0:o}\n"


class KeyMaker:
    def __init__(self, options, stat_cache: StatCache):
        self.options = options
        self.stat = stat_cache
        self.settings = settings_text(options)
        ignore = options.ignore
        self.ignore_text = ignore.digest_text() if hasattr(ignore, "digest_text") else ""

    def stage_keys(self, stage: p.Stage, final_keys: dict[str, str]) -> list[str]:
        """Keys for the FROM and each step; `final_keys` maps earlier stage names to their last key."""
        base = "stage " + final_keys.get(stage.base.stage, "?") if stage.base.stage else self.base_digest(stage.base)
        key = _h(VERSION, self.settings, canonical(stage.base), base)
        keys = [key]
        for step in stage.steps:
            key = _h(key, canonical(step), self.inputs(step, final_keys))
            keys.append(key)
        return keys

    def base_digest(self, base: p.From) -> str:
        from acbuild.engine.base import classify_base, stored_base

        kind, path = classify_base(base, self.options.context)
        if kind == "scratch":
            return ""
        if kind == "oci":  # the manifest digest it resolves to now
            from acbuild.engine.session import oci_convert_options, stage_options
            from acbuild.oci.bases import anchored, source_digest

            try:
                return "oci " + source_digest(anchored(base.base, self.options.context),
                                              oci_convert_options(stage_options(base, self.options)))
            except AcbuildError as err:
                raise AcbuildError(f"FROM {base.base}: {err.message}", base.pos) from err
        if kind == "name":  # the image it resolves to: a new upstream image is a miss
            try:
                return "image " + stored_base(base, self.options).image_id
            except AcbuildError as err:  # the step itself will fail and say why
                return f"unresolved {err}"
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                return "dir " + self.tree_digest(path, full_modes=True)
            return "file " + self.stat.digest(os.fspath(path), st)
        except OSError as err:
            return f"unreadable {err.errno}"

    def inputs(self, step: p.Instruction, final_keys: dict[str, str]) -> str:
        if isinstance(step, p.Copy):
            if step.from_stage:
                return "stage " + final_keys.get(step.from_stage, "?")
            return "context " + self.copy_digest(step)
        if isinstance(step, p.Run):
            parts = []
            for mount in step.mounts:
                if mount.from_stage:
                    parts.append("stage " + final_keys.get(mount.from_stage, "?"))
                elif mount.type == "bind":
                    try:
                        source = resolve_in_root(self.options.context, mount.source)
                        # What the step sees: the context path less what .acbuildignore hides.
                        rel = os.path.relpath(source, Path(self.options.context).resolve())
                        h = hashlib.sha256()
                        self._walk(h, source, rel, os.lstat(source), True, True, self.options.ignore)
                        parts.append(h.hexdigest())
                    except (OSError, AcbuildError) as err:
                        parts.append(f"unreadable {err}")
            return " ".join(parts)
        if isinstance(step, p.Dependency):
            return "dependency " + self.dependency_digest(step)
        return ""

    def dependency_digest(self, step: p.Dependency) -> str:
        """The .aci files a dependency resolves to (with its own dependencies), by
        content: a dependency found by name that is replaced must not hit the cache."""
        from acbuild.aci import manifest as m
        from acbuild.engine.deps.render import flatten, image_index

        dep = m.Dependency(step.image_name, step.image_id, [m.Label(k, v) for k, v in step.labels], step.size)
        try:
            layers = flatten(m.ImageManifest(name="acbuild-dependencies", dependencies=[dep]),
                             image_index(self.options), step.pos)
            return " ".join(self.stat.digest(os.fspath(layer.aci), os.stat(layer.aci)) for layer in layers[1:])
        except (OSError, AcbuildError) as err:  # the step itself will fail and say why
            return f"unresolved {err}"

    def copy_digest(self, step: p.Copy) -> str:
        """The context files a COPY takes, as copy.copy_into_rootfs selects them."""
        h = hashlib.sha256(self.ignore_text.encode())
        exec_bit = step.chmod is None
        context = self.options.context
        ignore = self.options.ignore
        inline = dict(step.inline)  # heredoc texts are in the instruction itself; URLs are keyed by URL and checksum
        sources = tuple(s for s in step.sources if s not in inline and "://" not in s)
        if not sources:
            return h.hexdigest()
        try:
            matches = select_sources(context, sources, step.pos, ignore=ignore, parents=step.parents)
        except AcbuildError as err:  # the COPY itself will fail with this message
            return f"error {err.message}"
        for rel, host, st in matches:
            h.update(f"S {rel}\n".encode("utf-8", "surrogateescape"))
            try:
                self._walk(h, host, rel, st, exec_bit, False, ignore)
            except OSError as err:
                h.update(f"E {rel} {err}\n".encode())
        return h.hexdigest()

    def tree_digest(self, top: Path, *, full_modes: bool) -> str:
        h = hashlib.sha256()
        self._walk(h, top, ".", os.lstat(top), True, full_modes, None)
        return h.hexdigest()

    def _walk(self, h, path, rel: str, st: os.stat_result, exec_bit: bool, full_modes: bool, ignore) -> None:
        """Feed one entry (and a directory's entries, sorted) to h. Hot on no-op rebuilds
        (20,000 files: one lstat each, no reads when the stat cache knows the file): a
        large tree is walked in two processes (`_walk_in_two`), else in this one.
        Paths are normalized once at the top: the joins below keep them normal."""
        top = os.path.normpath(os.fspath(path))
        if stat.S_ISDIR(st.st_mode) and self._worth_splitting() and self._walk_in_two(h, top, rel, st, exec_bit,
                                                                                       full_modes, ignore):
            return
        lines: list[str] = []

        def flush() -> None:
            h.update("".join(lines).encode("utf-8", "surrogateescape"))
            lines.clear()

        try:
            self._lines(lines, flush, top, rel, st, exec_bit, full_modes, ignore)
        finally:
            flush()  # on an error too: the lines before it are part of the key, as they were

    def _worth_splitting(self) -> bool:
        """A second process pays (a fork, the results passed back) on a large tree the
        stat cache knows, with a second CPU to run on."""
        known = len(self.stat.previous) + len(self.stat.entries)
        return known >= SPLIT_MIN_FILES and len(os.sched_getaffinity(0)) >= 2

    def _walk_in_two(self, h, top: str, rel: str, st: os.stat_result, exec_bit: bool, full_modes: bool,
                     ignore) -> bool:
        """Feed h the key lines of the tree at `top`, the same as `_lines` gives, from
        two processes: the entries two levels down (each with its subtree) are dealt in
        turn to this process and a forked child, which writes each one's lines, then
        where they are and the stat-cache entries it looked at, to a memfd (so it never
        waits on a reader, and neither side holds the other's half: a 100,000-file tree
        peaked at 120 MiB when the lines came back as one object). False, h untouched,
        when anything fails before the lines are fed (the caller then walks alone, and
        meets the error where a lone walk would)."""
        import marshal

        def dir_line(name: str, mode: int) -> str:
            return _dir_line(name, mode, full_modes)

        def listing(directory: str) -> list[os.DirEntry]:
            with os.scandir(directory) as it:
                return sorted(it, key=_by_name)

        # The walk order: ("text", line) made here, or (path, rel, stat) walked by a worker.
        units: list[tuple] = [("text", dir_line(rel, st.st_mode))]
        prefix, base = ("" if rel == "." else rel + "/"), top.rstrip("/") + "/"
        try:
            for entry in listing(top):
                child = prefix + entry.name
                if ignore is not None and ignore(child):
                    continue
                est = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(est.st_mode):
                    units.append((base + entry.name, child, est))
                    continue
                units.append(("text", dir_line(child, est.st_mode)))
                for sub in listing(base + entry.name):
                    grandchild = child + "/" + sub.name
                    if ignore is None or not ignore(grandchild):
                        units.append((f"{base}{entry.name}/{sub.name}", grandchild, sub.stat(follow_symlinks=False)))
        except OSError:
            return False
        work = [i for i, unit in enumerate(units) if unit[0] != "text"]
        theirs = set(work[1::2])
        if not theirs:
            return False

        def unit_text(unit: tuple) -> str:
            lines: list[str] = []
            self._lines(lines, None, unit[0], unit[1], unit[2], exec_bit, full_modes, ignore)
            return "".join(lines)

        def write_all(fd: int, data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

        cache = self.stat
        out = os.memfd_create("acbuild-keys", os.MFD_CLOEXEC)
        try:
            pid = os.fork()
            if pid == 0:  # the child: its half, then its results, then gone (no cleanup of the parent's)
                code = 1
                try:
                    cache.begin_child()
                    spans, at = {}, 0  # unit -> (offset, length) of its lines in the memfd
                    for i in sorted(theirs):
                        data = unit_text(units[i]).encode("utf-8", "surrogateescape")
                        write_all(out, data)
                        spans[i], at = (at, len(data)), at + len(data)
                    tail = marshal.dumps((spans, cache.child_result()))
                    write_all(out, tail + len(tail).to_bytes(8, "little"))
                    code = 0
                finally:
                    os._exit(code)
            try:
                texts = {i: unit_text(units[i]) for i in work if i not in theirs}
            finally:
                _, status = os.waitpid(pid, 0)
            if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                raise ValueError("the walk's child failed")
            size = os.fstat(out).st_size
            tail_size = int.from_bytes(os.pread(out, 8, size - 8), "little")
            spans, their_cache = marshal.loads(os.pread(out, tail_size, size - 8 - tail_size))
        except (OSError, ValueError, EOFError):  # ValueError, EOFError: the child failed, or its memfd is not what it writes
            os.close(out)
            return False
        try:  # from here on h is fed: an error now is the walk's (the caller records it)
            cache.absorb(their_cache)
            for i, unit in enumerate(units):  # in walk order, each part once
                if unit[0] == "text":
                    h.update(unit[1].encode("utf-8", "surrogateescape"))
                elif i in theirs:
                    h.update(os.pread(out, spans[i][1], spans[i][0]))
                else:
                    h.update(texts.pop(i).encode("utf-8", "surrogateescape"))
        finally:
            os.close(out)
        return True

    def _lines(self, lines: list[str], flush, top: str, rel: str, st: os.stat_result, exec_bit: bool,
               full_modes: bool, ignore) -> None:
        """Append the key lines of one entry (a directory: with its entries, sorted) to
        `lines`, calling flush() (when given) now and then to bound them. Inlined for
        speed: depth first with sorted names, as a recursion would, on an explicit stack
        of iterators (a 1,500-level context overflowed Python's); the stat cache's hit
        test inlined; lines built as text."""
        cache = self.stat
        seen, previous, entries, digest, hash_file = cache.entries.get, cache.previous.pop, cache.entries, cache.digest, cache.hash
        S_ISREG, S_ISDIR, S_ISLNK, S_IMODE = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK, stat.S_IMODE
        line = lines.append

        def file_mode(st_mode: int) -> int:
            if full_modes:
                return S_IMODE(st_mode)
            return 0o111 if exec_bit and st_mode & 0o111 else 0

        if S_ISDIR(st.st_mode):
            line(_dir_line(rel, st.st_mode, full_modes))
        elif S_ISREG(st.st_mode):
            line(f"F {rel} {file_mode(st.st_mode):o} {digest(top, st)}\n")
            return
        elif S_ISLNK(st.st_mode):
            line(f"L {rel} {os.readlink(top)}\n")
            return
        else:
            if full_modes:
                line(f"O {rel} {st.st_mode:o} {st.st_rdev}\n")
            return

        def children(directory: str):
            # Listed through a directory fd: each lstat then resolves one name, not the
            # whole path (-12% on the medium tree).
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=_by_name)
                for entry in entries:
                    entry.stat(follow_symlinks=False)  # cached in the entry, made while fd is open
            finally:
                os.close(fd)
            return iter(entries)

        stack, prefixes, dirs = [children(top)], ["" if rel == "." else rel + "/"], [top.rstrip("/") + "/"]
        while stack:
            prefix = prefixes[-1]
            for entry in stack[-1]:
                child = prefix + entry.name
                if ignore is not None and ignore(child):
                    continue
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if S_ISREG(mode):
                    child_path = dirs[-1] + entry.name
                    sig = pack_sig(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                    hit = seen(child_path) or previous(child_path, None)  # StatCache.known, inlined
                    if hit is not None and hit.startswith(sig):
                        entries[child_path] = hit
                        value = hit[SIG_SIZE:].hex()
                    else:
                        value = hash_file(child_path, st, sig)
                    line(f"F {child} {file_mode(mode):o} {value}\n")
                elif S_ISDIR(mode):
                    line(_dir_line(child, mode, full_modes))
                    stack.append(children(dirs[-1] + entry.name))
                    prefixes.append(child + "/")
                    dirs.append(dirs[-1] + entry.name + "/")
                    if flush is not None and len(lines) > 4096:  # bounded memory on any tree
                        flush()
                    break  # its entries first; then this directory's iterator resumes
                elif S_ISLNK(mode):
                    line(f"L {child} {os.readlink(dirs[-1] + entry.name)}\n")
                elif full_modes:
                    line(f"O {child} {mode:o} {st.st_rdev}\n")
            else:
                stack.pop()
                prefixes.pop()
                dirs.pop()
