"""A real Debian root filesystem for the tests, made by Debian's own mmdebstrap.

`mmdebstrap --variant=minbase bookworm` from the Debian mirror this machine's apt
uses, as root, once: the result is kept as a tarball (so device nodes, owners and
modes survive) in the test cache dir, $ACBUILD_TEST_CACHE or
/var/cache/acbuild-tests, under a name made of everything that decides its
content: the mmdebstrap version, the suite, the variant and the mirror. Later
runs only unpack it.

Fixtures (registered in conftest.py; session-scoped, so treat them as read-only):
  debian_rootfs_tar  the cached tarball
  debian_rootfs      the tree unpacked once per session (device nodes in /dev)
  debian_aci         that tree packed once with `acbuild pack` (name
                     example.com/debian-minbase, os/arch of the host)

The one prerequisite that skips even under CI is an unreachable mirror (the
network is not the project's to fix); a missing mmdebstrap or root fails there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

SUITE = "bookworm"
VARIANT = "minbase"
IMAGE_NAME = "example.com/debian-minbase"
DEFAULT_CACHE = Path("/var/cache/acbuild-tests")


def test_cache_dir() -> Path:
    return Path(os.environ.get("ACBUILD_TEST_CACHE") or DEFAULT_CACHE)


test_cache_dir.__test__ = False  # a helper, not a test pytest should collect


def apt_mirror(suite: str = SUITE) -> str | None:
    """The Debian mirror apt uses here for `suite`: the first URI of a `deb` source
    (one-line .list or deb822 .sources) listing that suite, security archives aside."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri, suites in _deb_sources(text, deb822=path.suffix == ".sources"):
            if suite in suites and not uri.rstrip("/").endswith("-security"):
                return uri.rstrip("/")
    return None


def _deb_sources(text: str, *, deb822: bool) -> Iterator[tuple[str, list[str]]]:
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split():
                for uri in fields.get("URIs", "").split():
                    yield uri, fields.get("Suites", "").split()
        return
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]]


def mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1]


def cache_key(version: str, mirror: str) -> str:
    mirror_tag = hashlib.sha256(mirror.encode()).hexdigest()[:12]
    return f"debian-{SUITE}-{VARIANT}-mmdebstrap{version}-{mirror_tag}.tar"


def mirror_reachable(mirror: str) -> str | None:
    """None when the mirror answers for the suite, else why not."""
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{SUITE}/Release", timeout=20) as response:
            response.read(1)
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    return None


def make_rootfs_tar() -> Path:
    """The cached tarball, made first if missing (atomically: a run killed half-way
    leaves no tarball that a later run would trust)."""
    require(os.geteuid() == 0, "mmdebstrap's root mode needs root (CI is root)")
    require(shutil.which("mmdebstrap") is not None, "mmdebstrap is not installed (make system-deps installs it)")
    mirror = apt_mirror()
    require(mirror is not None, f"no Debian {SUITE} source in /etc/apt/sources.list*")
    cache = test_cache_dir()
    tar = cache / cache_key(mmdebstrap_version(), mirror)
    if tar.is_file():
        return tar
    why = mirror_reachable(mirror)
    if why is not None:  # the only prerequisite allowed to skip under CI
        pytest.skip(f"the Debian mirror {mirror} is unreachable ({why}): cannot make the mmdebstrap rootfs")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{tar.name}.", suffix=".tar", dir=cache)
    os.close(fd)
    try:
        made = subprocess.run(["mmdebstrap", "--quiet", f"--variant={VARIANT}", SUITE, tmp, mirror],
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr}"
        os.chmod(tmp, 0o644)  # the rootless tests read it too
        os.replace(tmp, tar)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return tar


def unpack(tar: Path, dest: Path) -> Path:
    """The tarball's tree in `dest` as root would have it: owners, modes, devices."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "--same-owner", "-xpf", str(tar), "-C", str(dest)], check=True)
    return dest


def pack(rootfs: Path, out: Path) -> Path:
    """An image layout around `rootfs` (hard links, no copy) packed by `acbuild pack`."""
    from acbuild.aci.types import host_os_arch

    layout = out.parent / "layout"
    layout.mkdir()
    os_name, arch = host_os_arch()
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": IMAGE_NAME,
                "labels": [{"name": "os", "value": os_name}, {"name": "arch", "value": arch}]}
    (layout / "manifest").write_text(json.dumps(manifest))
    subprocess.run(["cp", "-al", str(rootfs), str(layout / "rootfs")], check=True)
    packed = subprocess.run([sys.executable, "-m", "acbuild", "pack", str(layout), str(out)],
                            capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    shutil.rmtree(layout)
    return out


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    return make_rootfs_tar()


@pytest.fixture(scope="session")
def debian_rootfs(debian_rootfs_tar: Path, tmp_path_factory) -> Path:
    return unpack(debian_rootfs_tar, tmp_path_factory.mktemp("debian") / "rootfs")


@pytest.fixture(scope="session")
def debian_aci(debian_rootfs: Path, tmp_path_factory) -> Path:
    return pack(debian_rootfs, tmp_path_factory.mktemp("debian-aci") / "debian.aci")
