"""The .aci archive layer on real files: writer output checked independently
(tarfile, hashlib, gzip bytes, actool), reader strictness, safe extraction of
hand-crafted malicious archives, atomic writes under SIGINT."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from acbuild.aci.archive import detect_compression, image_id_of, read_aci
from acbuild.aci.extract import extract_rootfs
from acbuild.aci.writer import rewrite_aci, source_date_epoch_from_env, write_aci
from acbuild.errors import ImageError, UsageError

REPO = Path(__file__).resolve().parent.parent
MANIFEST = (b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/test",'
            b'"labels":[{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}]}')
LONG_DIR = "d" * 60 + "/" + "e" * 60  # > 100 bytes with the file name: ustar prefix split
LONG_NAME = "n" * 200  # a single 200-byte component: cannot be split, needs PAX


def make_rootfs(root: Path, order: int = 1, mtime: int = 1_600_000_000) -> Path:
    """A tree with every entry kind; `order` flips the creation order."""
    root.mkdir()
    specs = [
        ("dir", "etc"), ("file", "etc/hosts"), ("file", "bin/sh"), ("dir", "var/empty"),
        ("dir", LONG_DIR), ("file", LONG_DIR + "/file.txt"), ("file", LONG_NAME),
        ("file", "usr/bin/su"), ("file", "B-upper"), ("file", "a-b"), ("file", "a/x"),
    ][::order]
    for kind, rel in specs:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.write_bytes(rel.encode() * 3 + b"\n")
            os.chmod(p, 0o644)  # as COPY normalises modes; the writer keeps them
    os.chmod(root / "usr/bin/su", 0o4755)
    os.chmod(root / "bin/sh", 0o755)
    os.chmod(root / "etc/hosts", 0o644)
    os.link(root / "etc/hosts", root / "etc/hosts.hard")
    os.symlink("../etc/hosts", root / "bin/rel-link")
    os.symlink("/" + LONG_DIR + "/file.txt", root / ("bin/abs-link-" + "l" * 90))
    os.mkfifo(root / "var/fifo")
    os.chmod(root / "var/fifo", 0o600)
    os.mknod(root / "var/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(root / "var/null", 0o666)
    for p in sorted(root.rglob("*"), key=lambda q: -len(q.parts)) + [root]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def tar_bytes(aci: Path) -> bytes:
    data = aci.read_bytes()
    for magic, mod in ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ", lzma)):
        if data.startswith(magic):
            return mod.decompress(data)
    return data


def test_layout_headers_and_id(tmp_path: Path, rootfs: Path, actool: str) -> None:
    out = tmp_path / "img.aci"
    image_id = write_aci(out, MANIFEST, rootfs, source_date_epoch=1_700_000_000)
    raw = tar_bytes(out)
    assert image_id == "sha512-" + hashlib.sha512(raw).hexdigest()
    assert image_id == image_id_of(out)
    assert raw.endswith(bytes(1024)) and len(raw) % 512 == 0  # two zero blocks, no record padding
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = tf.getmembers()
        by = {m.name: m for m in members}
        names = [m.name for m in members]
        manifest = tf.extractfile(by["manifest"]).read()
    assert names[0] == "rootfs" and names[-1] == "manifest" and manifest == MANIFEST
    # depth-first, each directory sorted by bytes ("a" and its children before "a-b")
    top = [n for n in names if n.count("/") == 1]
    assert top == sorted(top, key=lambda s: s.encode())
    assert names.index("rootfs/a/x") < names.index("rootfs/a-b")
    assert not any(n.startswith("./") or n.endswith("/") for n in names)
    assert by["rootfs/usr/bin/su"].mode == 0o4755
    assert by["rootfs/etc/hosts.hard"].islnk() and by["rootfs/etc/hosts.hard"].linkname == "rootfs/etc/hosts"
    assert by["rootfs/bin/rel-link"].issym() and by["rootfs/bin/rel-link"].linkname == "../etc/hosts"
    assert by["rootfs/var/fifo"].isfifo()
    null = by["rootfs/var/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert by[f"rootfs/{LONG_NAME}"].isreg() and by[f"rootfs/{LONG_DIR}/file.txt"].isreg()
    for m in members:
        assert (m.uname, m.gname) == ("", "")
        assert m.mtime == (1_700_000_000 if m.name == "manifest" else 1_600_000_000)
    assert (by["manifest"].mode, by["manifest"].uid, by["manifest"].gid) == (0o644, 0, 0)
    # ustar everywhere; the long directory name went into the prefix field, and
    # the unsplittable name and the 131-byte link target into PAX records
    assert raw.count(b"ustar\x0000") == len(members) + 2
    assert raw.count(b"././@PaxHeader") == 2
    assert by["rootfs/bin/abs-link-" + "l" * 90].linkname == "/" + LONG_DIR + "/file.txt"
    assert b"d" * 60 + b"\0" in raw  # the prefix field
    gz = out.read_bytes()[:10]
    assert gz[:3] == b"\x1f\x8b\x08" and gz[3] == 0  # deflate, FLG: no FNAME/FEXTRA/FCOMMENT
    assert gz[4:8] == b"\0\0\0\0" and gz[8] == 0 and gz[9] == 255  # MTIME 0, XFL 0, OS 255
    subprocess.run([actool, "validate", str(out)], check=True)
    assert read_aci(out).problems == []


def test_mtime_clamp_and_id_map(tmp_path: Path, rootfs: Path) -> None:
    os.chown(rootfs / "etc/hosts", 1234, 1234, follow_symlinks=False)
    out = tmp_path / "img.aci"
    write_aci(out, MANIFEST, rootfs, source_date_epoch=100, id_map={1234: 0})
    with tarfile.open(out) as tf:
        for m in tf.getmembers():
            assert m.mtime == 100
            assert (m.uid, m.gid) == (0, 0)


def test_reproducible(tmp_path: Path) -> None:
    """Different mtimes (both above the epoch), umask and creation order: same bytes."""
    old = os.umask(0o077)
    try:
        a = make_rootfs(tmp_path / "a", order=1, mtime=1_600_000_000)
    finally:
        os.umask(old)
    b = make_rootfs(tmp_path / "b", order=-1, mtime=1_650_000_000)
    ids = [write_aci(tmp_path / f"{r.name}.aci", MANIFEST, r, source_date_epoch=1_500_000_000) for r in (a, b)]
    assert ids[0] == ids[1]
    assert (tmp_path / "a.aci").read_bytes() == (tmp_path / "b.aci").read_bytes()


@pytest.mark.parametrize("compression", ["xz", "bzip2", "none"])
def test_other_compressions(tmp_path: Path, rootfs: Path, compression: str, actool: str) -> None:
    out = tmp_path / "img.aci"
    gz_id = write_aci(tmp_path / "gz.aci", MANIFEST, rootfs)
    image_id = write_aci(out, MANIFEST, rootfs, compression=compression)
    assert image_id == gz_id == "sha512-" + hashlib.sha512(tar_bytes(out)).hexdigest()
    info = read_aci(out)
    assert (info.compression, info.image_id, info.manifest_bytes, info.problems) == (
        compression, image_id, MANIFEST, [])
    subprocess.run([actool, "validate", str(out)], check=True)


def test_detect_compression() -> None:
    assert detect_compression(b"\x1f\x8b\x08") == "gzip"
    assert detect_compression(b"BZh9") == "bzip2"
    assert detect_compression(b"\xfd7zXZ\x00") == "xz"
    assert detect_compression(bytes(257) + b"ustar\x00") == "none"
    with pytest.raises(ImageError):
        detect_compression(b"\x28\xb5\x2f\xfd")  # zstd
    with pytest.raises(ImageError):
        detect_compression(bytes(512))  # v7 tar without magic


def test_source_date_epoch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch_from_env() == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert source_date_epoch_from_env() == 1234
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch_from_env()


def test_extract_roundtrip(tmp_path: Path, rootfs: Path) -> None:
    out = tmp_path / "img.aci"
    image_id = write_aci(out, MANIFEST, rootfs, source_date_epoch=2_000_000_000)
    dest = tmp_path / "dest"
    got = extract_rootfs(out, dest)
    assert (got.image_id, got.manifest_bytes, got.problems) == (image_id, MANIFEST, [])
    for p in sorted(rootfs.rglob("*")):
        q = dest / p.relative_to(rootfs)
        a, b = os.lstat(p), os.lstat(q)
        assert (a.st_mode, a.st_uid, a.st_gid, int(a.st_mtime)) == (b.st_mode, b.st_uid, b.st_gid, int(b.st_mtime)), p
        if p.is_symlink():
            assert os.readlink(p) == os.readlink(q)
        elif p.is_file():
            assert p.read_bytes() == q.read_bytes()
    assert os.lstat(dest / "etc/hosts").st_ino == os.lstat(dest / "etc/hosts.hard").st_ino
    assert stat.S_ISCHR(os.lstat(dest / "var/null").st_mode)


def test_rewrite_replaces_manifest(tmp_path: Path, rootfs: Path, actool: str) -> None:
    src = tmp_path / "src.aci"
    write_aci(src, MANIFEST, rootfs, compression="xz")
    new = MANIFEST.replace(b"example.com/test", b"example.com/other")
    image_id = rewrite_aci(src, tmp_path / "new.aci", new)
    info = read_aci(tmp_path / "new.aci")
    assert (info.image_id, info.compression, info.manifest_bytes, info.problems) == (image_id, "xz", new, [])
    assert info.entries[:-1] == read_aci(src).entries[:-1]
    subprocess.run([actool, "validate", str(tmp_path / "new.aci")], check=True)
    # in place, other compression
    rewrite_aci(src, src, new, compression="gzip")
    assert read_aci(src).manifest_bytes == new and read_aci(src).compression == "gzip"


# --- hand-crafted archives ----------------------------------------------------------------


def craft(path: Path, entries: list[tuple[str, str, str | bytes]]) -> Path:
    """A plain tar of (name, kind, data-or-linkname) with kind in dir/file/sym/hard."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "dir" else 0o644
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "file":
                payload = data if isinstance(data, bytes) else data.encode()
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                ti.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                ti.linkname = str(data)
                tf.addfile(ti)
    return path


