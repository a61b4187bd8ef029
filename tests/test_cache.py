"""The step cache through the real CLI: hits on identical and touched rebuilds, a miss
exactly from the first changed step, damaged entries rebuilt (never used), two
builds at once, .acbuildignore, the stat cache, cache list/prune."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")

ACIFILE = """FROM scratch
NAME example.com/cached
COPY --chmod=0755 busybox /bin/busybox
COPY a.txt /a.txt
COPY tree/ /tree/
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /a.txt /tree/one > /joined"]
LABEL stage=last
"""


def acbuild(*args, cache: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACBUILD_CACHE_DIR=str(cache))
    result = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True, env=env, **kw)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def context(tmp_path: Path, acifile: str = ACIFILE) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "tree/sub").mkdir(parents=True)
    shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "a.txt").write_text("a\n")
    (ctx / "tree/one").write_text("one\n")
    (ctx / "tree/sub/two").write_text("two\n")
    (ctx / "ACIfile").write_text(acifile)
    time.sleep(0.2)  # older than the stat cache's racy window, as a checkout normally is
    return ctx


def build(ctx: Path, out: Path, cache: Path, *extra) -> dict:
    meta = out.with_suffix(".json")
    acbuild("build", "-f", ctx / "ACIfile", "-o", out, "--metadata-file", meta, *extra, cache=cache)
    return json.loads(meta.read_text())


def hits(meta: dict) -> list[str]:
    return [s["cache"] for s in meta["steps"]]


def test_identical_rebuild_is_all_hits_and_the_same_bytes(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    assert hits(first) == ["miss"] * 7 and not first["cached-image"]
    second = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "b.aci", "--metadata-file", tmp_path / "b.json", cache=cache)
    assert second.stderr.count("  (cached)") == 7 and "[4/7] COPY a.txt /a.txt  (cached)" in second.stderr
    meta = json.loads((tmp_path / "b.json").read_text())
    assert meta["cached-image"] and meta["image-id"] == first["image-id"] == second.stdout.strip()
    assert meta["context-files-hashed"] == 0  # the stat cache: nothing read again
    assert (tmp_path / "a.aci").read_bytes() == (tmp_path / "b.aci").read_bytes()
    assert meta["file-sha256"] == first["file-sha256"] and meta["labels"]["stage"] == "last"
    assert (tmp_path / "b.json").exists() and meta["name"] == "example.com/cached"


def test_touching_every_mtime_still_hits(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    for n, path in enumerate(sorted(ctx.rglob("*"))):
        os.utime(path, (1_000_000_000 + n, 1_000_000_000 + n))
    os.chmod(ctx / "a.txt", 0o600)  # group/other bits do not matter, only the exec bit
    again = build(ctx, tmp_path / "b.aci", cache)
    assert hits(again) == ["hit"] * 7 and again["image-id"] == first["image-id"]
    assert again["context-files-hashed"] == 4  # changed stat: read again, same content


def test_a_change_misses_from_that_step_on(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a.aci", cache)
    (ctx / "tree/sub/two").write_text("TWO\n")  # used by the 3rd COPY (step 5)
    meta = build(ctx, tmp_path / "b.aci", cache)
    assert hits(meta) == ["hit"] * 4 + ["miss"] * 3
    with tarfile.open(tmp_path / "b.aci") as tar:
        assert tar.extractfile("rootfs/tree/sub/two").read() == b"TWO\n"
    # a clean build of the changed context gives the same bytes
    clean = build(ctx, tmp_path / "clean.aci", tmp_path / "other-cache")
    assert clean["image-id"] == meta["image-id"]
    assert (tmp_path / "clean.aci").read_bytes() == (tmp_path / "b.aci").read_bytes()
    # the exec bit is content: making a.txt executable misses from step 4
    os.chmod(ctx / "a.txt", 0o755)
    assert hits(build(ctx, tmp_path / "c.aci", cache)) == ["hit"] * 3 + ["miss"] * 4


def entries(cache: Path) -> dict[str, dict]:
    out = {}
    for meta in (cache / "steps").glob("*/meta.json"):
        out[meta.parent.name] = json.loads(meta.read_text())
    return out


def test_damaged_entries_are_rebuilt_never_used(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    good = build(ctx, tmp_path / "good.aci", cache)
    good_bytes = (tmp_path / "good.aci").read_bytes()
    keys = [s["key"] for s in good["steps"]]

    # 1. the cached image altered in place: not linked, written again from the snapshot
    cached_aci = next((cache / "images").glob("*.aci"))
    os.unlink(tmp_path / "good.aci")  # (the output was a hard link to it)
    with open(cached_aci, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    meta = build(ctx, tmp_path / "b.aci", cache)
    assert not meta["cached-image"] and hits(meta) == ["hit"] * 7
    assert (tmp_path / "b.aci").read_bytes() == good_bytes

    # 2. a file truncated inside the last tree snapshot (the RUN's): that entry and the
    # manifest-only entry after it are dropped, the build restores the COPY before it
    os.unlink(next((cache / "images").glob("*.aci")))
    os.truncate(snapshot_file(cache, keys[5], "/rootfs/joined"), 1)
    meta = build(ctx, tmp_path / "c.aci", cache)
    assert hits(meta) == ["hit"] * 5 + ["miss"] * 2
    assert (tmp_path / "c.aci").read_bytes() == good_bytes

    # 3. a meta.json deleted: the entry is not there; the step runs again
    os.unlink(next((cache / "images").glob("*.aci")))
    (cache / "steps" / keys[4] / "meta.json").unlink()
    (cache / "steps" / keys[5] / "meta.json").unlink()
    meta = build(ctx, tmp_path / "d.aci", cache)
    assert hits(meta) == ["hit"] * 4 + ["miss"] * 3
    assert (tmp_path / "d.aci").read_bytes() == good_bytes


def snapshot_file(cache: Path, key: str, path: str) -> Path | None:
    """The hard link a tree snapshot keeps for `path` (e.g. "/rootfs/a.txt"), per its tree.json."""
    records = json.loads((cache / "steps" / key / "tree.json").read_bytes())
    number = next((r[7] for r in records if r[0] == path and r[1] == "f"), None)
    return None if number is None else cache / "steps" / key / "files" / str(number)


def holder(cache: Path, key: str, path: str) -> str:
    """The entry whose snapshot holds `path` for entry `key`: its tree, or the first layer
    below that (a RUN stores only what it changed) recording the path."""
    key = entries(cache)[key]["tree"]
    while snapshot_file(cache, key, path) is None:
        key = entries(cache)[key]["parent"]
    return key


def snapshot_files(cache: Path) -> dict[tuple[str, str], tuple[bytes, int]]:
    out = {}
    for key, meta in entries(cache).items():
        for name in ("a.txt", "tree/one"):
            kept = snapshot_file(cache, key, f"/rootfs/{name}") if meta["tree"] == key else None
            if kept is not None:
                out[key, name] = (kept.read_bytes(), kept.stat().st_mode)
    return out


def test_a_run_never_writes_into_the_cache(tmp_path):
    body = ACIFILE + 'RUN ["/bin/busybox", "sh", "-c", "echo changed >> /a.txt; chmod 600 /tree/one"]\n'
    ctx = context(tmp_path, body)
    cache = tmp_path / "cache"
    keys = [s["key"] for s in build(ctx, tmp_path / "a.aci", cache)["steps"]]
    before = snapshot_files(cache)
    # the tree the last RUN started from (kept by the LABEL step before it) still has the COPY's bytes
    assert before[holder(cache, keys[-2], "/rootfs/a.txt"), "a.txt"][0] == b"a\n"
    # a second build restores the step before the last RUN (hard links) and runs another RUN
    (ctx / "ACIfile").write_text(body.replace("echo changed", "echo CHANGED"))
    assert hits(build(ctx, tmp_path / "b.aci", cache)) == ["hit"] * 7 + ["miss"]
    after = snapshot_files(cache)
    assert {k: after[k] for k in before} == before
    (ctx / "ACIfile").write_text(body)
    again = build(ctx, tmp_path / "c.aci", cache)
    assert again["cached-image"]
    assert (tmp_path / "c.aci").read_bytes() == (tmp_path / "a.aci").read_bytes()


def test_two_builds_at_once_share_the_cache(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    env = dict(os.environ, ACBUILD_CACHE_DIR=str(cache))
    procs = [
        subprocess.Popen([sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o", str(tmp_path / f"{n}.aci")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for n in range(3)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for out, err, code in results:
        assert code == 0 and "Traceback" not in err, err
    assert len({out for out, _, _ in results}) == 1
    assert len({(tmp_path / f"{n}.aci").read_bytes() for n in range(3)}) == 1
    assert not list((cache / "steps").glob(".*"))  # no temp entries left behind
    meta = build(ctx, tmp_path / "after.aci", cache)
    assert meta["cached-image"] and meta["image-id"] == results[0][0].strip()


def test_acbuildignore(tmp_path):
    ctx = context(tmp_path, "FROM scratch\nNAME example.com/ignore\nCOPY . /app/\n")
    (ctx / "notes.md").write_text("n")
    (ctx / "README.md").write_text("r")
    (ctx / "tree/sub/skip.log").write_text("log")
    (ctx / "build").mkdir()
    (ctx / "build/junk").write_text("j")
    (ctx / "build/keep.txt").write_text("k")
    (ctx / ".acbuildignore").write_text(
        "# comments and blank lines are skipped\n\n*.md\n!README.md\n**/*.log\n/build\n!build/keep.txt\nbusybox\nACIfile\n.acbuildignore\n"
    )
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    with tarfile.open(tmp_path / "a.aci") as tar:
        names = {n.removeprefix("rootfs/app/") for n in tar.getnames() if n.startswith("rootfs/app/")}
    assert names == {"README.md", "a.txt", "tree", "tree/one", "tree/sub", "tree/sub/two", "build", "build/keep.txt"}
    # changing an ignored file does not change the key
    (ctx / "notes.md").write_text("changed")
    (ctx / "build/junk").write_text("changed")
    assert hits(build(ctx, tmp_path / "b.aci", cache)) == ["hit"] * 3
    # an ignored top-level source is not found, as with .dockerignore
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/ignore\nCOPY notes.md /\n")
    bad = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "c.aci", cache=cache, check=False)
    assert bad.returncode == 1 and 'COPY: "notes.md" not found in the build context' in bad.stderr
    assert first["image-id"]


def test_no_cache_runs_every_step(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a.aci", cache)
    again = build(ctx, tmp_path / "b.aci", cache, "--no-cache")
    assert hits(again) == ["miss"] * 7 and again["image-id"] == first["image-id"]


def test_progress_json_and_iidfile(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "a.aci", "--progress", "json", "--iidfile", tmp_path / "iid",
                     cache=cache)
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["number"] for e in events if e["event"] == "step"] == list(range(1, 8))
    assert all(e["total"] == 7 for e in events if e["event"] == "step")
    assert events[-1] == {"event": "image", "id": result.stdout.strip(), "output": str(tmp_path / "a.aci"), "cached": False}
    assert (tmp_path / "iid").read_text() == result.stdout.strip()


def test_cache_list_and_prune(tmp_path):
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a.aci", cache)
    (ctx / "a.txt").write_text("other\n")
    build(ctx, tmp_path / "b.aci", cache)
    listing = acbuild("cache", "list", cache=cache).stdout
    assert "11 entries" in listing  # 7 + 4 new from the changed COPY on
    assert "tree" in listing and "manifest" in listing
    # keep only what fits in a few bytes: the oldest go first, nothing half-removed
    acbuild("cache", "prune", "--keep-bytes", "2M", cache=cache)  # the newest image (busybox, 1.1 MB in gzip) fits
    left = entries(cache)
    assert 0 < len(left) < 11
    acbuild("cache", "prune", "--all", cache=cache)
    assert entries(cache) == {} and not list((cache / "images").glob("*")) if (cache / "images").exists() else True
    assert "0 entries" in acbuild("cache", "list", cache=cache).stdout
    meta = build(ctx, tmp_path / "c.aci", cache)
    assert hits(meta) == ["miss"] * 7
    bad = acbuild("cache", "prune", cache=cache, check=False)
    assert bad.returncode == 3


@pytest.mark.parametrize("size, expected", [("10", 10), ("1K", 1024), ("1.5M", 1572864), ("2GiB", 2 << 30)])
def test_prune_sizes(size, expected):
    from acbuild.cli.cache import parse_size

    assert parse_size(size) == expected


def test_two_outputs_of_one_build_never_share_a_file(tmp_path):
    """The cached image may be linked to the output it was written to, but a second
    output gets its own copy: editing one output must not change another."""
    ctx = context(tmp_path)
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a.aci", cache)
    meta = build(ctx, tmp_path / "b.aci", cache)
    assert meta["cached-image"]
    a, b = (tmp_path / "a.aci").stat(), (tmp_path / "b.aci").stat()
    assert a.st_ino != b.st_ino
    good = (tmp_path / "b.aci").read_bytes()
    with open(tmp_path / "a.aci", "ab") as f:
        f.write(b"edited")
    assert (tmp_path / "b.aci").read_bytes() == good
    # the edited output is no longer trusted as the cached image either
    meta = build(ctx, tmp_path / "c.aci", cache)
    assert (tmp_path / "c.aci").read_bytes() == good


def test_the_stat_cache_keeps_digests_it_can_trust_and_knows_what_a_build_looked_at(tmp_path):
    """The stat cache's own rules, on real files: a file is read once while its stat
    stays; a changed one is read again; a racily clean one (written in the last
    RACY_NS) is never stored; digest_of answers only for files this build looked at,
    while entries of files it did not look at survive its save."""
    from acbuild.engine.cache.statcache import RACY_NS, StatCache, file_sha256

    old, other, fresh = (tmp_path / name for name in ("old", "other", "fresh"))
    for path in (old, other):
        path.write_bytes(path.name.encode())
        past = time.time_ns() - 10 * RACY_NS
        os.utime(path, ns=(past, past))
    time.sleep(2 * RACY_NS / 1e9)  # ctime, which utime cannot set back, is old enough now
    store = tmp_path / "stat" / "ctx.marshal"

    first = StatCache(store)
    for path in (old, other):
        assert first.digest(str(path), os.stat(path)) == file_sha256(path)
    first.save()

    second = StatCache(store)
    fresh.write_bytes(b"fresh")
    assert second.digest(str(old), os.stat(old)) == file_sha256(old)
    assert second.digest(str(fresh), os.stat(fresh)) == file_sha256(fresh)
    assert second.hashed == 1  # old came from the cache; fresh was read
    assert second.digest_of(str(old)) == file_sha256(old)
    assert second.digest_of(str(fresh)) == file_sha256(fresh)  # racy: known to this build only
    assert second.digest_of(str(other)) is None  # in the cache, but not looked at
    second.save()

    third = StatCache(store)
    assert third.digest(str(other), os.stat(other)) == file_sha256(other)  # kept by the second save
    third.digest(str(fresh), os.stat(fresh))
    assert third.hashed == 1  # fresh again: a racy digest is never stored

    old.write_bytes(b"changed!")  # same size class, new mtime and ctime
    assert third.digest(str(old), os.stat(old)) == file_sha256(old)
    assert third.hashed == 2
    assert third.digest_of(str(old)) == file_sha256(old)


def test_a_tree_walked_in_two_processes_gives_the_keys_of_a_lone_walk(tmp_path, monkeypatch):
    """_walk_in_two (a forked child takes every other entry two levels down) must give
    the lone walk's lines, and hand back what its child hashed: fresh (racy) files,
    which digest_of must still know, and entries the next build finds."""
    from acbuild.engine.cache import keys
    from acbuild.engine.cache.statcache import StatCache, file_sha256

    tree = tmp_path / "tree"
    for a in range(3):
        for b in range(4):
            d = tree / f"d{a}" / f"e{b}"
            d.mkdir(parents=True)
            (d / "f").write_text(f"{a}{b}")
            (d / "x").write_text("exec")
            (d / "x").chmod(0o755)
            os.symlink("f", d / "l")
        (tree / f"d{a}" / "top").write_text(str(a))
    os.mkfifo(tree / "d1" / "fifo")
    (tree / "file").write_text("at the top")

    def walk(split: bool, store: Path):
        monkeypatch.setattr(keys.KeyMaker, "_worth_splitting", lambda self: split)
        maker = keys.KeyMaker.__new__(keys.KeyMaker)
        maker.stat = StatCache(store)
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        maker._walk(h1, tree, "tree", os.lstat(tree), True, False, lambda rel: rel.endswith("/e3"))
        maker._walk(h2, tree, ".", os.lstat(tree), True, True, None)
        return h1.hexdigest(), h2.hexdigest(), maker.stat

    used = []
    real = keys.KeyMaker._walk_in_two
    monkeypatch.setattr(keys.KeyMaker, "_walk_in_two", lambda self, *a: used.append(real(self, *a)) or used[-1])
    alone = walk(False, tmp_path / "alone.marshal")
    split = walk(True, tmp_path / "split.marshal")
    assert used and all(used)  # the split walk ran (and fed the hash), both times
    assert split[:2] == alone[:2]
    stats = split[2]
    assert stats.hashed == alone[2].hashed == (3 * 3 * 2 + 3 + 1) + (3 * 4 * 2 + 3 + 1)  # racy: read by both walks
    files = [path for path in tree.rglob("*") if path.is_file() and not path.is_symlink()]
    assert len(files) == 3 * 4 * 2 + 3 + 1
    for path in files:  # all racy: half of them hashed by the child
        assert stats.digest_of(str(path)) == file_sha256(path)
