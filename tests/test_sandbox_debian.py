"""Real distribution work under the sandbox's seccomp profile (Docker's default allow-list):
apt-get installs a .deb on the Debian minbase fixture (tests/debian.py) in a RUN step, as
dpkg, its maintainer scripts, apt's own privilege drop to _apt and its methods do it in a
Docker container. Offline: the .deb is made here with dpkg-deb and COPYed in (RUN has no
network). Nothing mocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import require


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "RUN on the Debian rootfs needs root (CI is root)")
    require(shutil.which("dpkg-deb") is not None, "needs dpkg-deb (dpkg)")


def make_deb(top: Path) -> Path:
    """A tiny package whose postinst runs a shell script and whose payload is a script."""
    pkg = top / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: acbuild-hello\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: acbuild tests <tests@example.com>\nDepends: dash\n"
                                        "Description: a probe package\n")
    (pkg / "DEBIAN/postinst").write_text("#!/bin/sh\nset -e\necho configured > /var/lib/acbuild-hello\n")
    (pkg / "usr/bin/acbuild-hello").write_text("#!/bin/sh\necho hello from a deb\n")
    for f in ("DEBIAN/postinst", "usr/bin/acbuild-hello"):
        (pkg / f).chmod(0o755)
    deb = top / "ctx/acbuild-hello.deb"
    deb.parent.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


def test_apt_get_installs_a_package_in_a_run_step(debian_aci, tmp_path):
    deb = make_deb(tmp_path)
    ctx = deb.parent
    (ctx / "ACIfile").write_text(
        f"FROM {debian_aci}\n"
        "NAME example.com/debian-apt\n"
        "COPY acbuild-hello.deb /opt/\n"
        "RUN apt-get install -y /opt/acbuild-hello.deb && apt-get check "
        "&& acbuild-hello > /hello.out && grep -c Seccomp:.2 /proc/self/status > /seccomp.out\n"
    )
    out = tmp_path / "apt.aci"
    built = subprocess.run([sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o", str(out),
                            "--no-cache", "--compression", "none"], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert built.returncode == 0, built.stdout + built.stderr
    with tarfile.open(out) as tar:
        assert tar.extractfile("rootfs/hello.out").read() == b"hello from a deb\n"
        assert tar.extractfile("rootfs/var/lib/acbuild-hello").read() == b"configured\n"
        assert tar.extractfile("rootfs/seccomp.out").read() == b"1\n"  # the filter was on
        status = tar.extractfile("rootfs/var/lib/dpkg/status").read().decode()
    assert "Package: acbuild-hello\nStatus: install ok installed" in status
