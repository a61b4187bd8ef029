"""Fuzzing the front end and the build with mutated ACIfiles (hypothesis):
3,000 through `plan`'s compile entry in-process, some through the `plan` CLI,
100 through `build` (FROM scratch, a small context, no RUN). Any exception that
is not an acbuild error (a traceback), and any run past its time bound (a hang),
fails. Seeds are fixed (derandomize) so CI runs the same inputs every time."""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acbuild.errors import AcbuildError

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted([*(REPO / "tests/data/acifiles").rglob("*.ACIfile"), *(REPO / "examples").rglob("ACIfile"),
                REPO / "ACIfile.example"])
SEED_TEXTS = [p.read_text() for p in SEEDS] + [
    'FROM scratch\nARG A=x\nENV B=${A:-y}${A:+z}$A\nLABEL l=${B}\nEXEC ["/bin/sh", "-c", "echo"]\n',
    'FROM scratch AS one\nCOPY --chmod=644 --chown=1:1 a b /x/\nFROM scratch\nCOPY --from=one /x /y\n',
    'FROM scratch\nISOLATOR resource/memory {"limit": "1G"}\nMANIFEST {"acKind": "ImageManifest"}\n',
    'FROM scratch\nRUN --network=none --mount=type=bind,source=a,target=/a echo \\\n  hi\n',
    'FROM scratch\nPORT http tcp 80 1 socket-activated\nMOUNT data /data read-only\nDEPENDENCY --size=1 a.b/c os=linux\n',
]
# Pieces a hostile author would splice in.
TOKENS = ["\0", "\x0c", "\x1c", "\r", "\u2028", "\\\n", "\\", "${", "}", "$", "[", "]", "{", "}", '"', "'",
          "--", "--mount=", "--from=", "=", " AS ", "\t", "\n", "FROM ", "ARG ", "ENV ", "RUN ", "COPY ",
          "[" * 300, "{" * 300, "${A}" * 50, "\\\n" * 50, "é", "\udcff", "\U0001f600", "ARG A=${A}${A}\n"]
MUTATED_PLAN = 3000
MUTATED_CLI = 40
MUTATED_BUILD = 100
PER_INPUT_SECONDS = 10  # a hang, not a slow input: real ones take milliseconds


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "repeat", "swap", "chars"]))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif op == "repeat":
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i] = [lines[i]] * draw(st.integers(1, 30))
            text = "\n".join(lines)
        elif op == "swap":
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:
            text = text[:at] + draw(st.text(max_size=20)) + text[at:]
    return text


@contextmanager
def time_bound(seconds: int, text: str):
    def hang(*_):
        raise AssertionError(f"hang (> {seconds} s) on:\n{text[:2000]!r}")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def no_traceback(call, text: str) -> None:
    try:
        call()
    except AcbuildError:
        pass  # a clear error: what a bad input must give
    except AssertionError:
        raise
    except BaseException as err:  # a traceback for the user
        raise AssertionError(f"{type(err).__name__}: {err} on:\n{text[:2000]!r}") from err


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


@fuzz(MUTATED_PLAN)
@given(mutated())
def test_plan_never_crashes_or_hangs(text):
    import yaml

    from acbuild.frontend.compile import compile_text

    def plan() -> None:  # what `acbuild plan` does, in-process for speed
        yaml.safe_dump(compile_text(text, "ACIfile", {"A": "1"}).as_dict(), sort_keys=False)

    with time_bound(PER_INPUT_SECONDS, text):
        no_traceback(plan, text)


@fuzz(MUTATED_CLI)
@given(mutated())
def test_plan_cli_gives_clear_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("plan") / "ACIfile"
    path.write_text(text, errors="surrogateescape")
    try:
        result = subprocess.run([sys.executable, "-m", "acbuild", "plan", "-f", str(path)], capture_output=True,
                                text=True, errors="replace", timeout=PER_INPUT_SECONDS * 3)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"plan hung on:\n{text[:2000]!r}") from None
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr.lower(), \
        f"{result.stderr}\non:\n{text[:2000]!r}"


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    ctx = tmp_path_factory.mktemp("fuzzctx")
    for name, data in {"a": "a", "b": "b", "src/x.txt": "x", "src/deep/y": "y", "site/index.html": "<p>"}.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(data)
    (ctx / ".acbuildignore").write_text("*.tmp\n!keep.tmp\n**/deep\n")
    return ctx


def _no_run(text: str) -> str:
    """Builds here run no RUN step (no sandbox needed): RUN lines become LABELs."""
    out = []
    for line in text.split("\n"):
        if line.lstrip().upper().startswith("RUN"):
            line = "LABEL fuzz=run"
        out.append(line)
    return "\n".join(out)


@fuzz(MUTATED_BUILD)
@given(mutated())
def test_build_never_crashes_or_hangs(context, tmp_path_factory, text):
    from acbuild.cli import main

    text = _no_run(text)
    out = tmp_path_factory.mktemp("out")
    acifile = out / "ACIfile"
    acifile.write_text(text, errors="surrogateescape")
    argv = ["build", "-q", "-f", str(acifile), "--context", str(context), "-o", str(out / "x.aci"),
            "--cache-dir", str(out / "cache"), "--insecure-skip-verify"]
    with time_bound(PER_INPUT_SECONDS * 3, text):
        no_traceback(lambda: main(argv), text)
