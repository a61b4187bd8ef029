"""Multi-stage builds through the real CLI: FROM ... AS, COPY --from, --target, stages
skipped when not needed (a failing RUN in them would fail the build), and the
examples/multi-stage ACIfile checked by actool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")


def acbuild(*args, cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACBUILD_CACHE_DIR=str(cache))
    result = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def example(tmp_path: Path) -> Path:
    ctx = tmp_path / "multi-stage"
    shutil.copytree(REPO / "examples/multi-stage", ctx)
    shutil.copy(BUSYBOX, ctx / "busybox")
    return ctx


def members(aci: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(aci) as tar:
        return {m.name: m for m in tar.getmembers()}


def read(aci: Path, name: str) -> bytes:
    with tarfile.open(aci) as tar:
        return tar.extractfile(name).read()


def steps(metadata: Path) -> list[dict]:
    return json.loads(metadata.read_text())["steps"]


def test_example_builds_and_actool_accepts_it(tmp_path, actool):
    ctx = example(tmp_path)
    out = tmp_path / "site.aci"
    acbuild("build", "-f", ctx / "ACIfile", "-o", out, cache=tmp_path / "cache")
    check = subprocess.run([actool, "validate", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    names = members(out)
    assert read(out, "rootfs/srv/www/index.html").endswith(b"version 1.0.0.</p>\n")
    assert read(out, "rootfs/srv/www/credits.txt") == b"alpha: the builder stage\nzeta: the second stage\n"
    # the builder's tools and sources stay in the builder
    assert "rootfs/src" not in names and "rootfs/bin/sed" not in names
    assert sorted(n for n in names if n.startswith("rootfs/bin/")) == ["rootfs/bin/busybox"]


def test_target_builds_only_the_stages_it_needs(tmp_path):
    ctx = example(tmp_path)
    out = tmp_path / "builder.aci"
    result = acbuild("build", "-f", ctx / "ACIfile", "--target", "builder", "-o", out, "--metadata-file", tmp_path / "m.json",
                     cache=tmp_path / "cache")
    assert [s["stage"] for s in steps(tmp_path / "m.json")] == ["builder"] * 6
    assert "[6/6]" in result.stderr and "example.com/multi-stage\n" not in result.stderr
    names = members(out)
    assert "rootfs/src/index.html.in" in names and "rootfs/out/index.html" in names
    bad = acbuild("build", "-f", ctx / "ACIfile", "--target", "nope", "-o", out, cache=tmp_path / "cache", check=False)
    assert bad.returncode == 3 and '--target: no stage "nope" (stages: builder, 1)' in bad.stderr


def test_an_unused_stage_is_skipped(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "ACIfile").write_text(
        "FROM scratch AS broken\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "false"]\n'
        "FROM scratch AS used\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "echo made > /made"]\n'
        "FROM scratch\nNAME example.com/skip\n"
        "COPY --from=used /made /made\n"
    )
    out = tmp_path / "out.aci"
    result = acbuild("build", "-f", ctx / "ACIfile", "-o", out, "--metadata-file", tmp_path / "m.json", cache=tmp_path / "cache")
    assert read(out, "rootfs/made") == b"made\n"
    assert {s["stage"] for s in steps(tmp_path / "m.json")} == {"used", "2"}
    assert "false" not in result.stderr
    # the same file with the broken stage used fails, so the skip above is real
    (ctx / "ACIfile").write_text((ctx / "ACIfile").read_text() + "COPY --from=broken /bin/busybox /bb\n")
    failed = acbuild("build", "-f", ctx / "ACIfile", "-o", out, cache=tmp_path / "cache", check=False)
    assert failed.returncode == 1 and "RUN exited with status 1" in failed.stderr


def test_cached_copy_from_does_not_rebuild_its_stage(tmp_path):
    ctx = example(tmp_path)
    cache = tmp_path / "cache"
    acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "a.aci", cache=cache)
    # a change after COPY --from in the last stage: the builder is neither run nor restored
    text = (ctx / "ACIfile").read_text().replace('EXEC ["/bin/busybox", "httpd"', 'EXEC ["/bin/busybox", "httpd", "-v"')
    (ctx / "ACIfile").write_text(text)
    acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "b.aci", "--metadata-file", tmp_path / "m.json", cache=cache)
    hits = {(s["stage"], s["instruction"].split()[0]): s["cache"] for s in steps(tmp_path / "m.json")}
    assert hits[("builder", "RUN")] == "hit" and hits[("1", "COPY")] == "hit" and hits[("1", "EXEC")] == "miss"
    # a change in the builder's sources: its COPY and everything after it run again
    (ctx / "src/a.txt").write_text("alpha: changed\n")
    acbuild("build", "-f", ctx / "ACIfile", "-o", tmp_path / "c.aci", "--metadata-file", tmp_path / "m.json", cache=cache)
    record = [(s["stage"], s["instruction"].split()[0], s["cache"]) for s in steps(tmp_path / "m.json")]
    assert record == [
        ("builder", "FROM", "hit"), ("builder", "NAME", "hit"), ("builder", "COPY", "hit"), ("builder", "RUN", "hit"),
        ("builder", "COPY", "miss"), ("builder", "RUN", "miss"),
        ("1", "FROM", "hit"), ("1", "NAME", "hit"), ("1", "LABEL", "hit"), ("1", "COPY", "hit"),
        ("1", "COPY", "miss"), ("1", "EXEC", "miss"),
    ]
    assert read(tmp_path / "c.aci", "rootfs/srv/www/credits.txt").startswith(b"alpha: changed\n")
