"""Run a Plan: one Session per needed stage, then write the output stage.

Reads like the recipe it is. Contract: the output appears atomically or not at
all; every temporary work dir is removed, on success, failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from acbuild import plan as p
from acbuild.engine.session import BuildOptions, Session
from acbuild.errors import UsageError


def needed_stages(plan: p.Plan, target: str | None) -> list[p.Stage]:
    """The target stage (default: the last) and the stages it copies from."""
    if target is None:
        final = plan.stages[-1]
    else:
        final = plan.stage(target)
        if final is None:
            names = ", ".join(s.name for s in plan.stages)
            raise UsageError(f'--target: no stage "{target}" (stages: {names})')
    wanted = {final.name}
    for stage in reversed(plan.stages[: final.index + 1]):
        if stage.name in wanted:
            wanted |= {s.from_stage for s in stage.steps if isinstance(s, p.Copy) and s.from_stage}
    return [s for s in plan.stages[: final.index + 1] if s.name in wanted]


def build_plan(
    plan: p.Plan,
    output: Path,
    options: BuildOptions,
    *,
    target: str | None = None,
    compression: str = "gzip",
    signing=None,
) -> str:
    """Build the plan into `output`; returns the image ID."""
    stages = needed_stages(plan, target)
    total = sum(len(s.steps) + 1 for s in stages)
    work_root = Path(tempfile.mkdtemp(prefix="acbuild-build-"))
    stage_rootfs: dict[str, Path] = {}
    step_no = 0
    try:
        session = None
        for stage in stages:
            stage_options = replace(options, stage_rootfs=dict(stage_rootfs))
            step_no += 1
            progress(options, step_no, total, stage.base)
            session = Session.begin(work_root / f"stage-{stage.index}", stage.base, stage_options)
            for step in stage.steps:
                step_no += 1
                progress(options, step_no, total, step)
                session.apply(step)
            stage_rootfs[stage.name] = session.rootfs
        assert session is not None
        return session.write(output, compression=compression, signing=signing)
    finally:
        remove_tree(work_root)


def progress(options: BuildOptions, number: int, total: int, step: p.Instruction) -> None:
    if not options.quiet:
        print(f"[{number}/{total}] {step.describe()}", file=sys.stderr, flush=True)


def remove_tree(path: Path) -> None:
    """rmtree that also removes what RUN left read-only (chmod 0555 dirs)."""

    def make_writable_and_retry(func, failed, _exc):
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
