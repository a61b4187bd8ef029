"""The variation harness: the same ACIfile built under different conditions must give
the same image ID and the same .aci bytes. Every build uses --no-cache (and its own
cache dir), so the step cache cannot hide a nondeterministic step.

Baseline: context under one path, umask 022, TZ=UTC, LC_ALL=C, this host's name, files
created in sorted order, root. Each variation changes one thing (the wall time differs
anyway: every build runs later than the baseline):
- path-umask: another, deeper build path and TMPDIR, umask 077 (the checkout's modes change)
- time-tz-locale: a later wall time, TZ=Asia/Tokyo, LC_ALL=C.UTF-8
- hostname: `unshare --uts` with another hostname
- enumeration-order: the context created in shuffled order (readdir order differs; checked)
- rootless: an unprivileged user (runuser) with Debian's python3 (tests/test_rootless.py)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import require
from test_rootless import PYTHON, owned_tree, pythonpath, shared_dir, user  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")

EXAMPLES = {
    # name: (ACIfile in the context, {context path: source file})
    "ACIfile.example": ("ACIfile", {"ACIfile": REPO / "ACIfile.example", "busybox": BUSYBOX,
                                    **{str(p.relative_to(REPO)): p for p in (REPO / "examples/static-site").rglob("*") if p.is_file()}}),
    "multi-stage": ("ACIfile", {"busybox": BUSYBOX,
                                **{str(p.relative_to(REPO / "examples/multi-stage")): p
                                   for p in (REPO / "examples/multi-stage").rglob("*") if p.is_file()}}),
    # A Dockerfile as it is: heredocs, ADD of a tarball, FROM an earlier stage, ENTRYPOINT+CMD (issue 14).
    "dockerfile": ("Dockerfile", {"busybox": BUSYBOX,
                                  **{str(p.relative_to(REPO / "examples/dockerfile")): p
                                     for p in (REPO / "examples/dockerfile").rglob("*") if p.is_file() and p.name != "busybox"}}),
}
BASE_ENV = {"TZ": "UTC", "LC_ALL": "C"}


def make_context(example: str, dest: Path, *, umask: int = 0o022, seed: int | None = None, owner=None) -> Path:
    """Create the context file by file, in sorted or shuffled order, under `umask`."""
    _, files = EXAMPLES[example]
    names = sorted(files)
    if seed is not None:
        random.Random(seed).shuffle(names)
    old = os.umask(umask)
    try:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[name].read_bytes())
            target.chmod(files[name].stat().st_mode & 0o777 & ~umask)
    finally:
        os.umask(old)
    if owner is not None:
        for p in [dest, *dest.rglob("*")]:
            os.lchown(p, owner.pw_uid, owner.pw_gid)
    return dest


def file_args(ctx: Path) -> list[str]:
    """-f the context's ACIfile, or its Dockerfile with the name given by -t."""
    if (ctx / "ACIfile").exists():
        return ["-f", str(ctx / "ACIfile")]
    return ["-f", str(ctx / "Dockerfile"), "-t", "example.com/dockerfile-app:1.0"]


def build(ctx: Path, out: Path, *, env: dict | None = None, umask: int = 0o022, wrap: list[str] = ()) -> str:
    cmd = [*wrap, sys.executable, "-m", "acbuild", "build", "--no-cache", "--cache-dir", str(out.parent / "cache"),
           *file_args(ctx), "-o", str(out)]
    full_env = {**os.environ, **BASE_ENV, **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, preexec_fn=lambda: os.umask(umask), timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def baseline(request, tmp_path_factory):
    top = tmp_path_factory.mktemp("baseline")
    ctx = make_context(request.param, top / "ctx")
    out = top / "out.aci"
    image_id = build(ctx, out)
    return request.param, image_id, out.read_bytes()


def same(baseline, image_id: str, out: Path) -> None:
    _, base_id, base_bytes = baseline
    assert image_id == base_id
    assert out.read_bytes() == base_bytes


def test_path_and_umask(baseline, tmp_path):
    example = baseline[0]
    ctx = make_context(example, tmp_path / "somewhere/else/deeper/ctx", umask=0o077)
    assert (ctx / "busybox").stat().st_mode & 0o777 == 0o700
    tmpdir = tmp_path / "other-tmp"
    tmpdir.mkdir()
    out = tmp_path / "out.aci"
    same(baseline, build(ctx, out, umask=0o077, env={"TMPDIR": str(tmpdir)}), out)


def test_time_timezone_and_locale(baseline, tmp_path):
    example = baseline[0]
    time.sleep(1.1)  # a later wall time than the baseline, whole seconds apart
    ctx = make_context(example, tmp_path / "ctx")
    out = tmp_path / "out.aci"
    same(baseline, build(ctx, out, env={"TZ": "Asia/Tokyo", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}), out)


def test_hostname(baseline, tmp_path):
    require(shutil.which("unshare") is not None and subprocess.run(["unshare", "--uts", "true"]).returncode == 0,
            "unshare --uts is not possible here")
    ctx = make_context(baseline[0], tmp_path / "ctx")
    out = tmp_path / "out.aci"
    wrap = ["unshare", "--uts", "sh", "-c", 'hostname acbuild-other-host && exec "$@"', "sh"]
    same(baseline, build(ctx, out, wrap=wrap), out)


def listings(ctx: Path) -> list[list[str]]:
    return [os.listdir(d) for d in sorted([ctx, *(p for p in ctx.rglob("*") if p.is_dir())])]


def test_directory_enumeration_order(baseline, tmp_path, request):
    example = baseline[0]
    plain = make_context(example, tmp_path / "sorted")
    # ext4 lists a directory in hash order whatever the creation order; tmpfs in creation order
    shm = Path("/dev/shm")
    where = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    request.addfinalizer(lambda: shutil.rmtree(where, ignore_errors=True) if where != tmp_path else None)
    for seed in range(20):
        shuffled = make_context(example, where / f"shuffled-{seed}", seed=seed)
        if listings(shuffled) != listings(plain):
            break
        shutil.rmtree(shuffled)
    else:
        pytest.skip("this file system lists directories in the same order whatever the creation order")
    out = tmp_path / "out.aci"
    same(baseline, build(shuffled, out), out)


def test_rootless(baseline, user, pythonpath, request):  # noqa: F811  (fixtures from test_rootless)
    require(PYTHON.exists(), "needs Debian's python3")  # root: the user fixture requires it
    shared = shared_dir("acbuild-repro-")  # pytest's basetemp is 0700: the user cannot reach it
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    top = owned_tree(shared / "rootless", user)
    ctx = make_context(baseline[0], top / "ctx", owner=user)
    out_dir = owned_tree(top / "out", user)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": pythonpath, "HOME": user.pw_dir, **BASE_ENV}
    cmd = ["runuser", "-u", user.pw_name, "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
           str(PYTHON), "-m", "acbuild", "build", "--no-cache", "--cache-dir", str(out_dir / "cache"),
           *file_args(ctx), "-o", str(out_dir / "out.aci")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    same(baseline, result.stdout.strip(), out_dir / "out.aci")
