"""Real OCI/Docker test images made by real tools, cached by their inputs.

Debian's buildah (as root, vfs storage, chroot isolation, one layer per step)
builds a busybox image FROM scratch whose later layers delete a file and a
directory and add hard links; a hand-made tar layer added with `umoci raw
add-layer` replaces a directory with an opaque-directory marker, links a file
of a lower layer (a hard link across layers) and holds a device node; `umoci
config` tags a copy that claims to be arm64 (for manifest lists). skopeo
writes the result as a docker-archive and an oci-archive beside the OCI layout,
and `umoci unpack` gives the reference tree a runtime would see.

The set lives under $ACBUILD_TEST_CACHE (default REPO/.test-cache)/oci-images/KEY,
KEY hashing the recipe, busybox and the tool versions; it is built into a temp
dir and renamed, so an interrupted build leaves no half set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, require
from tests.imagetools import layer_tar

BUSYBOX = Path("/bin/busybox")
TAG = "latest"
ARM_TAG = "arm64"  # the same image with config architecture arm64
RECIPE_VERSION = "6"

CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin && /bin/busybox --install -s \
&& mkdir -p /etc /data/keep /data/gone /data/links && echo hi > /etc/motd && echo x > /data/gone/f \
&& echo doomed > /etc/doomed && echo shared > /data/keep/orig && echo one > /data/links/a && ln /data/links/a /data/links/b"]
RUN rm /etc/doomed && rm -rf /data/gone && echo two > /data/links/x && ln /data/links/x /data/links/y
ENV GREETING=hello PATH=/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /data
USER 1000:1000
EXPOSE 8080/tcp 53/udp
VOLUME /var/cache/app
LABEL org.example.kind=test maintainer=nobody
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s CMD ["/bin/true"]
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hello from busytest"]
"""


@dataclass(frozen=True)
class TestImages:
    __test__ = False
    dir: Path

    @property
    def layout(self) -> Path:
        return self.dir / "layout"

    @property
    def docker_archive(self) -> Path:
        return self.dir / "image.docker.tar"

    @property
    def oci_archive(self) -> Path:
        return self.dir / "image.oci.tar"

    @property
    def unpacked(self) -> Path:
        """What umoci unpack (a runtime bundle) shows: the reference rootfs."""
        return self.dir / "bundle/rootfs"


def _tools_present() -> None:
    for tool in ("buildah", "skopeo", "umoci"):
        require(shutil.which(tool) is not None, f"{tool} not installed (apt-get install {tool})")
    require(os.geteuid() == 0, "buildah with vfs storage and chroot isolation needs root (CI is root)")
    require(BUSYBOX.is_file(), "busybox-static not installed")


def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()


def _key() -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, CONTAINERFILE, _version("buildah"), _version("skopeo"), _version("umoci")):
        h.update(part.encode() + b"\0")
    h.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    return h.hexdigest()[:24]


def opaque_layer() -> bytes:
    """data/keep becomes opaque (orig disappears, new appears), data/hl is a hard
    link to etc/motd of a lower layer, dev/testnull is a character device."""
    return layer_tar([
        ("data", b"", {"type": tarfile.DIRTYPE}),
        ("data/keep", b"", {"type": tarfile.DIRTYPE}),
        ("data/keep/.wh..wh..opq", b"", {"mode": 0}),
        ("data/keep/new", b"new\n", {}),
        ("data/hl", b"", {"type": tarfile.LNKTYPE, "linkname": "etc/motd"}),
        ("dev", b"", {"type": tarfile.DIRTYPE}),
        ("dev/testnull", b"", {"type": tarfile.CHRTYPE, "mode": 0o666, "devmajor": 1, "devminor": 3}),
    ])


def _build(out: Path) -> None:
    work = out / "work"
    ctx = work / "ctx"
    ctx.mkdir(parents=True)
    shutil.copy2(BUSYBOX, ctx / "busybox")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    storage = ["--storage-driver", "vfs", "--root", str(work / "root"), "--runroot", str(work / "runroot")]

    def run(*cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-3000:]}")

    run("buildah", *storage, "bud", "--isolation", "chroot", "--layers", "--format", "oci",
        "-t", "busytest", "-f", str(ctx / "Containerfile"), str(ctx))
    run("buildah", *storage, "push", "-q", "busytest", f"oci:{out / 'layout'}:{TAG}")
    (work / "opaque.tar").write_bytes(opaque_layer())
    run("umoci", "raw", "add-layer", "--image", f"{out / 'layout'}:{TAG}", str(work / "opaque.tar"))
    # The same image claiming to be arm64 (a second platform for manifest lists).
    run("umoci", "config", "--image", f"{out / 'layout'}:{TAG}", "--tag", ARM_TAG, "--architecture", "arm64")
    run("skopeo", "copy", "-q", f"oci:{out / 'layout'}:{TAG}", f"docker-archive:{out / 'image.docker.tar'}:busytest:{TAG}")
    run("skopeo", "copy", "-q", f"oci:{out / 'layout'}:{TAG}", f"oci-archive:{out / 'image.oci.tar'}:{TAG}")
    run("umoci", "unpack", "--image", f"{out / 'layout'}:{TAG}", str(out / "bundle"))
    shutil.rmtree(work)


def test_images() -> TestImages:
    """The cached image set, built on first use."""
    _tools_present()
    base = Path(os.environ.get("ACBUILD_TEST_CACHE") or REPO / ".test-cache") / "oci-images"
    final = base / _key()
    if not final.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            _build(tmp)
            os.replace(tmp, final)
            for old in base.iterdir():  # sets for older recipes or tools
                if old != final and not old.name.startswith("."):
                    shutil.rmtree(old, ignore_errors=True)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return TestImages(final)


test_images.__test__ = False  # type: ignore[attr-defined]