BASE = [("rootfs", "dir", ""), ("manifest", "file", MANIFEST)]

MALICIOUS = {
    "symlink-then-through": [("rootfs/evil", "sym", "/tmp/OUTSIDE"), ("rootfs/evil/pwned", "file", "x")],
    "symlink-parent-dotdot": [("rootfs/up", "sym", "../../.."), ("rootfs/up/pwned", "file", "x")],
    "dotdot-name": [("rootfs/../../pwned", "file", "x")],
    "dotdot-manifest": [("rootfs/../manifest", "file", MANIFEST)],
    "absolute-name": [("/tmp/OUTSIDE/pwned", "file", "x")],
    "hardlink-passwd": [("rootfs/passwd", "hard", "/etc/passwd")],
    "hardlink-dotdot": [("rootfs/passwd", "hard", "rootfs/../../etc/passwd")],
}
# What extract_rootfs says about each, after "<aci>: ". The checker refuses an unsafe name
# or link target before anything is written; a symlink that stays inside the rootfs (an
# absolute target is the rootfs's own /tmp) is written, and the entry through it fails to
# open its parent: O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR (ELOOP on some kernels).
REFUSALS = {
    "symlink-then-through": r"refusing unsafe entry: rootfs/evil/pwned: is below the symlink rootfs/evil",
    "symlink-parent-dotdot": r"refusing unsafe entry: rootfs/up: symlink target '\.\./\.\./\.\.' escapes rootfs",
    "dotdot-name": r"refusing unsafe entry: rootfs/\.\./\.\./pwned: '\.\.' in entry name",
    "dotdot-manifest": r"refusing unsafe entry: rootfs/\.\./manifest: '\.\.' in entry name",
    "absolute-name": r"refusing unsafe entry: OUTSIDE/pwned: absolute entry name",
    "hardlink-passwd": r"refusing unsafe entry: rootfs/passwd: hardlink target '/etc/passwd' is not inside rootfs",
    "hardlink-dotdot": r"refusing unsafe entry: rootfs/passwd: hardlink target 'rootfs/\.\./\.\./etc/passwd' is not inside rootfs",
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archives_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    entries = [(n.replace("/tmp/OUTSIDE", str(outside)), k, d if not isinstance(d, str) else d.replace("/tmp/OUTSIDE", str(outside)))
               for n, k, d in MALICIOUS[case]]
    aci = craft(tmp_path / "bad.aci", BASE + entries)
    passwd = Path("/etc/passwd").read_bytes()
    dest = tmp_path / "sub" / "dest"
    with pytest.raises(ImageError) as err:
        extract_rootfs(aci, dest)
    expected = REFUSALS[case].replace("OUTSIDE", re.escape(str(outside)))
    assert re.fullmatch(f"{re.escape(str(aci))}: {expected}", str(err.value)), str(err.value)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "sub" / "pwned").exists()
    assert Path("/etc/passwd").read_bytes() == passwd
    assert read_aci(aci).problems  # validate gives the same verdict


