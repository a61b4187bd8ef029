"""The command line as a whole: the command table, help, exit codes."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from acbuild.cli import COMMAND_MODULES, COMMANDS, ArgumentParser, build_parser, command_of


def registered_by(module: str) -> set[str]:
    parser = ArgumentParser(prog="acbuild")
    sub = parser.add_subparsers()
    importlib.import_module(f"acbuild.cli.{module}").add_parser(sub)
    return set(sub.choices)


def test_command_table_matches_what_the_modules_register():
    for module in COMMANDS:
        assert registered_by(module) == {c for c, m in COMMAND_MODULES.items() if m == module}, module


@pytest.mark.parametrize(
    "argv, command",
    [(["run", "--", "true"], "run"), (["--work-path", "/x", "label", "add"], "label"),
     (["--modify", "a.aci", "env", "add"], "env"), (["--debug", "build"], "build"), (["--help"], None)],
)
def test_command_of(argv, command):
    assert command_of(argv) == command


def test_every_command_has_help_with_a_description():
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None))
    assert set(sub.choices) == set(COMMAND_MODULES)
    for name, command in sub.choices.items():
        assert command.description, f"acbuild {name} --help has no description"
        assert command.format_help().startswith("usage: acbuild"), name


@pytest.mark.parametrize("argv, code", [(["nosuchverb"], 3), (["build"], 3), ([], 3), (["--version"], 0)])
def test_exit_codes_and_no_traceback(argv, code):
    result = subprocess.run([sys.executable, "-m", "acbuild", *argv], capture_output=True, text=True)
    assert result.returncode == code
    assert "Traceback" not in result.stderr


def test_begin_follows_the_configured_signature_policy(tmp_path):
    """acbuild.toml's require-signatures holds for `begin` as for `build` (a reviewer
    found begin ignored the configuration)."""
    import shutil as sh

    (tmp_path / "cfg/acbuild").mkdir(parents=True)
    (tmp_path / "cfg/acbuild/acbuild.toml").write_text("require-signatures = true\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    sh.copy("/bin/busybox", ctx / "busybox")
    (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/base\nCOPY busybox /bin/busybox\n")
    env = dict(__import__("os").environ, XDG_CONFIG_HOME=str(tmp_path / "cfg"), ACBUILD_CACHE_DIR=str(tmp_path / "c"))

    def acbuild(*args):
        return subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(tmp_path), *args],
                              capture_output=True, text=True, env=env)

    assert acbuild("build", "-f", str(ctx / "ACIfile"), "-o", str(tmp_path / "base.aci")).returncode == 0
    refused = acbuild("begin", str(tmp_path / "base.aci"))
    assert refused.returncode == 1 and "no signature" in refused.stderr
    allowed = acbuild("begin", str(tmp_path / "base.aci"), "--insecure-skip-verify")
    assert allowed.returncode == 0 and "NOT verifying" in allowed.stderr
    assert acbuild("end").returncode == 0


def test_an_unexpected_exception_is_one_internal_error_line(tmp_path, monkeypatch, capsys):
    """A bug (here: the compiler raising ValueError) is reported in one line and exit 1;
    --debug adds the traceback. Nothing else may reach the user."""
    from acbuild import cli
    from acbuild.frontend import compile as compiler

    acifile = tmp_path / "ACIfile"
    acifile.write_text("FROM scratch\nNAME example.com/x\n")

    def broken(*_args, **_kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(compiler, "compile_file", broken)
    assert cli.main(["plan", "-f", str(acifile)]) == 1
    err = capsys.readouterr().err
    assert err == "acbuild: internal error: ValueError: boom (run with --debug for the traceback)\n"
    assert cli.main(["--debug", "plan", "-f", str(acifile)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_existing_output_is_one_error_everywhere(tmp_path):
    """pack, patch-manifest and write refuse to replace an output without --overwrite
    with the same message and the same exit status."""
    def acbuild(*args, cwd=tmp_path):
        return subprocess.run([sys.executable, "-m", "acbuild", "--work-path", str(tmp_path), *map(str, args)],
                              capture_output=True, text=True, cwd=cwd)

    layout = tmp_path / "layout"
    (layout / "rootfs").mkdir(parents=True)
    (layout / "manifest").write_text('{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/x"}')
    taken = tmp_path / "taken.aci"
    assert acbuild("pack", layout, tmp_path / "a.aci").returncode == 0
    taken.write_bytes(b"")
    assert acbuild("begin").returncode == 0
    assert acbuild("set-name", "example.com/x").returncode == 0
    results = {
        "pack": acbuild("pack", layout, taken),
        "patch-manifest": acbuild("patch-manifest", "--user", "1", tmp_path / "a.aci", taken),
        "write": acbuild("write", taken),
    }
    for command, result in results.items():
        assert (result.returncode, result.stderr) == (1, f"acbuild: {taken}: exists (use --overwrite)\n"), command
    assert taken.read_bytes() == b""
    acbuild("end")
