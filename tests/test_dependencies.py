"""Dependencies: rendering the appc way, FROM a layered image, and DEPENDENCY during a build
(overlayfs, and the copy fallback). Real images built with `acbuild build`, a real busybox,
actool validate on every output. Nothing mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import require

BUSYBOX = Path("/bin/busybox")



@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "builds with RUN set up as root here (rootless: test_rootless.py)")
    require(BUSYBOX.exists(), "needs busybox-static (make system-deps)")


def build(ctx: Path, acifile: str, out: Path, *flags: str, env: dict | None = None, ok: bool = True,
          images: Path | None = None) -> subprocess.CompletedProcess:
    (ctx / "ACIfile").write_text(acifile)
    cmd = [sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o", str(out), *flags]
    if images is not None:
        cmd += ["--image-dir", str(images)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def validate(actool: str, aci: Path) -> None:
    proc = subprocess.run([actool, "validate", str(aci)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def members(aci: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(aci) as t:
        return {i.name: i for i in t.getmembers()}


def read(aci: Path, name: str) -> str:
    with tarfile.open(aci) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read().decode()


def manifest(aci: Path) -> dict:
    import json

    return json.loads(read(aci, "manifest"))


def context(tmp: Path, name: str, files: dict[str, str]) -> Path:
    ctx = tmp / name
    ctx.mkdir()
    for rel, text in files.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The image search dir, with example.com/busybox (busybox + its applet links) in it."""
    top = tmp_path_factory.mktemp("deps")
    store = top / "images"
    store.mkdir()
    ctx = top / "busybox"
    ctx.mkdir()
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    build(ctx, """FROM scratch
NAME example.com/busybox
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "sh", "-c", "mkdir -p /etc /usr/lib && echo 'root:x:0:0:root:/:/bin/sh' > /etc/passwd && ln -s usr/lib /lib"]
""", store / "busybox.aci")
    return store


def layer(images: Path, tmp: Path, name: str, files: dict[str, str], deps: list[str] = (), extra: str = "") -> Path:
    ctx = context(tmp, name.rsplit("/", 1)[-1], files)
    lines = ["FROM scratch", f"NAME {name}", *(f"DEPENDENCY {d}" for d in deps), extra]
    lines += [f"COPY {rel} /{rel}" for rel in files]
    out = images / (name.rsplit("/", 1)[-1] + ".aci")
    build(ctx, "\n".join(lines) + "\n", out, images=images)
    return out


# --- rendering ----------------------------------------------------------------------------------


def test_render_order_is_b_d_c_a_and_from_layered_flattens(images, tmp_path, actool):
    """A -> [B, C], C -> [D]: rendered B, D, C, A, later layers winning."""
    layer(images, tmp_path, "example.com/d", {"f/d": "D", "f/bd": "D", "f/all": "D", "f/cd": "D"})
    layer(images, tmp_path, "example.com/b", {"f/b": "B", "f/bd": "B", "f/all": "B", "f/bc": "B"})
    layer(images, tmp_path, "example.com/c", {"f/c": "C", "f/cd": "C", "f/all": "C", "f/bc": "C"}, ["example.com/d"])
    a = layer(images, tmp_path, "example.com/a", {"f/a": "A", "f/all": "A"}, ["example.com/b", "example.com/c"])
    assert [d["imageName"] for d in manifest(a)["dependencies"]] == ["example.com/b", "example.com/c"]
    assert sorted(n for n in members(a) if n.startswith("rootfs/f/")) == ["rootfs/f/a", "rootfs/f/all"]
    flat = tmp_path / "flat.aci"
    build(context(tmp_path, "flat", {}), f"FROM {a}\nNAME example.com/flat\n", flat, images=images)
    validate(actool, flat)
    got = {n[len("rootfs/f/"):]: read(flat, n) for n in members(flat) if n.startswith("rootfs/f/")}
    assert got == {"a": "A", "all": "A", "b": "B", "bc": "C", "bd": "D", "c": "C", "cd": "C", "d": "D"}
    man = manifest(flat)
    assert "dependencies" not in man and "pathWhitelist" not in man


def test_path_whitelist_filters_lower_images_and_own_files(images, tmp_path, actool):
    layer(images, tmp_path, "example.com/wd", {"w/keep": "1", "w/drop": "1", "x/dir/file": "1"})
    w = layer(images, tmp_path, "example.com/w", {"w/own-listed": "2", "w/own-unlisted": "2"},
              ["example.com/wd"], "PATH-WHITELIST /w /w/keep /w/own-listed")
    flat = tmp_path / "flat.aci"
    build(context(tmp_path, "flat", {}), f"FROM {w}\nNAME example.com/flat\n", flat, images=images)
    validate(actool, flat)
    names = sorted(n for n in members(flat) if n.startswith("rootfs/"))
    # /x is a directory of the lower image not in the top whitelist: filtered too
    assert names == ["rootfs/w", "rootfs/w/keep", "rootfs/w/own-listed"]


def test_pinned_image_id_mismatch_is_refused(images, tmp_path):
    layer(images, tmp_path, "example.com/pinned", {"p": "1"})
    wrong = "sha512-" + "0" * 128
    top = tmp_path / "top.aci"
    build(context(tmp_path, "top", {}), f"FROM scratch\nNAME example.com/top\nDEPENDENCY --image-id={wrong} example.com/pinned\n",
          top)
    proc = build(context(tmp_path, "flat", {}), f"FROM {top}\nNAME example.com/flat\n", tmp_path / "flat.aci",
                 images=images, ok=False)
    assert proc.returncode != 0
    assert "pinned image ID does not match" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "flat.aci").exists()