def test_reader_is_strict(tmp_path: Path) -> None:
    cases = {
        "rootfsX/file": [("rootfsX/file", "file", "x")],
        "duplicate": [("rootfs/a", "file", "x"), ("./rootfs/a", "file", "y")],
        "second rootfs": [("rootfs/", "dir", "")],
        "escaping symlink": [("rootfs/a/l", "sym", "../../x")],
        "absolute escaping symlink": [("rootfs/l", "sym", "/../x")],
        "hardlink outside rootfs": [("rootfs/h", "hard", "manifest")],
    }
    for what, extra in cases.items():
        problems = read_aci(craft(tmp_path / "c.aci", BASE + extra)).problems
        assert problems, what
    ok = read_aci(craft(tmp_path / "ok.aci", BASE + [("rootfs/a/l", "sym", "../x"), ("rootfs/b", "sym", "/a/../b")]))
    assert ok.problems == []
    only_children = read_aci(craft(tmp_path / "n.aci", [("rootfs/x", "file", "x"), ("manifest", "file", MANIFEST)]))
    assert any("no rootfs" in p for p in only_children.problems)


def test_later_entry_replacing_a_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink to a directory, then a directory of the same name: a duplicate,
    which validate reports, so extraction refuses it too (one verdict), and
    nothing is written through the link."""
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    aci = craft(tmp_path / "r.aci", BASE + [("rootfs/d", "sym", str(outside)), ("rootfs/d", "dir", ""),
                                            ("rootfs/d/f", "file", "in")])
    assert any("duplicate" in p for p in read_aci(aci).problems)
    with pytest.raises(ImageError, match="rootfs/d: duplicate entry"):
        extract_rootfs(aci, tmp_path / "dest")
    assert list(outside.iterdir()) == []


def test_path_filter(tmp_path: Path, rootfs: Path) -> None:
    out = tmp_path / "img.aci"
    write_aci(out, MANIFEST, rootfs)
    seen: list[tuple[str, bool]] = []

    def keep(name: str, is_dir: bool) -> bool:
        seen.append((name, is_dir))
        return is_dir or name == "rootfs/etc/hosts"

    extract_rootfs(out, tmp_path / "dest", path_filter=keep)
    files = sorted(str(p.relative_to(tmp_path / "dest")) for p in (tmp_path / "dest").rglob("*") if not p.is_dir())
    assert files == ["etc/hosts"]
    assert ("rootfs", True) in seen and ("rootfs/etc", True) in seen


# --- atomicity and the CLI -----------------------------------------------------------------


def started(d: Path) -> bool:
    """Some file in `d` has bytes. The writer may rename or remove its temp file between
    listing and stat: that is not an error here, just not yet (or no longer) started."""
    for p in d.iterdir():
        try:
            if p.stat().st_size:
                return True
        except OSError:
            pass
    return False


def test_sigint_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(150):
        (root / f"f{i:03d}").write_bytes(chunk)
    out = tmp_path / "out" / "big.aci"
    out.parent.mkdir()
    script = ("import sys; from pathlib import Path; from acbuild.aci.writer import write_aci;"
              f"write_aci(Path({str(out)!r}), b'{{}}', Path({str(root)!r}), compression='xz')")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not started(out.parent):
        time.sleep(0.01)
    temps = list(out.parent.iterdir())
    assert temps and temps[0].name.startswith(".big.aci.")  # the write had started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    assert list(out.parent.iterdir()) == []


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_pack_and_image_id_cli(tmp_path: Path, actool: str) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    make_rootfs(layout / "rootfs")
    (layout / "manifest").write_bytes(MANIFEST)
    r = run_cli("pack", str(layout), str(tmp_path / "a.aci"))
    assert r.returncode == 0, r.stderr
    image_id = r.stdout.strip()
    assert image_id == "sha512-" + hashlib.sha512(tar_bytes(tmp_path / "a.aci")).hexdigest()
    assert run_cli("image-id", str(tmp_path / "a.aci")).stdout.strip() == image_id
    subprocess.run([actool, "validate", str(tmp_path / "a.aci")], check=True)
    assert run_cli("pack", str(layout), str(tmp_path / "a.aci")).returncode == 1  # exists
    assert run_cli("pack", "--overwrite", "--compression", "xz", str(layout), str(tmp_path / "a.aci")).returncode == 0
    assert run_cli("image-id", str(tmp_path / "a.aci")).stdout.strip() == image_id
    r = run_cli("pack", str(layout), str(tmp_path / "a.tar"))
    assert r.returncode == 3 and ".aci" in r.stderr
    (layout / "manifest").write_bytes(MANIFEST.replace(b'"example.com/test"', b'"Bad Name"'))
    r = run_cli("pack", str(layout), str(tmp_path / "b.aci"))
    assert r.returncode == 1 and "name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.aci").exists()
    r = run_cli("image-id", str(tmp_path / "missing.aci"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
