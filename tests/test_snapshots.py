"""Steps as snapshots (engine.execute.layer, engine.cache.stepcache layers) and launch's
rendered trees (engine.rendered), through the real CLI, real overlayfs and namespaces:
a RUN costs the cache what it changed, the images are byte-identical to the copy path's
(ACBUILD_NO_OVERLAY=1) and through restored layer chains, chains are squashed, launch
reuses its verified tree and renders again when it was changed, and SIGKILL leaves no
partial entry or tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import require

BUSYBOX = Path("/bin/busybox")
LAYER_DEPTH_LIMIT = 16  # acbuild.engine.cache.stepcache.LAYER_DEPTH_LIMIT, spelled out so a change is noticed
BIG = 24 << 20  # the base's big file: what the old copy-before-RUN paid for on every RUN


def acbuild(*args, cache: Path, env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    full = dict(os.environ, ACBUILD_CACHE_DIR=str(cache), **(env or {}))
    result = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True,
                            env=full, **kw)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def context(tmp_path: Path, acifile: str) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True, exist_ok=True)
    (ctx / "busybox").write_bytes(BUSYBOX.read_bytes())
    (ctx / "big").write_bytes(os.urandom(1 << 20) * (BIG >> 20))
    for n in range(3):
        (ctx / "etc" / f"conf{n}").write_text(f"conf {n}\n")
    (ctx / "ACIfile").write_text(acifile)
    time.sleep(0.2)  # older than the stat cache's racy window
    return ctx


BASE = """FROM scratch
NAME example.com/snapshots
COPY --chmod=0755 busybox /bin/busybox
COPY big /data/big
COPY etc/ /etc/
"""


def sh(script: str) -> str:
    return f'RUN ["/bin/busybox", "sh", "-c", {json.dumps(script)}]\n'


def build(ctx: Path, out: Path, cache: Path, *extra, env: dict | None = None) -> dict:
    meta = out.with_suffix(".json")
    acbuild("build", "-f", ctx / "ACIfile", "-o", out, "--metadata-file", meta, *extra, cache=cache, env=env)
    return json.loads(meta.read_text())


def cache_bytes(cache: Path) -> int:
    """Disk the cache holds: allocated blocks, each inode counted once (hard links share)."""
    seen, total = set(), 0
    for path in cache.rglob("*"):
        st = path.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def metas(cache: Path) -> dict[str, dict]:
    return {m.parent.name: json.loads(m.read_text()) for m in (cache / "steps").glob("*/meta.json")}


def kill_when(args: list, cache: Path, ready, what: str) -> None:
    """Start `acbuild ARGS` and SIGKILL it (by PID) once `ready()` is true."""
    env = dict(os.environ, ACBUILD_CACHE_DIR=str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} never started")
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def overlay_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "from pathlib import Path; import tempfile;"
                            "from acbuild.engine.deps.overlay import overlay_works;"
                            "print(overlay_works(Path(tempfile.mkdtemp())))"], capture_output=True, text=True)
    return probe.stdout.strip() == "True"


@pytest.fixture(scope="module", autouse=True)
def needs_overlay():
    require(overlay_available(), "overlayfs mounts in a user or mount namespace (Linux >= 5.11)")


def test_a_run_that_changes_one_file_adds_a_layer_of_about_that_size(tmp_path):
    ctx = context(tmp_path, BASE)
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "base.aci", cache)
    before = cache_bytes(cache)
    changed = 256 << 10
    (ctx / "ACIfile").write_text(BASE + sh(f"/bin/busybox dd if=/dev/urandom of=/etc/new bs={changed} count=1"))
    meta = build(ctx, tmp_path / "run.aci", cache)
    assert [s["cache"] for s in meta["steps"]] == ["hit"] * 5 + ["miss"]
    grown = cache_bytes(cache) - before - os.stat(tmp_path / "run.aci").st_blocks * 512  # minus the cached image
    assert changed <= grown <= 2 * changed, f"the RUN changed {changed} bytes; the cache grew by {grown}"
    run_key = meta["steps"][-1]["key"]
    assert metas(cache)[run_key]["parent"] == meta["steps"][-2]["key"]  # a layer on the last COPY's entry


def test_layers_give_the_bytes_of_the_copy_path_and_survive_a_restore(tmp_path):
    """Deletions, an opaque dir, a type change, hard links, chmod and a rewrite in place,
    written from the live work dir, from a chain of restored layers, and by the old
    copy path: one image."""
    steps = [
        sh("echo appended >> /etc/conf0; chmod 0600 /etc/conf1"),
        sh("rm /etc/conf2 && /bin/busybox mkdir -p /srv/a/b && echo x > /srv/a/b/f"),
        sh("rm -rf /srv/a && mkdir /srv/a && echo y > /srv/a/g"),  # an opaque dir in the upper
        sh("/bin/busybox ln /srv/a/g /srv/a/h && /bin/busybox ln -s /data /srv/link"),
        sh("rm /srv/link && mkdir /srv/link && echo z > /srv/link/z"),
        sh("/bin/busybox dd if=/dev/zero of=/data/big bs=4096 count=1 seek=2 conv=notrunc 2>/dev/null"),
        "COPY etc/ /srv/a/\n",  # into a dir a RUN made, beside its files
        "WORKDIR /srv/w/x\n",
        sh("echo after > f && rm /srv/a/conf1"),
    ]
    body = BASE + "".join(steps) + "LABEL last=yes\n"
    ctx = context(tmp_path, body)
    cache = tmp_path / "cache"
    layered = build(ctx, tmp_path / "layered.aci", cache)
    entries = metas(cache)
    trees = [entries[s["key"]] for s in layered["steps"] if entries[s["key"]]["tree"] == s["key"]]
    assert trees[0].get("parent") is None and all(t.get("parent") for t in trees[1:]), \
        "FROM is stored whole; every COPY, RUN and WORKDIR after it as a layer"
    copied = build(ctx, tmp_path / "copied.aci", tmp_path / "cache2", env={"ACBUILD_NO_OVERLAY": "1"})
    assert copied["image-id"] == layered["image-id"]
    assert (tmp_path / "copied.aci").read_bytes() == (tmp_path / "layered.aci").read_bytes()
    # the last step changed: everything before it comes back from the chain of layers
    (ctx / "ACIfile").write_text(body.replace("LABEL last=yes", 'LABEL last=no\n' + sh("/bin/busybox ls -lR /srv /etc")))
    restored = build(ctx, tmp_path / "restored.aci", cache)
    assert [s["cache"] for s in restored["steps"]][:-2] == ["hit"] * (len(restored["steps"]) - 2)
    fresh = build(ctx, tmp_path / "fresh.aci", tmp_path / "cache3", env={"ACBUILD_NO_OVERLAY": "1"})
    assert restored["image-id"] == fresh["image-id"]


def test_a_long_chain_of_layers_is_squashed(tmp_path):
    runs = LAYER_DEPTH_LIMIT + 3
    body = BASE + "".join(sh(f"echo {n} > /etc/step{n}") for n in range(runs))
    ctx = context(tmp_path, body)
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    entries = metas(cache)
    depths = [entries[s["key"]].get("depth", 0) for s in first["steps"][5:]]
    assert max(depths) == LAYER_DEPTH_LIMIT and depths.count(0) == 1, depths
    (ctx / "ACIfile").write_text(body + sh("cat /etc/step*"))
    again = build(ctx, tmp_path / "b.aci", cache)
    fresh = build(ctx, tmp_path / "c.aci", tmp_path / "cache2", env={"ACBUILD_NO_OVERLAY": "1"})
    assert again["image-id"] == fresh["image-id"]


def test_a_killed_run_leaves_no_partial_snapshot(tmp_path):
    body = BASE + sh("echo one > /etc/one") + sh("echo two > /etc/two; touch /started; sleep 30")
    ctx = context(tmp_path, body)
    cache = tmp_path / "cache"
    work = Path(tempfile.gettempdir())
    kill_when(["build", "-f", ctx / "ACIfile", "-o", tmp_path / "k.aci"], cache,
              lambda: list(work.glob("acbuild-build-*/stage-0/layer/started")), "the RUN")
    entries = metas(cache)
    assert len(entries) == 6, "FROM, NAME, three COPYs and the first RUN; nothing of the killed RUN"
    (ctx / "ACIfile").write_text(body.replace("; sleep 30", ""))
    done = build(ctx, tmp_path / "ok.aci", cache)
    assert [s["cache"] for s in done["steps"]] == ["hit"] * 6 + ["miss"]
    clean = build(ctx, tmp_path / "clean.aci", tmp_path / "cache2")
    assert done["image-id"] == clean["image-id"]
    assert not [p for p in (cache / "steps").iterdir() if p.name.startswith(".")]


# --- launch -----------------------------------------------------------------------------------

def launch_image(tmp_path: Path) -> Path:
    ctx = context(tmp_path, BASE + 'EXEC ["/bin/busybox", "sh", "-c", "cat /etc/conf0; echo w > /etc/conf0"]\n')
    out = tmp_path / "app.aci"
    build(ctx, out, tmp_path / "build-cache")
    return out


def launch(image: Path, cache: Path, *extra) -> subprocess.CompletedProcess:
    return acbuild("launch", "--insecure-skip-verify", "--cache-dir", cache, image, *extra, cache=cache)


def test_launch_renders_once_and_reuses_the_verified_tree(tmp_path):
    image = launch_image(tmp_path)
    cache = tmp_path / "cache"
    first = launch(image, cache)
    assert first.stdout == "conf 0\n"
    trees = list((cache / "launch/trees").iterdir())
    assert len(trees) == 1
    tree = trees[0]
    image_id = acbuild("image-id", image, cache=cache).stdout.strip()
    assert tree.name == image_id.removeprefix("sha512-")
    inode = (tree / "rootfs/data/big").stat().st_ino
    second = launch(image, cache)
    assert second.stdout == "conf 0\n", "the app's write went to its own upper dir, not the tree"
    assert (tree / "rootfs/data/big").stat().st_ino == inode and (tree / "rootfs/etc/conf0").read_text() == "conf 0\n"
    # a damaged tree is found by its listing and rendered again
    (tree / "rootfs/etc/conf0").write_text("tampered\n")
    third = launch(image, cache)
    assert third.stdout == "conf 0\n"
    assert (tree / "rootfs/etc/conf0").read_text() == "conf 0\n"


def test_a_killed_render_leaves_no_tree(tmp_path):
    image = launch_image(tmp_path)
    cache = tmp_path / "cache"
    kill_when(["launch", "--insecure-skip-verify", "--cache-dir", cache, image], cache,
              lambda: list((cache / "launch/trees").glob(".new-*/rootfs/bin")), "the render")
    assert [p.name[:5] for p in (cache / "launch/trees").iterdir()] == [".new-"], "only the killed render's temp"
    assert launch(image, cache).stdout == "conf 0\n"
    assert [p for p in (cache / "launch/trees").iterdir() if p.name.startswith(".")] == []


def test_a_layer_never_deletes_through_a_symlink(tmp_path):
    """A hostile entry (one imported from a registry is checked only against its own
    meta.json) whose layer makes a symlink out of the work dir and then deletes below
    it: the entry is found damaged and the step runs again; nothing outside is touched."""
    import hashlib

    body = BASE + sh("echo one > /etc/one")
    ctx = context(tmp_path, body)
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine\n")
    key = first["steps"][-1]["key"]
    entry = cache / "steps" / key
    rows = json.loads((entry / "tree.json").read_bytes())
    rows[1:1] = [["/rootfs/evil", "l", 0o777, 0, 0, 0, 0, str(victim), 0, []],
                 ["/rootfs/evil/keep", "w", 0, 0, 0, 0, 0, "", 0, []]]
    data = json.dumps(rows).encode()
    (entry / "tree.json").write_bytes(data)
    meta = json.loads((entry / "meta.json").read_bytes())
    meta["listing"], meta["files"] = hashlib.sha256(data).hexdigest(), len(rows) - 1
    (entry / "meta.json").write_text(json.dumps(meta))
    (ctx / "ACIfile").write_text(body + "LABEL more=yes\n")
    again = build(ctx, tmp_path / "b.aci", cache)
    assert (victim / "keep").read_text() == "mine\n"
    assert [s["cache"] for s in again["steps"]][-2:] == ["miss", "miss"]