def test_missing_dependency_names_it_and_where_it_looked(images, tmp_path):
    proc = build(context(tmp_path, "m", {"x": "1"}), "FROM scratch\nNAME example.com/m\nDEPENDENCY example.com/nope os=linux\nCOPY x /x\n",
                 tmp_path / "m.aci", images=images, ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "example.com/nope,os=linux" in proc.stderr and "not found in" in proc.stderr and str(images) in proc.stderr


# --- DEPENDENCY during a build ------------------------------------------------------------------

APP = """FROM scratch
NAME example.com/app
DEPENDENCY example.com/busybox
COPY app.conf /etc/app.conf
COPY lib.txt /lib/
RUN /bin/busybox ls /bin > /listing && cat /etc/passwd /etc/app.conf >> /listing
RUN rm /bin/vi && rm -r /usr/lib/gone-dir
EXEC ["/bin/sh"]
"""


def test_run_sees_dependency_files_and_the_image_holds_only_new_ones(images, tmp_path, actool):
    out = tmp_path / "app.aci"
    build(context(tmp_path, "app", {"app.conf": "conf\n", "lib.txt": "lib\n"}),
          APP.replace("RUN rm /bin/vi && rm -r /usr/lib/gone-dir\n", ""), out, images=images)
    validate(actool, out)
    names = sorted(members(out))
    assert names == ["manifest", "rootfs", "rootfs/etc", "rootfs/etc/app.conf", "rootfs/listing",
                     "rootfs/usr", "rootfs/usr/lib", "rootfs/usr/lib/lib.txt"]  # /lib is the dependency's symlink
    listing = read(out, "rootfs/listing").split()
    assert "busybox" in listing and "sh" in listing and "root:x:0:0:root:/:/bin/sh" in listing and "conf" in listing
    man = manifest(out)
    assert man["dependencies"] == [{"imageName": "example.com/busybox"}] and "pathWhitelist" not in man


def deletion_build(images: Path, tmp: Path, name: str, env: dict) -> tuple[Path, subprocess.CompletedProcess]:
    ctx = context(tmp, name, {"app.conf": "conf\n", "lib.txt": "lib\n"})
    out = tmp / f"{name}.aci"
    acifile = APP.replace("COPY lib.txt /lib/\n", "COPY lib.txt /lib/\nRUN mkdir -p /usr/lib/gone-dir/x\n")
    return out, build(ctx, acifile, out, images=images, env=env)


def test_deleting_a_dependency_file_becomes_a_path_whitelist(images, tmp_path, actool):
    out, _ = deletion_build(images, tmp_path, "del", {})
    validate(actool, out)
    assert not any(i.ischr() or i.isblk() for i in members(out).values())  # never a whiteout device
    wl = manifest(out)["pathWhitelist"]
    assert "/bin/vi" not in wl and "/usr/lib/gone-dir" not in wl
    assert {"/bin", "/bin/busybox", "/bin/sh", "/etc/passwd", "/etc/app.conf", "/listing", "/lib"} <= set(wl)
    flat = tmp_path / "flat.aci"  # rendering it gives exactly what the build saw
    build(context(tmp_path, "flat", {}), f"FROM {out}\nNAME example.com/flat\n", flat, images=images)
    validate(actool, flat)
    names = set(members(flat))
    assert "rootfs/bin/vi" not in names and "rootfs/usr/lib/gone-dir" not in names
    assert {"rootfs/bin/sh", "rootfs/etc/passwd", "rootfs/usr/lib/lib.txt", "rootfs/listing"} <= names
    assert members(flat)["rootfs/lib"].issym()


def test_without_overlayfs_the_copy_fallback_gives_the_same_image(images, tmp_path):
    overlay, p1 = deletion_build(images, tmp_path, "ovl", {})
    copied, p2 = deletion_build(images, tmp_path, "copy", {"ACBUILD_NO_OVERLAY": "1"})
    assert "overlayfs is unavailable" not in p1.stderr
    assert p2.stderr.count("overlayfs is unavailable") == 1
    assert p1.stdout == p2.stdout  # the image ID
    assert overlay.read_bytes() == copied.read_bytes()


def test_a_replaced_dependency_is_not_a_cache_hit(tmp_path):
    """A dependency found by name is keyed by its content: rebuilding it must rebuild
    the images that depend on it (the cache used to key only its name)."""
    store = tmp_path / "images"
    store.mkdir()
    data = context(tmp_path, "data", {"value.txt": "one\n"})
    (data / "busybox").write_bytes(BUSYBOX.read_bytes())
    data_acifile = "FROM scratch\nNAME example.com/data\nCOPY --chmod=0755 busybox /bin/busybox\nCOPY value.txt /value.txt\n"
    build(data, data_acifile, store / "data.aci")
    app = context(tmp_path, "app", {})
    app_acifile = 'FROM scratch\nNAME example.com/app\nDEPENDENCY example.com/data\nRUN ["/bin/busybox", "cp", "/value.txt", "/copied"]\n'
    cache = ["--cache-dir", str(tmp_path / "cache")]
    build(app, app_acifile, tmp_path / "app1.aci", *cache, images=store)
    assert read(tmp_path / "app1.aci", "rootfs/copied") == "one\n"
    (data / "value.txt").write_text("two\n")
    build(data, data_acifile, store / "data.aci")
    build(app, app_acifile, tmp_path / "app2.aci", *cache, images=store)
    assert read(tmp_path / "app2.aci", "rootfs/copied") == "two\n"
