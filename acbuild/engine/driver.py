"""Run a Plan: one Session per needed stage, then write the output stage, with the
step cache (engine.cache) in between.

    compute_keys      every step's key (engine.stepkeys), before anything runs
    publish_cached    the final key's image is cached: link it to the output, done
    choose_stages     the target, plus the stages its missed COPY --from steps need
    build_stage       restore the last cached step, run the rest, store each result
    write_image       write the target stage, keep the image for the next build

Contract: the output appears atomically or not at all; every temporary work dir is
removed, on success, failure or Ctrl-C. A damaged cache entry is dropped and its
step runs again. The cache is read under a shared lock (`acbuild cache prune`
takes it exclusively).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from acbuild import plan as p
from acbuild.engine.progress import Progress
from acbuild.engine.session import BuildOptions, Session, base_path
from acbuild.aci.writer import check_output_path
from acbuild.errors import ImageError, UsageError
from acbuild.records import dataclass, field, replace
from acbuild.temps import locked_temp_dir, remove_locked_dir, remove_stale_dirs

if TYPE_CHECKING:
    from acbuild.engine.cache.statcache import StatCache

# Steps that change the work dir's files; the others change only the manifest.
_TREE_STEPS = (p.From, p.Copy, p.Run, p.WorkDir)
BUILD_UMASK = 0o022
WORK_PREFIX = "acbuild-build-"


@dataclass
class StepRecord:
    number: int
    stage: str
    instruction: str
    position: str
    cached: bool
    seconds: float = 0.0
    key: str = ""


@dataclass
class BuildResult:
    image_id: str
    name: str
    labels: dict[str, str]
    steps: list[StepRecord] = field(default_factory=list)
    cached_image: bool = False
    files_hashed: int = 0  # context files read to compute keys (the stat cache spares the rest)


def needed_stages(plan: p.Plan, target: str | None) -> list[p.Stage]:
    """The target stage (default: the last) and the stages it copies from, the
    images it copies from (implicit stages: they need nothing) first."""
    final = plan.output(target)
    wanted = {final.name}
    for stage in reversed(plan.stages[: final.index + 1]):
        if stage.name in wanted:
            wanted |= _sources(stage.steps) | ({stage.base.stage} if stage.base.stage else set())
    images = [s for s in plan.stages if s.implicit and s.name in wanted]
    return images + [s for s in plan.stages[: final.index + 1] if s.name in wanted]


def build_plan(
    plan: p.Plan,
    output: Path,
    options: BuildOptions,
    *,
    target: str | None = None,
    compression: str = "gzip",
    signing=None,
    cache=None,
    use_cache: bool = True,
    progress: Progress | None = None,
    shared=None,
) -> BuildResult:
    """Build the plan into `output`. `cache` (engine.cache.StepCache) enables the step
    cache; with use_cache=False nothing is looked up, and results replace old entries.
    `shared` (engine.cache.share.SharedCache) imports entries from a registry before
    the steps run and exports them after the build."""
    check_output_path(output)
    if shared is not None and cache is None:
        raise UsageError("--cache-from/--cache-to need the step cache")
    progress = progress or (options.reporter if isinstance(options.reporter, Progress) else Progress("auto"))
    build = _Build(plan, needed_stages(plan, target), output, options, compression, signing, cache, use_cache, progress,
                   shared)
    if cache is None:
        return build.run()
    with cache.locked():
        return build.run()


class _ReadCheck:
    """Where a context COPY records the sha256 of each file it read (host path ->
    digest; its threads call in): each is compared with the digest the key was made
    from at once, and only the first changed path (by name) is kept, so memory does
    not grow with the file count."""

    def __init__(self, expected: Callable[[str], str | None]):
        self.expected = expected
        self.changed: str | None = None
        self._lock = threading.Lock()

    def __setitem__(self, path: str, digest: str) -> None:
        if self.expected(path) != digest:
            with self._lock:
                if self.changed is None or path < self.changed:
                    self.changed = path


class _Build:
    def __init__(self, plan, stages, output, options, compression, signing, cache, use_cache, progress, shared=None):
        self.plan, self.stages, self.output, self.options = plan, stages, output, options
        self.shared_cache = shared
        self.compression, self.signing, self.cache, self.use_cache = compression, signing, cache, use_cache
        self.progress = progress
        self.total = sum(len(s.steps) + 1 for s in stages)
        self.first_number: dict[str, int] = {}
        number = 1
        for stage in stages:
            self.first_number[stage.name] = number
            number += len(stage.steps) + 1
        self.keys: dict[str, list[str]] = {}
        self.sessions: dict[str, Session] = {}
        self.records: dict[int, StepRecord] = {}
        self.work_root: Path | None = None
        self.files_hashed = 0
        self.key_stats: StatCache | None = None  # digest_of: the sha256 each key was made from
        # Set when a COPY read other bytes than its key was made from (a file changed
        # during the build): nothing from then on is cached, or the cache would hold
        # content Y under content X's key.
        self.unstable = False

    def run(self) -> BuildResult:
        result = self.build()
        if self.shared_cache is not None and self.shared_cache.cache_to:
            self.export_shared()
        return result

    def build(self) -> BuildResult:
        final = self.stages[-1]
        remove_stale_dirs(WORK_PREFIX)  # work dirs of killed builds (a cache hit makes none)
        if self.cache is not None:
            self.compute_keys()
            self.import_shared()
            cached = self.publish_cached(final) if self.use_cache else None
            if cached is not None:
                return cached
        # locked while we live: a later build removes it if we are killed (acbuild.temps)
        self.work_root, lock = locked_temp_dir(WORK_PREFIX)
        try:
            # Steps see umask 022 whatever the caller's (RUN inherits it; so do the dirs
            # FROM makes): the image must not depend on it. The output file keeps the caller's.
            caller_umask = os.umask(BUILD_UMASK)
            try:
                for stage in self.stages:
                    if stage.name in self.choose_stages():
                        self.build_stage(stage)
                    elif stage.name not in self.sessions:
                        for idx in range(len(stage.steps) + 1):
                            self.report(stage, idx, cached=True)
            finally:
                os.umask(caller_umask)
            self.key_stats = None  # every COPY is checked: the table is not held while the image is written
            return self.write_image(final)
        finally:
            remove_locked_dir(self.work_root, lock)

    # -- the step cache in a registry (--cache-from, --cache-to) -------------------------

    def import_shared(self) -> None:
        if self.shared_cache is None or not self.shared_cache.cache_from or not self.use_cache:
            return
        from acbuild.engine.cache.share import import_entries

        count = import_entries(self.cache, [self.keys[s.name] for s in self.stages], self.shared_cache.cache_from,
                               self.shared_cache.registry)
        if count:
            self.progress.note(f"imported {count} cache entries from {self.shared_cache.cache_from}")

    def export_shared(self) -> None:
        from acbuild.engine.cache.share import export_entries

        pushed = export_entries(self.cache, [k for keys in self.keys.values() for k in keys],
                                self.shared_cache.cache_to, self.shared_cache.registry)
        self.progress.note(f"exported the step cache to {pushed.reference}@{pushed.digest} "
                           f"({pushed.stats.uploaded} blobs uploaded, {pushed.stats.present} already there)")

    # -- keys and full hits ------------------------------------------------------------

    def compute_keys(self) -> None:
        from acbuild.engine.cache.statcache import StatCache
        from acbuild.engine.cache.keys import KeyMaker

        stat_cache = StatCache.for_context(self.cache.root, self.options.context)
        maker = KeyMaker(self.options, stat_cache)
        finals: dict[str, str] = {}
        for stage in self.stages:
            self.keys[stage.name] = maker.stage_keys(stage, finals)
            finals[stage.name] = self.keys[stage.name][-1]
        self.files_hashed = stat_cache.hashed
        self.key_stats = stat_cache
        try:
            stat_cache.save()
        except OSError:
            pass  # only a speed-up

    def publish_cached(self, final: p.Stage) -> BuildResult | None:
        from acbuild.temps import locked_temp_copy
        from acbuild.trust.sign import publish

        hit = self.cache.image(self.keys[final.name][-1], self.compression)
        if hit is None:
            return None
        aci, image_id, about = hit
        for stage in self.stages:
            for idx in range(len(stage.steps) + 1):
                self.report(stage, idx, cached=True)
        try:
            fd, tmp = locked_temp_copy(aci, self.output, link=shares_with_output(aci, self.output))
        except OSError as err:
            raise ImageError(f"write {self.output}: {err.strerror}") from err
        try:
            publish(tmp, self.output, self.signing, reporter=self.options.reporter)
        finally:
            tmp.unlink(missing_ok=True)  # renaming onto the same inode leaves it in place
            os.close(fd)
        self.cache.touch(self.keys[final.name][-1])
        self.progress.image(image_id, str(self.output), True)
        return BuildResult(image_id, about["name"], about["labels"], self.step_records(), cached_image=True,
                           files_hashed=self.files_hashed)

    def last_hit(self, stage: p.Stage, below: int | None = None) -> int:
        """Index (0 = FROM) of the last step with a usable cache entry, or -1."""
        if self.cache is None or not self.use_cache:
            return -1
        keys = self.keys[stage.name]
        for idx in reversed(range(len(keys) if below is None else below)):
            if self.cache.has(keys[idx]):
                return idx
        return -1

    def choose_stages(self) -> set[str]:
        """The target, and stages copied from by steps that will run."""
        wanted = {self.stages[-1].name}
        for stage in reversed(self.stages):
            if stage.name in wanted and stage.name not in self.sessions:
                start = self.last_hit(stage)
                wanted |= _sources(stage.steps[max(start, 0):])
                if start < 0 and stage.base.stage:  # its FROM runs: the base stage must be there
                    wanted.add(stage.base.stage)
        return wanted

    # -- stages --------------------------------------------------------------------------

    def build_stage(self, stage: p.Stage) -> Session:
        from acbuild.aci.manifest import ImageManifest
        from acbuild.engine.cache.stepcache import Damaged

        if stage.name in self.sessions:
            return self.sessions[stage.name]
        workdir = self.work_root / f"stage-{stage.index}"
        keys = self.keys.get(stage.name, [])
        start, manifest = self.last_hit(stage), None
        while start >= 0:
            try:
                manifest = ImageManifest.from_json(self.cache.restore(keys[start], workdir))
                break
            except Damaged:
                self.progress.note(f"cache entry for step {self.first_number[stage.name] + start} was damaged; dropped it")
                start = self.last_hit(stage, below=start)
        for name in sorted(_sources(stage.steps[max(start, 0):])):  # sources of the steps that will run
            if name not in self.sessions:
                self.build_stage(self.plan.stage(name))
        base = stage.base
        if start < 0 and base.stage:  # FROM an earlier stage: its rootfs and manifest, as a layout
            parent = self.build_stage(self.plan.stage(base.stage))
            parent.save()
            base = replace(base, base=str(parent.workdir))
        options = replace(self.options, stage_rootfs={n: s.rootfs for n, s in self.sessions.items()})
        for idx in range(start + 1):
            self.report(stage, idx, cached=True)
        session = None
        tree = None
        if manifest is not None:
            session = Session(workdir, manifest, options)
            session.shares_inodes = True
            tree = self.cache.meta(keys[start])["tree"]
        # A directory base is on disk already: a snapshot of it would only double the disk
        # a RUN needs where overlayfs is missing (it must copy every file it shares with a
        # snapshot), so it is not stored, nor are the manifest-only steps up to the first
        # that changes files.
        unsnapshotted = start < 0 and stage.base.base != "scratch" and base_path(stage.base, options).is_dir()
        for idx in range(start + 1, len(stage.steps) + 1):
            step = stage.base if idx == 0 else stage.steps[idx - 1]
            record = self.report(stage, idx, cached=False)
            began = time.monotonic()
            if idx == 0:
                session = Session.begin(workdir, base, options)
            else:
                session.last_layer = None
                session.records_layers = self.cache is not None
                if self.cache is not None:
                    session.copy_record = self.read_check
                session.apply(step)
                if isinstance(step, p.Copy) and not step.from_stage:
                    self.check_copied(session.copied, record.number)
                    session.copied = {}  # checked (it refers to the keys' table of every file)
            record.seconds = time.monotonic() - began
            self.progress.step_done(record.number, self.total, record.seconds)
            unsnapshotted = unsnapshotted and not (idx > 0 and isinstance(step, _TREE_STEPS))
            if self.cache is not None and not self.unstable and not unsnapshotted:
                tree = self.store(stage, session, keys[idx], step, tree)
        self.sessions[stage.name] = session
        return session

    def read_check(self) -> _ReadCheck:
        return _ReadCheck(self.key_stats.digest_of if self.key_stats is not None else lambda path: None)

    def check_copied(self, copied, number: int) -> None:
        """Did a COPY read other bytes than its key was made from?"""
        if self.cache is None or self.unstable or not isinstance(copied, _ReadCheck):
            return
        if copied.changed is not None:
            self.unstable = True
            self.progress.note(f"step {number}: {copied.changed} changed while the build read it; "
                               "this build's results are not cached")

    def store(self, stage: p.Stage, session: Session, key: str, step: p.Instruction, tree: str | None) -> str | None:
        """Save the step's result; returns the key of the entry holding the current tree."""
        manifest = session.manifest.to_json()
        if not isinstance(step, _TREE_STEPS) and tree is not None and self.cache.has(tree):
            self.cache.store(key, session.workdir, manifest, tree, replace=not self.use_cache)
            return tree
        # A step that knows what it changed (engine.execute.layer: a RUN over overlayfs, COPY,
        # ADD, WORKDIR) is stored as that layer on the tree before it.
        self.cache.store(key, session.workdir, manifest, None, replace=not self.use_cache,
                         layer=session.last_layer, parent=tree)
        session.last_layer = None  # stored: its set of every changed path is needed no more
        session.shares_inodes = True
        return key if self.cache.has(key) else None

    def write_image(self, final: p.Stage) -> BuildResult:
        session = self.sessions[final.name]
        image_id = session.write(self.output, compression=self.compression, signing=self.signing)
        about = {"name": session.manifest.name, "labels": {label.name: label.value for label in session.manifest.labels}}
        if self.cache is not None and not self.unstable:
            self.cache.store_image(self.keys[final.name][-1], self.compression, self.output, image_id, about)
        self.progress.image(image_id, str(self.output), False)
        return BuildResult(image_id, about["name"], about["labels"], self.step_records(), files_hashed=self.files_hashed)

    # -- reporting --------------------------------------------------------------------------

    def report(self, stage: p.Stage, idx: int, *, cached: bool) -> StepRecord:
        step = stage.base if idx == 0 else stage.steps[idx - 1]
        number = self.first_number[stage.name] + idx
        if cached and idx == 0:
            self.verify_cached_base(stage.base)
        keys = self.keys.get(stage.name)
        record = StepRecord(number, stage.name, step.describe(), str(step.pos), cached, 0.0, keys[idx] if keys else "")
        self.records[number] = record
        self.progress.step(number, self.total, stage.name, record.instruction, record.position, cached)
        return record

    def verify_cached_base(self, base: p.From) -> None:
        """A cached FROM still passes the signature policy of this build (the trust
        store may have changed since the step was cached)."""
        from acbuild.engine.base import classify_base, stored_base
        from acbuild.trust.policy import verify_base

        if base.stage:  # an earlier stage of this build: nothing signed
            return
        kind, path = classify_base(base, self.options.context)
        if kind == "name":
            verify_base(stored_base(base, self.options).aci, base, self.options, by_name=True)
        elif kind == "file" and path.is_file():
            verify_base(path, base, self.options)

    def step_records(self) -> list[StepRecord]:
        return [self.records[n] for n in sorted(self.records)]


def _sources(steps) -> set[str]:
    """The stages these steps copy from (COPY --from, RUN --mount=from=)."""
    names = {s.from_stage for s in steps if isinstance(s, p.Copy) and s.from_stage}
    return names | {m.from_stage for s in steps if isinstance(s, p.Run) for m in s.mounts if m.from_stage}


def shares_with_output(cached: Path, output: Path) -> bool:
    """May the cached image be hard-linked to `output`? Only when no other file
    shares it yet, or `output` already is it: two outputs must never be one inode
    (an edit of one would change the other). The cache itself notices edits by stat."""
    st = os.stat(cached)
    try:
        out = os.stat(output)
    except FileNotFoundError:
        return st.st_nlink == 1
    return (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino) or st.st_nlink == 1
