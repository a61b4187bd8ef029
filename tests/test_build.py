"""acbuild build, end to end through the real command line: images actool
accepts, byte-identical rebuilds, COPY semantics, failures that leave nothing."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")


def acbuild(*args, cwd=None, env=None, check=True, umask=None) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    result = subprocess.run(
        [sys.executable, "-m", "acbuild", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=preexec,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def image_id_of(path: Path) -> str:
    """Independent of acbuild: sha512 of the decompressed tar."""
    with gzip.open(path, "rb") as f:
        return "sha512-" + hashlib.sha512(f.read()).hexdigest()


def validate(actool: str, path: Path) -> None:
    result = subprocess.run([actool, "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"actool rejects {path}: {result.stdout}{result.stderr}"


def example_context(tmp_path: Path) -> Path:
    """A copy of the repository bits ACIfile.example needs, plus busybox."""
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True)
    shutil.copy(REPO / "ACIfile.example", ctx / "ACIfile")
    shutil.copytree(REPO / "examples/static-site", ctx / "examples/static-site")
    shutil.copy(BUSYBOX, ctx / "busybox")
    return ctx


def examples_without_run() -> list[Path]:
    return [f for f in sorted(REPO.glob("examples/*/ACIfile")) if "\nRUN" not in "\n" + f.read_text().upper()]


def test_example_builds_and_actool_accepts_it(tmp_path, actool):
    ctx = example_context(tmp_path)
    out = tmp_path / "example.aci"
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", out)
    image_id = result.stdout.strip()
    assert image_id == image_id_of(out)
    validate(actool, out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names[0] == "rootfs" and names[-1] == "manifest"
        assert "rootfs/bin/sh" in names and "rootfs/srv/www/version.txt" in names
        members = tar.getmembers()
        assert all(m.mtime == 0 for m in members)  # SOURCE_DATE_EPOCH default
        assert not any(n.startswith(("rootfs/proc/", "rootfs/dev/", "rootfs/tmp/")) for n in names)
        assert tar.extractfile("rootfs/srv/www/version.txt").read() == b"built from version 1.0.0\n"
    # progress lines name each step
    assert "[1/" in result.stderr and "RUN [\"/bin/busybox\"" in result.stderr


@pytest.mark.parametrize("acifile", examples_without_run(), ids=lambda p: p.parent.name)
def test_examples_without_run_build_and_validate(acifile, tmp_path, actool):
    out = tmp_path / "out.aci"
    acbuild("build", "-f", acifile, "-o", out)
    validate(actool, out)


def scramble(ctx: Path, seed: int) -> None:
    """Different mtimes, permission bits (as another umask or checkout gives) and atimes."""
    rng = random.Random(seed)
    for path in sorted(ctx.rglob("*")):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            os.chmod(path, (mode | 0o020) if rng.random() < 0.5 else (mode & ~0o077))
        stamp = rng.randint(1_000_000_000, 1_900_000_000)
        os.utime(path, (stamp, stamp), follow_symlinks=False)


def test_two_copies_with_different_mtimes_and_umask_give_identical_bytes(tmp_path):
    outs = []
    for n, umask in ((1, 0o022), (2, 0o077)):
        ctx = example_context(tmp_path / f"copy{n}")
        scramble(ctx, seed=n)
        out = tmp_path / f"out{n}.aci"
        acbuild("build", "-f", ctx / "ACIfile", "-o", out, umask=umask)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_examples_without_run_are_reproducible_across_copies(tmp_path):
    for acifile in examples_without_run():
        outs = []
        for n in (1, 2):
            ctx = tmp_path / f"{acifile.parent.name}-{n}"
            shutil.copytree(acifile.parent, ctx)
            scramble(ctx, seed=n)
            out = tmp_path / f"{acifile.parent.name}-{n}.aci"
            acbuild("build", "-f", ctx / "ACIfile", "-o", out, umask=0o022 if n == 1 else 0o027)
            outs.append(out.read_bytes())
        assert outs[0] == outs[1], acifile


def test_source_date_epoch_clamps_mtimes(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x")
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/t\nCOPY f /f\n")
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci", env=env)
    with tarfile.open(tmp_path / "t.aci") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    env["SOURCE_DATE_EPOCH"] = "yesterday"
    bad = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "u.aci", env=env, check=False)
    assert bad.returncode != 0 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_copy_semantics(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "dir/sub").mkdir(parents=True)
    (ctx / "dir/a.txt").write_text("a")
    (ctx / "dir/sub/b.sh").write_text("b")
    os.chmod(ctx / "dir/sub/b.sh", 0o700)
    (ctx / "dir/link").symlink_to("a.txt")
    (ctx / "one.txt").write_text("1")
    (ctx / "two.txt").write_text("2")
    (ctx / "ACIfile").write_text(
        "FROM scratch\nNAME example.com/copy\n"
        "COPY dir /contents\n"          # a directory copies its contents
        "COPY one.txt /file-renamed\n"  # a file to a new name
        "COPY one.txt /into/\n"         # trailing slash: into a directory
        "COPY *.txt /glob/\n"           # globs, several sources
        "WORKDIR /work\n"
        "COPY --chmod=600 --chown=10:20 one.txt rel\n"  # relative to WORKDIR
    )
    out = tmp_path / "c.aci"
    acbuild("build", "-f", ctx / "ACIfile", "-o", out)
    with tarfile.open(out) as tar:
        m = {x.name: x for x in tar.getmembers()}
    assert m["rootfs/contents/a.txt"].isfile() and m["rootfs/contents/sub/b.sh"].mode == 0o755
    assert m["rootfs/contents/a.txt"].mode == 0o644
    assert m["rootfs/contents/link"].issym() and m["rootfs/contents/link"].linkname == "a.txt"
    assert m["rootfs/file-renamed"].isfile() and m["rootfs/into/one.txt"].isfile()
    assert {"rootfs/glob/one.txt", "rootfs/glob/two.txt"} <= set(m)
    rel = m["rootfs/work/rel"]
    assert (rel.mode, rel.uid, rel.gid) == (0o600, 10, 20)


@pytest.mark.parametrize(
    "line, message",
    [
        ("COPY missing.txt /x", 'COPY: "missing.txt" not found in the build context'),
        ("COPY a.txt b.txt /x", 'the destination must be a directory ending in "/"'),
        ("COPY *.nothing /x/", 'COPY: "*.nothing" not found'),
    ],
)
def test_copy_errors_name_the_line(tmp_path, line, message):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    (ctx / "b.txt").write_text("b")
    (ctx / "ACIfile").write_text(f"FROM scratch\nNAME example.com/t\n{line}\n")
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci", check=False)
    assert result.returncode == 1
    assert f"{ctx / 'ACIfile'}:3:1: " in result.stderr and message in result.stderr
    assert not (tmp_path / "t.aci").exists()


def busybox_context(tmp_path: Path, body: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "ACIfile").write_text(
        "FROM scratch\nNAME example.com/t\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n' + body
    )
    return ctx


def test_failing_run_stops_the_build_and_writes_nothing(tmp_path):
    ctx = busybox_context(tmp_path, "RUN echo before\nRUN exit 3\nRUN echo after\n")
    out = tmp_path / "t.aci"
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", out, check=False)
    assert result.returncode == 1
    assert f"{ctx / 'ACIfile'}:6:1: RUN exited with status 3" in result.stderr
    assert "echo after" not in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".t.aci*"))


def test_unnamed_image_is_refused(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text("FROM scratch\n")
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci", check=False)
    assert result.returncode == 1 and "the image has no name" in result.stderr


def test_output_must_end_in_aci(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/t\n")
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "t.tar", check=False)
    assert result.returncode == 3 and "must end in .aci" in result.stderr


def build_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "acbuild-build-" in line]


def processes_named(word: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_build_leaves_nothing_behind(tmp_path, sig):
    marker = f"sleep 31{sig.value}"
    ctx = busybox_context(tmp_path, f"RUN {marker}\n")
    out = tmp_path / "t.aci"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    deadline = time.monotonic() + 30
    while not processes_named(marker):
        assert time.monotonic() < deadline, "the RUN step never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    assert not processes_named(marker)
    assert not out.exists() and not list(tmp_path.glob(".t.aci*"))
    assert list(tmpdir.iterdir()) == []  # the work dir is gone
    assert build_mounts() == []
    # and the next build works
    (tmp_path / "again").mkdir()
    ctx2 = busybox_context(tmp_path / "again", "RUN true\n")
    acbuild("build", "-f", ctx2 / "ACIfile", "-o", out)
    assert out.exists()


def test_copy_never_reaches_outside_the_context_through_symlinks(tmp_path):
    """A build context is untrusted: its symlinks resolve inside it, as in a chroot,
    and nothing COPY does to the image may touch the host (a reviewer's exploit:
    COPY --chown --chmod through a link used to chown/chmod the link's host target)."""
    victim = tmp_path / "victim"
    victim.write_text("host file")
    os.chmod(victim, 0o600)
    before = victim.stat()
    outside = tmp_path / "outdir"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "inside.txt").write_text("inside")
    (ctx / "abs-link").symlink_to(victim)            # absolute: resolves to ctx/<victim path>
    (ctx / "rel-link").symlink_to("../victim")       # relative: .. stops at the context root
    (ctx / "inner-link").symlink_to("inside.txt")    # stays inside: followed
    (ctx / "dir-link").symlink_to(outside)
    (ctx / "sub/deep").symlink_to("../../outdir")
    for line, message in [
        ("COPY --chown=1234:5678 --chmod=4777 abs-link /x", 'COPY: "abs-link" not found in the build context'),
        ("COPY rel-link /x", 'COPY: "rel-link" not found'),
        ("COPY dir-link /d/", 'COPY: "dir-link" not found'),
        ("COPY dir-link/* /g/", 'COPY: "dir-link/*" not found'),
        ("COPY sub/deep/secret /s", 'COPY: "sub/deep/secret" not found'),
    ]:
        (ctx / "ACIfile").write_text(f"FROM scratch\nNAME example.com/t\n{line}\n")
        result = acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci", check=False)
        assert result.returncode == 1 and message in result.stderr, (line, result.stderr)
    after = victim.stat()
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == (
        before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)
    # A link that stays inside is followed; links inside copied trees stay links.
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/t\nCOPY --chmod=640 inner-link /x\nCOPY sub /sub\n")
    acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci")
    with tarfile.open(tmp_path / "t.aci") as tar:
        x = tar.getmember("rootfs/x")
        assert x.isfile() and x.mode == 0o640 and tar.extractfile(x).read() == b"inside"
        deep = tar.getmember("rootfs/sub/deep")
        assert deep.issym() and deep.linkname == "../../outdir"
    assert victim.stat().st_mode & 0o7777 == 0o600


