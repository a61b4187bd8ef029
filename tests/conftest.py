"""Shared fixtures. actool (the reference validator) comes from .tools/ (make test
puts it there) or $ACTOOL. It is a real part of the suite: a missing actool fails
the tests that need it rather than skipping them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_actool() -> str | None:
    if os.environ.get("ACTOOL"):
        return os.environ["ACTOOL"]
    path = os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")])
    return shutil.which("actool", path=path)


@pytest.fixture(scope="session")
def actool() -> str:
    tool = find_actool()
    if not tool:
        pytest.fail("actool not found (run `make system-deps` or set ACTOOL)")
    return tool
