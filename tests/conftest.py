"""Shared fixtures. actool (the reference validator) comes from .tools/ (make test
puts it there) or $ACTOOL. It is a real part of the suite: a missing actool fails
the tests that need it rather than skipping them. Also: `require` (skip locally,
fail in CI), the unprivileged user of the rootless tests, and GnuPG homes whose
agents are stopped when their tests end."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_actool() -> str | None:
    if os.environ.get("ACTOOL"):
        return os.environ["ACTOOL"]
    path = os.pathsep.join([str(REPO / ".tools/usr/bin"), os.environ.get("PATH", "")])
    return shutil.which("actool", path=path)


@pytest.fixture(scope="session", autouse=True)
def private_user_dirs() -> Iterator[None]:
    """The suite never reads or fills the invoking user's own acbuild state: the step
    cache, acbuild.toml, image dirs and trust store point into a temp dir (world-
    readable, so tests that run acbuild as another user can point there too)."""
    base = Path(tempfile.mkdtemp(prefix="acbuild-test-home-", dir="/tmp"))
    os.chmod(base, 0o755)
    names = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "ACBUILD_CACHE_DIR", "ACBUILD_TRUST_DIR")
    saved = {name: os.environ.get(name) for name in names}
    for name in names[:3]:
        os.environ[name] = str(base / name.lower())
    for name in names[3:]:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def actool() -> str:
    tool = find_actool()
    if not tool:
        pytest.fail("actool not found (run `make system-deps` or set ACTOOL)")
    return tool


# ---------------------------------------------------------------- prerequisites


def require(condition: bool, reason: str) -> None:
    """Skip a test whose prerequisite (root, busybox, unshare, Debian's python3) is
    missing on a developer's machine, but fail it under CI (CI=true): CI installs them
    all, so a skip there would hide a broken CI machine."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI is missing a prerequisite: {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------- an unprivileged user

TEST_USER = "acbuild-test"  # with subordinate id ranges (what Debian's useradd gives)
SINGLE_ID_USER = "acbuild-single"  # without any: the single-id fallback


def _subordinate_ranges(name: str, path: str) -> list[str]:
    with open(path) as f:
        return [f"{int(s)}-{int(s) + int(c) - 1}" for n, s, c in
                (line.strip().split(":") for line in f if line.count(":") == 2) if n == name]


def _ensure_ranges(name: str, wanted: bool) -> None:
    """Give the user one subordinate range of 65536 uids and gids, or none at all."""
    for option, path in (("--add-subuids", "/etc/subuid"), ("--add-subgids", "/etc/subgid")):
        have = _subordinate_ranges(name, path)
        if wanted and not have:
            start = 100000 + 65536 * (1 + pwd.getpwnam(name).pw_uid % 512)
            subprocess.run(["usermod", option, f"{start}-{start + 65535}", name], check=True, capture_output=True)
        if not wanted:
            for r in have:
                subprocess.run(["usermod", option.replace("add", "del"), r, name], check=True, capture_output=True)


def _test_user(name: str, *, subordinate_ids: bool) -> Iterator[pwd.struct_passwd]:
    """A user created if missing, and then deleted (with its home) when the session
    ends; a user that was already there is left alone (its ranges set as asked)."""
    require(os.geteuid() == 0, "creating an unprivileged user needs root (CI is root)")
    try:
        pwd.getpwnam(name)
        created = False
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True, capture_output=True)
        created = True
    _ensure_ranges(name, subordinate_ids)
    yield pwd.getpwnam(name)
    if created:
        gone = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
        assert gone.returncode == 0, f"userdel -r {name}: {gone.stderr}"


@pytest.fixture(scope="session")
def unprivileged_user() -> Iterator[pwd.struct_passwd]:
    """The user rootless tests run as, with a subordinate id range (acbuild.userns)."""
    yield from _test_user(TEST_USER, subordinate_ids=True)


@pytest.fixture(scope="session")
def single_id_user() -> Iterator[pwd.struct_passwd]:
    """A user without subordinate ids: acbuild falls back to mapping that user alone."""
    yield from _test_user(SINGLE_ID_USER, subordinate_ids=False)


# ---------------------------------------------------------------- GnuPG homes


class GpgHome:
    """A throwaway GNUPGHOME. Made under /tmp, not pytest's deep basetemp, because
    gpg-agent's socket path must stay short. No passphrase caching: a passphrase
    (right or wrong) must really be checked on every signing."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="acb-gpg.", dir="/tmp"))
        os.chmod(self.path, 0o700)
        (self.path / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")

    def gpg(self, *args: str | Path, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--homedir", str(self.path), "--batch", *map(str, args)],
                              input=input, capture_output=True, check=check)

    def make_key(self, uid: str, *, passphrase: str | None = None, expire: str = "0",
                 faked_time: str | None = None) -> str:
        """A new ed25519 signing key for `uid`; returns its fingerprint (lowercase)."""
        args = ["--pinentry-mode", "loopback", "--passphrase", passphrase or ""]
        if faked_time:
            args += ["--faked-system-time", faked_time]
        self.gpg(*args, "--quick-gen-key", uid, "ed25519", "sign", expire)
        return self.fingerprint(uid)

    def fingerprint(self, who: str) -> str:
        out = self.gpg("--with-colons", "--list-keys", who).stdout.decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")).lower()

    def export(self, fingerprint: str) -> bytes:
        """The armored public key, what a signer hands out."""
        return self.gpg("--armor", "--export", fingerprint).stdout

    def close(self) -> None:
        """Stop the agent gpg (or acbuild, through gpg) started here, then remove the home."""
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


def _gpg_homes() -> Iterator[Callable[[], GpgHome]]:
    """Call it for each GNUPGHOME wanted; all are stopped and removed at teardown."""
    made: list[GpgHome] = []

    def make() -> GpgHome:
        made.append(GpgHome())
        return made[-1]

    yield make
    for home in made:
        home.close()


# Every test that runs gpg makes its homes here, so no gpg-agent outlives its test
# (or, for module-scoped keys, its module). Call the fixture for each home wanted.
gpg_homes = pytest.fixture(_gpg_homes, name="gpg_homes")
module_gpg_homes = pytest.fixture(_gpg_homes, scope="module", name="module_gpg_homes")


# ---------------------------------------------------------------- a Debian rootfs

# mmdebstrap's minbase bookworm, cached between runs (tests/debian.py); imported last,
# since that module uses `require` from here.
from debian import debian_aci, debian_rootfs, debian_rootfs_tar  # noqa: E402, F401
