"""Rootless builds through the CLI: `acbuild build` run as an unprivileged user (runuser),
with Debian's /usr/bin/python3 and a world-readable copy of the package and its
dependencies. The images must pass actool, be owned 0:0 throughout, and have the same
image ID as the same build done as root. Nothing mocked: real user namespaces."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from conftest import require
from rootlesstools import BUSYBOX, PYTHON, REPO, acbuild, owned_tree, pythonpath, shared_dir  # noqa: F401 (pythonpath: a fixture)


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "sets up an unprivileged user (CI is root)")
    require(BUSYBOX.exists() and PYTHON.exists(), "needs busybox-static and Debian's python3")


@pytest.fixture(scope="module")
def user(unprivileged_user) -> pwd.struct_passwd:
    """conftest's session-wide acbuild-test user (deleted at the end if the session made it)."""
    return unprivileged_user


@pytest.fixture
def tmp_path():
    """Shadows pytest's tmp_path: see shared_dir."""
    top = shared_dir("acbuild-rootless-")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def example_context(top: Path, user: pwd.struct_passwd) -> Path:
    ctx = top / "ctx"
    ctx.mkdir()
    shutil.copy2(REPO / "ACIfile.example", ctx / "ACIfile")
    shutil.copytree(REPO / "examples/static-site", ctx / "examples/static-site")
    shutil.copy2(BUSYBOX, ctx / "busybox")
    for p in [ctx, *ctx.rglob("*")]:
        os.lchown(p, user.pw_uid, user.pw_gid)
    return ctx


def validate(actool: str, aci: Path) -> None:
    proc = subprocess.run([actool, "validate", str(aci)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def owners(aci: Path) -> set[tuple[int, int]]:
    with tarfile.open(aci) as t:
        return {(i.uid, i.gid) for i in t.getmembers()}


def test_acifile_example_builds_rootless_with_root_owned_files_and_the_root_image_id(
        user, pythonpath, tmp_path, actool):
    top = owned_tree(tmp_path / "rootless", user)
    ctx = example_context(top, user)
    out = top / "out"
    owned_tree(out, user)
    rootless_id = acbuild(["build", "-q", "-f", str(ctx / "ACIfile"), "-o", str(out / "example.aci")], pythonpath, user)
    root_id = acbuild(["build", "-q", "-f", str(ctx / "ACIfile"), "-o", str(tmp_path / "root.aci")], pythonpath, None)
    validate(actool, out / "example.aci")
    validate(actool, tmp_path / "root.aci")
    assert owners(out / "example.aci") == {(0, 0)}
    assert rootless_id == root_id
    assert (out / "example.aci").read_bytes() == (tmp_path / "root.aci").read_bytes()


DEP_BASE = """FROM scratch
NAME example.com/busybox
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""
DEP_APP = """FROM scratch
NAME example.com/app
DEPENDENCY example.com/busybox
RUN mkdir -p /etc && echo hello > /etc/motd && rm /bin/vi
EXEC ["/bin/sh"]
"""


def test_dependency_with_overlayfs_in_a_user_namespace(user, pythonpath, tmp_path, actool):
    """DEPENDENCY + RUN deleting a dependency file, rootless (overlayfs in the user
    namespace, user.overlay.* xattrs) and as root: the same image, and no build dir
    left behind (overlayfs leaves its work dir mode 000 inside the user namespace)."""
    ids = {}
    for who in ("rootless", "root"):
        top = owned_tree(tmp_path / who, user)
        # The build's own TMPDIR: where its acbuild-build-* dirs go, and where a leftover
        # shows, whatever other builds on the machine do meanwhile in /tmp.
        tmp = owned_tree(top / "tmp", user)
        ctx = top / "ctx"
        ctx.mkdir()
        shutil.copy2(BUSYBOX, ctx / "busybox")
        (ctx / "ACIfile").write_text(DEP_BASE)
        (top / "app").mkdir()
        (top / "app/ACIfile").write_text(DEP_APP)
        for p in [top, *top.rglob("*")]:
            os.lchown(p, user.pw_uid, user.pw_gid)
        runner = user if who == "rootless" else None
        env = {"TMPDIR": str(tmp)}
        # --no-cache: a cached step would skip the RUN, and the overlay with it
        fresh = ["--no-cache", "--cache-dir", str(top / "cache")]
        acbuild(["build", "-q", *fresh, "-f", str(ctx / "ACIfile"), "-o", str(top / "busybox.aci")],
                pythonpath, runner, env)
        ids[who] = acbuild(["build", "-q", *fresh, "-f", str(top / "app/ACIfile"), "-o", str(top / "app.aci"),
                            "--image-dir", str(top)], pythonpath, runner, env)
        assert sorted(p.name for p in tmp.iterdir()) == [], f"{who} build left these in its TMPDIR"
        validate(actool, top / "app.aci")
        with tarfile.open(top / "app.aci") as t:
            names = sorted(i.name for i in t.getmembers())
            assert not any(i.ischr() for i in t.getmembers())
        assert names == ["manifest", "rootfs", "rootfs/etc", "rootfs/etc/motd"]
        assert owners(top / "app.aci") == {(0, 0)}
    assert ids["rootless"] == ids["root"]
