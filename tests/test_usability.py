"""What a new user (or a Go acbuild script) meets first: global flags Go acbuild had,
scripts that end mid-line, output locations checked before any step runs, help
that lists only what works, and a README whose examples can be followed."""

from __future__ import annotations

import re
from pathlib import Path

from test_build import REPO, acbuild


def test_no_history_is_accepted_before_any_verb(tmp_path):
    """Go acbuild's global --no-history (its whole test suite passes it to every verb)."""
    work = tmp_path / "work"
    work.mkdir()
    acbuild("--no-history", "--work-path", work, "begin", "--record-annotations")
    acbuild("--work-path", work, "--no-history", "set-name", "example.com/quiet")
    acbuild("--work-path", work, "label", "add", "version", "1")
    manifest = acbuild("--work-path", work, "--no-history", "cat-manifest").stdout
    assert '"example.com/quiet"' in manifest
    # --no-history: this verb leaves no appc.io/acbuild/command-N annotation; the next does.
    assert manifest.count("appc.io/acbuild/command-") == 1
    acbuild("--no-history", "--work-path", work, "end")


def test_a_script_ending_in_an_escape_is_refused(tmp_path):
    script = tmp_path / "broken.acb"
    script.write_text("begin\nset-name example.com/x\nlabel add version 1 \\\n")
    result = acbuild("script", script, check=False)
    assert result.returncode == 3, result.stderr
    assert f"{script}:3:" in result.stderr and "ended with an escape" in result.stderr


def acifile_that_would_run(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/out\nCOPY ACIfile /ACIfile\n")
    return ctx / "ACIfile"


def test_an_output_in_a_missing_directory_is_refused_before_building(tmp_path):
    acifile = acifile_that_would_run(tmp_path)
    out = tmp_path / "no/such/dir/app.aci"
    result = acbuild("build", "-f", acifile, "-o", out, check=False)
    assert result.returncode == 3, result.stderr
    assert "[1/" not in result.stderr, "steps ran before the output location was checked"
    assert f"{out.parent}: no such directory" in result.stderr
    assert re.search(r"\.app\.aci\.\d+", result.stderr) is None, "internal temp name in the message"


def test_an_empty_output_is_refused(tmp_path):
    acifile = acifile_that_would_run(tmp_path)
    result = acbuild("build", "-f", acifile, "-o", "", check=False, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "[1/" not in result.stderr and "-o" in result.stderr and "empty" in result.stderr


def test_launch_help_does_not_speak_of_base_images():
    text = acbuild("launch", "--help").stdout
    assert "base image" not in text
    assert "--insecure-skip-verify" in text


def test_help_lists_modify_only_where_it_works():
    assert "--modify" not in acbuild("write", "--help").stdout
    assert "--modify" in acbuild("run", "--help").stdout  # run works on an existing image
    for verb in ("begin", "end", "history"):
        assert "--modify" not in acbuild(verb, "--help").stdout, verb


def test_readme_quick_start_makes_the_key_it_trusts():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "pubkey.asc" in quick
    assert re.search(r"gpg .*--export.*> *pubkey\.asc", quick), "the quick start never makes pubkey.asc"


def test_the_example_acifile_points_only_at_examples_that_exist():
    text = (REPO / "ACIfile.example").read_text()
    for name in re.findall(r"examples/([\w.-]+)", text):
        assert (REPO / "examples" / name).exists(), f"ACIfile.example names a missing examples/{name}"


def test_every_examples_path_the_readme_names_exists():
    for name in re.findall(r"examples/([\w-]+(?:\.\w+)?)", (REPO / "README.md").read_text()):
        assert (REPO / "examples" / name).exists(), f"README names a missing examples/{name}"

