"""RUN --mount=type=bind shows a private copy of the context path: what
.acbuildignore hides from COPY is hidden here too, and an `rw` mount's writes
stay in the step (BuildKit's rule) instead of landing in the host's context.
Real RUN steps in real namespaces (root or rootless user namespaces)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import require
from tests.hostile import acbuild, write

BUSYBOX = Path("/bin/busybox")


@pytest.fixture
def ctx(tmp_path):
    require(BUSYBOX.exists(), "busybox-static is needed for RUN")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    write(ctx / "src/visible.txt", "visible")
    write(ctx / "src/secret.key", "SECRET")
    write(ctx / "src/sub/also.key", "SECRET2")
    write(ctx / ".acbuildignore", "**/*.key\n")
    return ctx


def build(ctx: Path, body: str, *extra):
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/bind\nCOPY busybox /bin/busybox\n"
          'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n' + body)
    return acbuild("build", "-f", ctx / "ACIfile", "-o", ctx.parent / "out.aci", "--cache-dir", ctx.parent / "cache",
                   *extra, timeout=120)


def test_bind_mount_hides_what_acbuildignore_hides(ctx):
    result = build(ctx, "RUN --mount=type=bind,source=src,target=/m "
                        "test -f /m/visible.txt && test ! -e /m/secret.key && test ! -e /m/sub/also.key "
                        "&& test -d /m/sub\n")
    assert result.returncode == 0, result.stderr


def test_bind_mount_of_the_whole_context_hides_them_too(ctx):
    result = build(ctx, "RUN --mount=type=bind,source=.,target=/m test ! -e /m/src/secret.key "
                        "&& test -f /m/src/visible.txt\n")
    assert result.returncode == 0, result.stderr


def test_rw_bind_mount_writes_never_reach_the_host(ctx):
    def listing():
        return sorted(p.relative_to(ctx).as_posix() for p in ctx.rglob("*") if p.name != "ACIfile")

    before = listing()
    result = build(ctx, "RUN --mount=type=bind,source=src,target=/m,rw "
                        "echo changed > /m/visible.txt && echo new > /m/new.txt && rm -rf /m/sub "
                        "&& cat /m/visible.txt | grep -q changed\n"
                        "RUN --mount=type=bind,source=src,target=/m grep -q '^visible$' /m/visible.txt "
                        "&& test ! -e /m/new.txt\n")
    assert result.returncode == 0, result.stderr
    assert (ctx / "src/visible.txt").read_text() == "visible"
    assert not (ctx / "src/new.txt").exists() and (ctx / "src/sub/also.key").exists()
    assert listing() == before


def test_read_only_bind_mount_stays_read_only(ctx):
    result = build(ctx, "RUN --mount=type=bind,source=src,target=/m touch /m/x\n")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert not (ctx / "src/x").exists()


def test_ignored_file_change_does_not_miss_the_cache(ctx):
    """The step sees no ignored file, so its key does not include them."""
    body = "RUN --mount=type=bind,source=src,target=/m cat /m/visible.txt\n"
    assert build(ctx, body).returncode == 0
    (ctx / "src/secret.key").write_text("ROTATED")
    again = build(ctx, body, "--progress", "plain")
    assert again.returncode == 0, again.stderr
    assert "RUN --mount=type=bind,source=src,target=/m cat /m/visible.txt  (cached)" in again.stderr, again.stderr
    (ctx / "src/visible.txt").write_text("edited")
    third = build(ctx, body, "--progress", "plain")
    assert "cat /m/visible.txt  (cached)" not in third.stderr, third.stderr