def test_extraction_does_not_depend_on_the_umask(tmp_path):
    """Parents an archive does not list (rootfs/usr for rootfs/usr/bin/x) are made
    0755, not by the caller's umask: begin/--modify output would differ otherwise."""
    import io

    from acbuild.aci.extract import extract_rootfs

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("manifest", b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"a/b"}'),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        root = tarfile.TarInfo("rootfs")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        x = tarfile.TarInfo("rootfs/usr/bin/x")
        tar.addfile(x, io.BytesIO(b""))
    image = tmp_path / "nested.aci"
    image.write_bytes(raw.getvalue())
    old = os.umask(0o077)
    try:
        dest = tmp_path / "rootfs"
        dest.mkdir()
        extract_rootfs(image, dest)
    finally:
        os.umask(old)
    assert (dest / "usr").stat().st_mode & 0o777 == 0o755
    assert (dest / "usr/bin").stat().st_mode & 0o777 == 0o755


def test_damaged_base_image_is_an_error_at_the_from_line(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x")
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/base\nCOPY f /f\n")
    acbuild("build", "-f", ctx / "ACIfile", "-o", ctx / "base.aci")
    with open(ctx / "base.aci", "ab") as f:
        f.write(b"junk")
    (ctx / "ACIfile").write_text("FROM base.aci\nNAME example.com/t\n")
    result = acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", tmp_path / "t.aci", check=False)
    assert result.returncode == 1
    assert f"\n{ctx / 'ACIfile'}:1:1: FROM base.aci: {ctx / 'base.aci'}: cannot read: " in result.stderr and "Traceback" not in result.stderr
