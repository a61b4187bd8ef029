"""Helpers for the hostile-input tests: run acbuild as a user would, with a time
bound that catches a hang (generous: timings are not what these tests judge),
and check that the answer is one clear error, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# A hang or a runaway loop takes minutes; a refusal takes well under a second.
# The bound is generous for a loaded 2-CPU CI machine.
HANG_BOUND = 20.0
# What must answer quickly ("within 2 s" on an idle machine): checked against a
# bound that still catches the old behaviour (minutes).
QUICK_BOUND = 15.0


def acbuild(*args, cwd=None, env=None, timeout: float = HANG_BOUND, stdin=subprocess.DEVNULL
            ) -> subprocess.CompletedProcess:
    """Run acbuild; a run longer than `timeout` fails the test as a hang."""
    full_env = dict(os.environ if env is None else env)
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], cwd=cwd, env=full_env,
                                capture_output=True, text=True, timeout=timeout, stdin=stdin,
                                errors="replace")
    except subprocess.TimeoutExpired:
        raise AssertionError(f"acbuild {' '.join(map(str, args))} hung (> {timeout} s)") from None
    result.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
    return result


def assert_clear_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, no traceback or internal error, one message naming `needles`."""
    err = result.stderr + result.stdout  # validate reports problems on stdout
    assert result.returncode != 0, f"accepted (exit 0):\n{result.stdout}\n{err}"
    assert "Traceback" not in err and "internal error" not in err.lower(), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path
