"""Hostile ACIfiles, ignore files and contexts, through the CLI: each gives one
clear error (or builds) quickly, never a hang or a traceback. Each case hung,
crashed or ran for minutes before acbuild.limits and the linear ignore matcher."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.hostile import QUICK_BOUND, acbuild, assert_clear_error, write


def plan(tmp_path, text: str | bytes, *extra):
    path = write(tmp_path / "ACIfile", text)
    return acbuild("plan", "-f", path, *extra)


def build(ctx, *extra, **kw):
    return acbuild("build", "-f", ctx / "ACIfile", "-o", ctx.parent / "out.aci", "--cache-dir", ctx.parent / "cache",
                   *extra, **kw)


# ------------------------------------------------------------ non-regular files


def test_fifo_as_acifile_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ACIfile"
    os.mkfifo(fifo)
    for command in ("plan", "build"):
        extra = ["-o", tmp_path / "x.aci"] if command == "build" else []
        result = acbuild(command, "-f", fifo, *extra, timeout=QUICK_BOUND)
        assert_clear_error(result, "not a regular file")


def test_fifo_as_ignore_file_is_refused_at_once(tmp_path):
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY a /a\n")
    write(ctx / "a", "a")
    os.mkfifo(ctx / ".acbuildignore")
    assert_clear_error(build(ctx), ".acbuildignore", "not a regular file")


def test_directory_as_acifile_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    assert_clear_error(acbuild("plan", "-f", tmp_path / "d"), "not a regular file")


# ------------------------------------------------------------ ignore patterns


def test_backtracking_ignore_pattern_is_matched_in_linear_time(tmp_path):
    """`*a*a*a...b` against a long run of a's took minutes with the regex translation."""
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY . /\n")
    write(ctx / ("a" * 200), "x")
    write(ctx / "keep", "k")
    write(ctx / ".acbuildignore", "*a" * 40 + "b\n" + "**a" * 20 + "b\n")
    result = build(ctx, "-q", timeout=QUICK_BOUND)
    assert result.returncode == 0, result.stderr


def test_ignore_semantics_survive_the_new_matcher(tmp_path):
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY . /\n")
    for name in ("a.md", "README.md", "build/x.o", "build/keep.txt", "src/deep/y.tmp", "src/z.c"):
        write(ctx / name, name)
    write(ctx / ".acbuildignore", "*.md\n!README.md\nbuild/\n!build/keep.txt\n**/*.tmp\n[!s]*.c\n")
    result = build(ctx)
    assert result.returncode == 0, result.stderr
    listing = acbuild("cat-manifest", ctx.parent / "out.aci")  # readable image
    assert listing.returncode == 0, listing.stderr
    import tarfile

    with tarfile.open(ctx.parent / "out.aci") as tf:
        names = set(tf.getnames())
    assert "rootfs/README.md" in names and "rootfs/a.md" not in names
    assert "rootfs/build/keep.txt" in names and "rootfs/build/x.o" not in names
    assert "rootfs/src/z.c" in names and "rootfs/src/deep/y.tmp" not in names


def test_huge_ignore_file_is_refused(tmp_path):
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY . /\n")
    write(ctx / ".acbuildignore", "x" * (2 << 20))
    assert_clear_error(build(ctx, timeout=QUICK_BOUND), ".acbuildignore")


# ------------------------------------------------------------ ACIfile size and content


@pytest.mark.parametrize("body, needle", [("LABEL a=b\n", "bytes"), ("\n", "lines"), ("LABEL a=b \\\n", "bytes")])
def test_200000_line_acifile_is_refused_quickly(tmp_path, body, needle):
    result = plan(tmp_path, "FROM scratch\n" + body * 200_000)
    assert_clear_error(result, needle)
    assert result.elapsed < QUICK_BOUND


def test_acifile_at_the_limits_parses_quickly(tmp_path):
    """What the limits let through is parsed in bounded time (20,000 lines)."""
    from acbuild import limits

    result = plan(tmp_path, "FROM scratch\n" + "LABEL a=b\n" * (limits.MAX_ACIFILE_LINES - 3))
    assert "duplicate" in result.stderr or result.returncode == 0, result.stderr[-500:]
    assert result.elapsed < QUICK_BOUND


def test_10_mb_line_is_refused_quickly(tmp_path):
    result = plan(tmp_path, "FROM scratch\nLABEL a=" + "b" * (10 << 20) + "\n")
    assert_clear_error(result, "bytes")
    assert result.elapsed < QUICK_BOUND


def test_nul_byte_is_a_positioned_error(tmp_path):
    result = plan(tmp_path, "FROM scratch\nLABEL a=b\0c\n")
    assert_clear_error(result, "ACIfile:2:10", "NUL")


def test_nul_byte_in_a_copy_source(tmp_path):
    ctx = tmp_path / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY a\0b /x\n")
    assert_clear_error(build(ctx), "ACIfile:3:", "NUL")


