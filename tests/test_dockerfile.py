"""Dockerfiles as BuildKit reads them (issue 14).

The corpus (tests/data/dockerfiles/README.md) is BuildKit's own parser test files:
each must parse into the instructions BuildKit's `result` dump lists, with the same
command text and exec-form arguments, and plan to the plan written once for it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from acbuild.frontend.parse import parse_acifile

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests/data/dockerfiles"
BUILDKIT = sorted(d for d in (CORPUS / "buildkit").iterdir() if d.is_dir())
NEGATIVE = sorted(d for d in (CORPUS / "buildkit-negative").iterdir() if d.is_dir())


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


def buildkit_result(path: Path) -> list[tuple[str, list[str]]]:
    """BuildKit's Node.Dump(): one `(keyword ["flags"] "arg"...)` per instruction;
    the strings are Go %q quoted (Python literals read them)."""
    out = []
    for line in path.read_text().splitlines():
        m = re.match(r'\((\w+)(?: \[[^\]]*\])?(.*)\)$', line)
        if not m:
            continue
        args = [ast.literal_eval(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', m.group(2))]
        out.append((m.group(1), args))
    return out


COMMANDS = {"run", "cmd", "entrypoint", "shell"}  # parseMaybeJSON: the text, or the JSON strings


@pytest.mark.parametrize("case", BUILDKIT, ids=[d.name for d in BUILDKIT])
def test_parses_into_the_instructions_buildkit_finds(case: Path):
    statements = parse_acifile((case / "Dockerfile").read_text(), "Dockerfile")
    expected = buildkit_result(case / "result")
    assert [st.spelled.lower() for st in statements] == [k for k, _ in expected]
    for st, (keyword, args) in zip(statements, expected):
        if keyword not in COMMANDS or st.command is None:
            continue
        import json

        text = st.command.text.strip()
        try:
            value = json.loads(text) if text.startswith("[") else None
        except ValueError:
            value = None
        ours = value if isinstance(value, list) else [text]
        assert ours == args, f"line {st.pos.line}"


@pytest.mark.parametrize("case", BUILDKIT, ids=[d.name for d in BUILDKIT])
def test_plans_as_written_once(case: Path):
    """plan.yaml: the plan. plan.error: the one error, for the parser test files that
    BuildKit's own build refuses as well (CMD before FROM, an unknown COPY flag, an
    open quote, a HEALTHCHECK without CMD: instructions/parse.go and shell/lex.go
    give the same refusals)."""
    result = cli("plan", "-f", "Dockerfile", "-t", "example.com/corpus", cwd=case)
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        got, expected = result.stdout, case / "plan.yaml"
    else:
        got, expected = result.stderr.splitlines()[0] + "\n", case / "plan.error"
    if not (case / "plan.yaml").exists() and not (case / "plan.error").exists() and os.environ.get("ACBUILD_WRITE_EXPECTED") == "1":
        expected.write_text(got)
    assert expected.exists(), f"{case.name}: {result.returncode=} but no {expected.name}: {got}"
    assert got == expected.read_text()


@pytest.mark.parametrize("case", NEGATIVE, ids=[d.name for d in NEGATIVE])
def test_buildkit_negative_files_are_one_clear_error(case: Path):
    result = cli("plan", "-f", "Dockerfile", "-t", "example.com/corpus", cwd=case)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Dockerfile") or result.stderr.startswith("acbuild: "), result.stderr
