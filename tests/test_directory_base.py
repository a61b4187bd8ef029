"""FROM DIR / begin DIR on trees with special files: a real Debian rootfs made by
mmdebstrap (tests/debian.py), and small trees with a fifo, a device node and a
socket. Device nodes and fifos are recreated as what they are, never opened (the
old code read /dev/full until the disk was full); sockets are skipped with a notice."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import require
from test_build import acbuild


def tree_size(root: Path) -> int:
    """Bytes the tree takes on disk (allocated blocks, as du counts them)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class Tmpfs:
    """A size-limited tmpfs mounted for one test: what the build writes cannot exceed it."""

    def __init__(self, path: Path, size: int):
        self.path = path
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)


def test_from_debian_rootfs_directory_runs_dpkg_within_twice_its_size(debian_rootfs, tmp_path):
    size = tree_size(debian_rootfs)
    disk = Tmpfs(tmp_path / "disk", 2 * size)
    try:
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "ACIfile").write_text(
            f"FROM {debian_rootfs}\n"
            "RUN dpkg -l > /dpkg-list\n"
            "NAME example.com/debian-dpkg\n"
            'EXEC ["/bin/true"]\n'
        )
        out = disk.path / "debian.aci"
        env = {**os.environ, "TMPDIR": str(disk.path), "ACBUILD_CACHE_DIR": str(disk.path / "cache")}
        built = subprocess.run(
            [*acbuild_argv(), "build", "-f", ctx / "ACIfile", "-o", out],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert built.returncode == 0, f"build failed with {disk.used()} of {2 * size} bytes used:\n{built.stderr}"
        with tarfile.open(out) as tar:
            full = tar.getmember("rootfs/dev/full")
            assert full.ischr() and (full.devmajor, full.devminor) == (1, 7)
            listing = tar.extractfile("rootfs/dpkg-list").read().decode()
        assert "\nii  dpkg " in listing and "\nii  apt " in listing
    finally:
        disk.close()


def acbuild_argv() -> list[str]:
    return [sys.executable, "-m", "acbuild"]


def special_tree(root: Path) -> Path:
    """A bare rootfs with a regular file, a fifo, a character device and a socket."""
    require(os.geteuid() == 0, "making a device node needs root (CI is root)")
    (root / "dev").mkdir(parents=True)
    (root / "hello").write_text("hello\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev/full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "control.sock"))
    sock.close()
    return root


@pytest.fixture
def small_disk(tmp_path):
    """Where the small-tree tests write: 64 MiB, so reading a device node (the old
    bug) fails fast with ENOSPC instead of filling the machine's disk."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root (CI is root)")
    disk = Tmpfs(tmp_path / "disk", 64 << 20)
    yield disk.path
    disk.close()


def test_begin_directory_recreates_devices_and_fifos_and_skips_sockets(tmp_path, small_disk):
    base = special_tree(tmp_path / "base")
    work = small_disk / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(small_disk)}
    begun = subprocess.run([*acbuild_argv(), "--work-path", work, "begin", base],
                           env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in begun.stderr, begun.stderr
    assert begun.returncode == 0, begun.stderr
    assert begun.stderr.count("socket") == 1, begun.stderr  # one notice
    rootfs = work / ".acbuild/currentaci/rootfs"
    full = os.lstat(rootfs / "dev/full")
    assert stat.S_ISCHR(full.st_mode) and full.st_rdev == os.makedev(1, 7)
    assert stat.S_ISFIFO(os.lstat(rootfs / "fifo").st_mode)
    assert not os.path.lexists(rootfs / "control.sock")
    assert (rootfs / "hello").read_text() == "hello\n"
    acbuild("--work-path", work, "end")


def test_from_directory_with_special_files_writes_them_as_they_are(tmp_path, small_disk):
    base = special_tree(tmp_path / "base")
    (tmp_path / "ACIfile").write_text(f"FROM {base}\nNAME example.com/special\n")
    env = {**os.environ, "TMPDIR": str(small_disk), "ACBUILD_CACHE_DIR": str(small_disk / "cache")}
    out = small_disk / "out.aci"
    built = subprocess.run([*acbuild_argv(), "build", "-f", tmp_path / "ACIfile", "-o", out],
                           env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stderr.count("socket") == 1, built.stderr
    with tarfile.open(out) as tar:
        assert tar.getmember("rootfs/dev/full").ischr()
        assert tar.getmember("rootfs/fifo").isfifo()
        assert "rootfs/control.sock" not in tar.getnames()


def test_the_debian_fixture_is_a_real_minbase_rootfs(debian_rootfs_tar, debian_rootfs):
    from debian import SUITE, VARIANT, mmdebstrap_version

    assert f"{SUITE}-{VARIANT}-mmdebstrap{mmdebstrap_version()}" in debian_rootfs_tar.name  # keyed by its inputs
    full = os.lstat(debian_rootfs / "dev/full")
    assert stat.S_ISCHR(full.st_mode) and full.st_rdev == os.makedev(1, 7)
    status = (debian_rootfs / "var/lib/dpkg/status").read_text()
    assert "Package: dpkg\n" in status and "Package: apt\n" in status


def test_sigterm_during_from_directory_leaves_no_work_dir(tmp_path):
    """issue 9: SIGTERM while FROM DIR copies the base left the acbuild-build-* dir
    behind (SIGINT cleaned up). The base is big enough that the copy is still running
    when the signal comes; the test waits for the work dir to appear first."""
    import signal
    import time

    base = tmp_path / "base"
    for n in range(40):
        d = base / f"d{n}"
        d.mkdir(parents=True)
        for m in range(50):
            (d / f"f{m}").write_bytes(os.urandom(64 << 10))  # 128 MB in all
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text(f"FROM {base}\nNAME example.com/big\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([*acbuild_argv(), "build", "--no-cache", "-f", str(ctx / "ACIfile"), "-o",
                             str(tmp_path / "big.aci"), "--cache-dir", str(tmp_path / "cache")],
                            env=dict(os.environ, TMPDIR=str(scratch)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("acbuild-build-") for p in scratch.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started its work dir"
        time.sleep(0.01)
    time.sleep(0.2)  # inside the copy of the base
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGTERM), err
    assert "Traceback" not in err, err
    assert list(scratch.iterdir()) == [], sorted(p.name for p in scratch.iterdir())
    assert not (tmp_path / "big.aci").exists()