@pytest.mark.parametrize("line", ["\x0c", "\x1c", "\x85", "\u2028", "FROM scratch\x0b", "\r"])
def test_odd_line_breaks_give_a_positioned_error_not_index_error(tmp_path, line):
    """str.splitlines() breaks lines where Lark does not: the caret excerpt looked
    up the wrong line and indexed past its end (IndexError in parse.py)."""
    result = plan(tmp_path, f"FROM scratch\n{line}x\n")
    assert "Traceback" not in result.stderr and "IndexError" not in result.stderr, result.stderr


def test_arg_doubling_chain_is_refused_quickly(tmp_path):
    lines = ["ARG A0=xxxxxxxxxxxxxxxx"]
    lines += [f"ARG A{i}=${{A{i - 1}}}${{A{i - 1}}}" for i in range(1, 40)]
    lines += ["FROM scratch", "LABEL x=$A39"]
    result = plan(tmp_path, "\n".join(lines) + "\n")
    assert_clear_error(result, "variable substitution")
    assert result.elapsed < QUICK_BOUND


def test_env_doubling_chain_is_refused_quickly(tmp_path):
    lines = ["FROM scratch", "ENV E0=xxxxxxxxxxxxxxxx"]
    lines += [f"ENV E{i}=${{E{i - 1}}}${{E{i - 1}}}" for i in range(1, 40)]
    result = plan(tmp_path, "\n".join(lines) + "\n")
    assert_clear_error(result, "variable substitution")


@pytest.mark.parametrize("template", [
    "EXEC {json}",
    'RUN {json}',
    "EVENT pre-start {json}",
    "ISOLATOR os/linux/capabilities-retain-set {json}",
    'MANIFEST {{"annotations": {json}}}',
])
def test_deeply_nested_json_is_refused(tmp_path, template):
    deep = "[" * 5000 + "]" * 5000
    result = plan(tmp_path, "FROM scratch\n" + template.format(json=deep) + "\n")
    assert_clear_error(result, "nested")


def test_deeply_nested_manifest_in_replace_manifest(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    assert acbuild("--work-path", work, "begin").returncode == 0
    manifest = write(tmp_path / "m.json", '{"acKind":"ImageManifest","x":' + "[" * 5000 + "]" * 5000 + "}")
    result = acbuild("--work-path", work, "replace-manifest", manifest)
    assert_clear_error(result, "nested")
    acbuild("--work-path", work, "end")


# ------------------------------------------------------------ deep and long context paths


@pytest.fixture
def deep_tmp(tmp_path):
    """tmp_path, emptied with rm -rf afterwards: pytest's own clean-up recurses and
    fails on a 1,500-level tree."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def _deep_dir(top, depth: int, name: str = "d") -> str:
    """top/d/d/.../d (depth levels) made with relative mkdirs (paths beyond PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("leaf")
    finally:
        os.close(fd)
    return "/".join([name] * depth) + "/leaf"


def test_1500_level_context_is_keyed_without_recursion_error(deep_tmp):
    ctx = deep_tmp / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY . /\n")
    _deep_dir(ctx, 1500)
    result = build(ctx, timeout=180)  # real work (1,500 directories copied and keyed), not a refusal
    assert "RecursionError" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    again = build(ctx, "-q", timeout=180)  # from the cache: the snapshot and its keys walk the same depth
    assert again.returncode == 0 and again.stdout.strip() in result.stdout, again.stderr[-3000:]


def test_6000_byte_context_path_is_a_clear_error(deep_tmp):
    """Linux allows paths past PATH_MAX (4096) when walked relative to a directory
    fd; COPY, the writer and the cache still name files by full path, so such a
    path is refused, but with one clear error, not a traceback (a known gap:
    README, Limits)."""
    ctx = deep_tmp / "ctx"
    write(ctx / "ACIfile", "FROM scratch\nNAME example.com/x\nCOPY . /\n")
    rel = _deep_dir(ctx, 24, "n" * 250)  # 24 x 251 bytes: over PATH_MAX
    assert len(rel) > 6000
    assert_clear_error(build(ctx), "ACIfile:3:1: COPY", "File name too long")


def test_limits_are_documented_in_the_readme():
    from pathlib import Path

    from acbuild import limits

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for text in ("--max-image-size", limits.MAX_IMAGE_SIZE_ENV, "max-image-size", ".acbuildignore"):
        assert text in readme
    assert "Limits" in readme



def test_deeply_nested_isolator_file_in_the_isolator_verb(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    assert acbuild("--work-path", work, "begin").returncode == 0
    value = write(tmp_path / "v.json", "[" * 5000 + "]" * 5000)
    result = acbuild("--work-path", work, "isolator", "add", "os/linux/capabilities-retain-set", value)
    assert_clear_error(result, "nested")
    acbuild("--work-path", work, "end")


def test_fifo_as_script_is_refused(tmp_path):
    fifo = tmp_path / "script.acb"
    os.mkfifo(fifo)
    assert_clear_error(acbuild("script", fifo, timeout=QUICK_BOUND), "not a regular file")
