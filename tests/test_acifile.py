"""The ACIfile language: parsing, compiling, error positions, substitution.

Each tests/data/acifiles/bad/*.ACIfile holds the error it must give on its first
line: `# expect: LINE:COL message-fragment`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from acbuild import plan as p
from acbuild.frontend.compile import compile_file, compile_text
from acbuild.errors import AcbuildError

REPO = Path(__file__).resolve().parent.parent
BAD = sorted((REPO / "tests/data/acifiles/bad").glob("*.ACIfile"))


def expectation(path: Path) -> tuple[int, int, str]:
    m = re.match(r"# expect: (\d+):(\d+) (.*)", path.read_text().splitlines()[0])
    assert m, f"{path.name}: first line must be '# expect: LINE:COL message'"
    return int(m.group(1)), int(m.group(2)), m.group(3)


@pytest.mark.parametrize("path", BAD, ids=[b.stem for b in BAD])
def test_bad_acifile_points_at_the_mistake(path: Path):
    line, col, fragment = expectation(path)
    with pytest.raises(AcbuildError) as info:
        compile_file(path)
    err = info.value
    assert str(err).startswith(f"{path}:{line}:{col}: "), str(err)
    assert fragment in str(err)
    rendered = err.render().splitlines()
    assert rendered[1].strip() == path.read_text().splitlines()[line - 1].strip()
    assert rendered[2].index("^") == 4 + col - 1  # caret under the column


def test_bad_acifile_through_the_cli_is_one_message_not_a_traceback(tmp_path):
    path = REPO / "tests/data/acifiles/bad/unknown-instruction.ACIfile"
    result = subprocess.run(
        [sys.executable, "-m", "acbuild", "build", "-f", str(path), "-o", str(tmp_path / "x.aci")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{path}:3:1: unknown instruction \"COPPY\"\n    COPPY a /b\n    ^")
    assert not (tmp_path / "x.aci").exists()


def test_missing_acifile_is_not_found(tmp_path):
    result = subprocess.run([sys.executable, "-m", "acbuild", "plan", "-f", str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_every_instruction_compiles():
    plan = compile_text(
        """
        ARG V=1.0
        from scratch as base
        ARG V
        NAME example.com/all
        LABEL version=$V "channel"='beta ${V}'
        ANNOTATION authors="A B" homepage=https://example.com
        COPY --chown=0:0 --chmod=0640 a b /dir/
        RUN --network=host --mount=type=cache,target=/var/cache echo "$V"
        RUN ["/bin/true"]
        ENV A=1 B=${A}2
        WORKDIR /srv
        USER 1000
        GROUP 1000
        SUPPLEMENTARY-GROUPS 10 20
        PORT http tcp 80 2 socket-activated
        MOUNT data /data read-only
        ISOLATOR resource/cpu {"limit": "500m"}
        DEPENDENCY --size=10 example.com/dep version=1
        EVENT post-stop /bin/echo bye
        PATH-WHITELIST /bin/sh /etc
        REMOVE LABEL channel
        EXEC /bin/app --flag
        """
    )
    steps = plan.stages[0].steps
    kinds = [type(s).__name__ for s in steps]
    assert kinds == [
        "SetName", "Label", "Annotation", "Copy", "Run", "Run", "Env", "WorkDir", "User", "Group",
        "SupplementaryGroups", "Port", "MountPoint", "Isolator", "Dependency", "EventHandler",
        "PathWhitelist", "Remove", "Exec",
    ]
    assert steps[1].items == (("version", "1.0"), ("channel", "beta ${V}"))
    assert steps[3] == p.Copy(sources=("a", "b"), dest="/dir/", chown="0:0", chmod=0o640)
    assert steps[4].argv == ("/bin/sh", "-c", 'echo "$V"') and steps[4].network == "host"
    assert steps[4].arg_env == (("V", "1.0"),)
    assert steps[4].mounts[0].type == "cache" and steps[4].mounts[0].target == "/var/cache"
    assert steps[6].items == (("A", "1"), ("B", "2"))  # Docker: $A is the value before this ENV
    assert steps[11] == p.Port(name="http", protocol="tcp", port=80, count=2, socket_activated=True)
    assert steps[-1].argv == ("/bin/sh", "-c", "/bin/app --flag")
    assert plan.stages[0].base.alias == "base"


def test_build_args_override_defaults_and_unknown_vars_are_empty():
    text = "ARG V=1\nFROM scratch\nARG V\nLABEL version=${V} a=${NOPE:-dflt} b=x$NOPE\n"
    labels = compile_text(text, build_args={"V": "2"}).stages[0].steps[0].items
    assert labels == (("version", "2"), ("a", "dflt"), ("b", "x"))


def test_continuations_and_comments():
    text = "# top\n\nFROM scratch\n  # indented comment\nLABEL a=1 \\\n      b=2\n\nRUN echo one \\\n  two\n"
    steps = compile_text(text).stages[0].steps
    assert steps[0].items == (("a", "1"), ("b", "2"))
    assert steps[1].argv == ("/bin/sh", "-c", "echo one   two")
    assert steps[1].pos.line == 8


def test_json_looking_shell_command_stays_shell_form():
    step = compile_text("FROM scratch\nRUN [ -f /x ] && echo y\n").stages[0].steps[0]
    assert step.argv == ("/bin/sh", "-c", "[ -f /x ] && echo y")


def test_to_acifile_round_trips():
    """Every instruction rendered back as ACIfile text compiles to itself
    (what `acbuild history` relies on)."""
    text = (REPO / "ACIfile.example").read_text()
    plan = compile_text(text)
    rendered = "FROM scratch\n" + "\n".join(s.to_acifile() for s in plan.stages[0].steps) + "\n"
    again = compile_text(rendered)
    strip = lambda steps: [s for s in steps if not isinstance(s, p.Run)]  # noqa: E731
    assert strip(again.stages[0].steps) == strip(plan.stages[0].steps)
    assert [s.argv for s in again.stages[0].steps if isinstance(s, p.Run)] == [
        s.argv for s in plan.stages[0].steps if isinstance(s, p.Run)
    ]


def test_plan_command_prints_yaml():
    result = subprocess.run(
        [sys.executable, "-m", "acbuild", "plan", "-f", str(REPO / "ACIfile.example"), "--build-arg", "VERSION=9.9.9"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    import yaml

    doc = yaml.safe_load(result.stdout)
    labels = [s for s in doc["stages"][0]["steps"] if s["instruction"] == "LABEL"][0]
    assert labels["items"][0] == ["version", "9.9.9"]


def test_bad_build_arg_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "acbuild", "plan", "-f", str(REPO / "ACIfile.example"), "--build-arg", "NOEQUALS"],
        capture_output=True, text=True,
    )
    assert result.returncode == 3
    assert result.stderr.strip() == 'acbuild: --build-arg "NOEQUALS": expected NAME=VALUE'


# -- each rule in one place (issue 9) -------------------------------------------------


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], capture_output=True, text=True, cwd=cwd)


def test_missing_name_is_found_by_plan_before_any_step_runs(tmp_path):
    """Before: plan printed the plan and build ran every RUN, then said "the image has no name"."""
    acifile = tmp_path / "ACIfile"
    acifile.write_text("FROM scratch AS builder\nNAME example.com/builder\n\nFROM scratch\nRUN /bin/false\n")
    for command in (["plan"], ["build", "-o", str(tmp_path / "out.aci")]):
        result = cli(*command, "-f", str(acifile))
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f'{acifile}:4:1: stage "1": the image has no name: add NAME'), result.stderr
        assert "RUN" not in result.stderr.splitlines()[0]
    assert not (tmp_path / "out.aci").exists()
    # --target picks the stage that is checked: the named one is fine.
    assert cli("plan", "-f", str(acifile), "--target", "builder").returncode == 0


def test_a_stage_built_on_a_named_stage_is_named(tmp_path):
    acifile = tmp_path / "ACIfile"
    acifile.write_text("FROM scratch AS base\nNAME example.com/base\nFROM base\nLABEL version=1\n")
    result = cli("plan", "-f", str(acifile))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("line, verb, problem", [
    ("PORT http tcp 70000", ["port", "add", "http", "tcp", "70000"], "port must be in 1-65535 range"),
    ("PORT http tcp 65535 2", ["port", "add", "http", "tcp", "65535", "--count", "2"], "end of port range must be in 1-65535 range"),
    ("MOUNT data data", ["mount", "add", "data", "data"], 'the path must be absolute, not "data"'),
    ("LABEL name=x", ["label", "add", "name", "x"], 'a label cannot be called "name"'),
    ("USER ''", ["set-user", ""], "empty value"),
    ("ENV 1X=y", ["env", "add", "1X", "y"], 'environment variable does not have valid identifier "1X"'),
])
def test_one_rule_one_wording_in_both_front_ends(tmp_path, line, verb, problem):
    """Before: the ACIfile compiler, the interactive verbs and the manifest checks each had
    their own copy of these rules, worded three ways."""
    acifile = tmp_path / "ACIfile"
    acifile.write_text(f"FROM scratch\nNAME example.com/x\n{line}\n")
    planned = cli("plan", "-f", str(acifile))
    assert planned.returncode == 1
    keyword = line.split()[0]
    first = planned.stderr.splitlines()[0]
    assert first.startswith(f"{acifile}:3:") and f": {keyword}: {problem}" in first, planned.stderr
    work = tmp_path / "work"
    work.mkdir()
    assert cli("begin", cwd=work).returncode == 0
    typed = cli(*verb, cwd=work)
    assert typed.returncode == 3
    assert typed.stderr.startswith("acbuild: ") and f": {problem}" in typed.stderr, typed.stderr
    assert "Traceback" not in planned.stderr + typed.stderr


def test_a_build_file_parsed_again_comes_from_the_parse_cache(tmp_path, monkeypatch):
    """compile_file reads a file it parsed before back from the parse cache (Lark is
    not loaded then); an edited file, or a damaged entry, is parsed again."""
    from acbuild.frontend import parse

    monkeypatch.setenv("ACBUILD_CACHE_DIR", str(tmp_path / "cache"))
    acifile = tmp_path / "ACIfile"
    acifile.write_text("FROM scratch\nNAME example.com/cached\nLABEL a=1\n")
    first = compile_file(acifile)
    entries = list((tmp_path / "cache" / "parse").iterdir())
    assert len(entries) == 1

    calls = []
    real = parse.parse_acifile
    monkeypatch.setattr(parse, "parse_acifile", lambda *a: calls.append(a) or real(*a))
    assert compile_file(acifile) == first
    assert calls == []  # served by the cache

    acifile.write_text("FROM scratch\nNAME example.com/cached\nLABEL a=2\n")
    edited = compile_file(acifile)
    assert len(calls) == 1 and edited != first
    assert [s.items for s in edited.stages[0].steps if isinstance(s, p.Label)] == [(("a", "2"),)]
    assert list((tmp_path / "cache" / "parse").iterdir()) == entries  # one entry per file, replaced

    entries[0].write_bytes(b"not a pickle")
    assert compile_file(acifile) == edited
    assert len(calls) == 2


def test_a_syntax_error_is_reported_again_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ACBUILD_CACHE_DIR", str(tmp_path / "cache"))
    acifile = tmp_path / "ACIfile"
    acifile.write_text("FROM scratch\nLABEL\n")
    for _ in range(2):
        with pytest.raises(AcbuildError, match=r"ACIfile:2:"):
            compile_file(acifile)
