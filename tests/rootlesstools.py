"""What tests that run acbuild as an unprivileged user share: a world-readable copy
of this checkout and its dependencies for Debian's python3, dirs that user can
reach, and a runner (runuser, a clean environment)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")
PYTHON = Path("/usr/bin/python3")
# what the CLI imports, copied from the project's venv (same interpreter: Debian's 3.11)
PACKAGES = ("lark", "yaml", "_yaml", "gnupg.py", "pyroute2", "isal", "tqdm")


def shared_dir(prefix: str) -> Path:
    """A dir in /tmp the test user can reach (pytest's basetemp is 0700, re-tightened by
    every pytest run that starts, so it cannot hold the user's files)."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    top.chmod(0o755)
    return top


@pytest.fixture(scope="module")
def pythonpath():
    """A world-readable PYTHONPATH: this checkout's acbuild and the venv's dependencies."""
    import yaml

    site = Path(yaml.__file__).resolve().parent.parent
    top = shared_dir("acbuild-rootless-py-")
    for part in ("acbuild", "grammar"):  # a checkout's layout: parse.py finds grammar/ beside it
        shutil.copytree(REPO / part, top / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in PACKAGES:
        src = site / name
        if src.is_dir():
            shutil.copytree(src, top / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, top / name)
    for p in [top, *top.rglob("*")]:
        p.chmod(p.stat().st_mode | (0o755 if p.is_dir() else 0o644))
    yield str(top)
    shutil.rmtree(top)


def owned_tree(base: Path, user: pwd.struct_passwd) -> Path:
    """A world-traversable dir owned by the test user."""
    base.mkdir(parents=True, exist_ok=True)
    os.chown(base, user.pw_uid, user.pw_gid)
    return base


def acbuild_proc(args: list[str], pythonpath: str, user: pwd.struct_passwd | None,
                 extra_env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python3 -m acbuild ARGS` as `user` (None: as root) in a clean environment."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": pythonpath, "LANG": "C.UTF-8", **(extra_env or {})}
    if user is not None:
        env["HOME"] = user.pw_dir
        cmd = ["runuser", "-u", user.pw_name, "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
    else:
        env["HOME"] = os.environ.get("HOME", "/root")
        cmd = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run([*cmd, str(PYTHON), "-m", "acbuild", *args], capture_output=True, text=True, timeout=timeout)


def acbuild(args: list[str], pythonpath: str, user: pwd.struct_passwd | None, extra_env: dict | None = None,
            timeout: int = 300) -> str:
    """acbuild_proc, which must succeed: its stdout, stripped."""
    proc = acbuild_proc(args, pythonpath, user, extra_env, timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
