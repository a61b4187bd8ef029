"""SOURCE_DATE_EPOCH, whatever its value: every mtime in the image is the clamped
one (a later-than-now epoch included), out-of-range values are refused, RUN steps
see the build's value (so tools like useradd write it, not today), and
copy-to-dir stamps the directories it copies as copy does."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import require
from test_build import BUSYBOX, acbuild

FUTURE = 4102444800  # 2100-01-01: later than any wall clock this suite runs under
MAX_TAR_MTIME = 8589934591  # 11 octal digits, the largest ustar mtime


def busybox_context(tmp_path: Path, acifile: str) -> Path:
    require(BUSYBOX.exists(), "busybox-static is not installed")
    require(os.geteuid() == 0, "RUN as root needs root (CI is root)")
    ctx = tmp_path / "ctx"
    (ctx / "tree/sub").mkdir(parents=True)
    (ctx / "tree/sub/file").write_text("data\n")
    shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "ACIfile").write_text(acifile)
    return ctx


BUILD_EVERYTHING = """\
FROM scratch
NAME example.com/epoch
COPY busybox /bin/busybox
COPY tree /tree
WORKDIR /app/deep
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /made/by/run && echo x > /made/by/run/file && echo $SOURCE_DATE_EPOCH > /epoch"]
EXEC ["/bin/busybox", "true"]
"""


def members(aci: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(aci) as tar:
        return tar.getmembers()


def test_an_epoch_later_than_now_is_every_mtime(tmp_path):
    ctx = busybox_context(tmp_path, BUILD_EVERYTHING)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(FUTURE)}
    acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", tmp_path / "out.aci", env=env)
    stamped = {m.name: m.mtime for m in members(tmp_path / "out.aci")}
    assert {name: t for name, t in stamped.items() if t != FUTURE} == {}


def test_an_epoch_beyond_the_tar_format_is_refused(tmp_path):
    ctx = busybox_context(tmp_path, BUILD_EVERYTHING)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(MAX_TAR_MTIME + 1)}
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "out.aci", env=env, check=False)
    assert result.returncode == 3, result.stderr
    assert "SOURCE_DATE_EPOCH" in result.stderr and str(MAX_TAR_MTIME) in result.stderr
    assert not (tmp_path / "out.aci").exists()


@pytest.mark.parametrize("epoch", [None, "1700000000"])
def test_run_sees_the_builds_epoch(tmp_path, epoch):
    ctx = busybox_context(tmp_path, BUILD_EVERYTHING)
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch:
        env["SOURCE_DATE_EPOCH"] = epoch
    acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "out.aci", env=env)
    with tarfile.open(tmp_path / "out.aci") as tar:
        assert tar.extractfile("rootfs/epoch").read().decode().strip() == (epoch or "0")


def test_useradd_on_debian_writes_the_epochs_day(debian_aci, tmp_path):
    (tmp_path / "ACIfile").write_text(f"FROM {debian_aci}\nNAME example.com/users\nRUN useradd bob\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(19000 * 86400 + 5)}
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "out.aci", "--compression", "none", env=env)
    with tarfile.open(tmp_path / "out.aci") as tar:
        shadow = tar.extractfile("rootfs/etc/shadow").read().decode()
    bob = next(line for line in shadow.splitlines() if line.startswith("bob:"))
    assert bob.split(":")[2] == "19000"  # days since 1970 of the epoch, not of today


def test_copy_to_dir_stamps_copied_directories_as_copy_does(tmp_path):
    """Go acbuild's TestCopyManyDirs / TestCopyDirsAndFiles: the copied tree in the work
    path. Every entry the verbs wrote carries the session's epoch, directories included."""
    src = tmp_path / "src"
    for d in ("dir01", "dir02/dir02.1", "dir03"):
        (src / d).mkdir(parents=True)
    for f in ("dir01/file01", "dir02/file02", "dir02/dir02.1/file02", "dir03/file03", "file01"):
        (src / f).write_text("hello")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    acbuild("--work-path", work, "begin", env=env)
    acbuild("--work-path", work, "copy", src / "dir01", "/copied", env=env)
    acbuild("--work-path", work, "copy-to-dir", src / "dir01", src / "dir02", src / "dir03", src / "file01", "/test", env=env)
    rootfs = work / ".acbuild/currentaci/rootfs"
    stamps = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            stamps[str(path.relative_to(rootfs))] = int(os.lstat(path).st_mtime)
    assert "test/dir02/dir02.1/file02" in stamps
    assert {path: t for path, t in stamps.items() if t != 1700000000} == {}
    acbuild("--work-path", work, "end")
