"""The appc walk-through, end to end, with real parts only: real gpg (a throwaway
GNUPGHOME, keys made in batch mode), real busybox, real namespaces, and the acbuild
command line as a user runs it.

    build --sign -> gpg --verify -> launch (refused) -> trust -> launch -> tamper -> refused

Then `launch` against the manifest (user, group, env, working directory, exit status,
event handlers, volumes, clean-up) and `FROM signed.aci` verification on use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require

BUSYBOX = Path("/bin/busybox")
NAME = "example.com/hello"


@pytest.fixture
def as_root() -> None:
    require(os.geteuid() == 0, "a rootless sandbox runs only as uid 0")


needs_root = pytest.mark.usefixtures("as_root")


# ---------------------------------------------------------------- gpg, as a user would drive it


@dataclass
class Signer:
    home: Path  # GNUPGHOME
    uid: str
    fingerprint: str
    pubkey: Path  # armored public key, what the signer hands out
    passphrase_file: Path | None


def gen_key(home: Path, keydir: Path, passphrase: str | None) -> Signer:
    """`gpg --batch --gen-key gpg-batch`, as in the appc walk-through."""
    batch = keydir / "gpg-batch"
    protection = f"Passphrase: {passphrase}" if passphrase else "%no-protection"
    batch.write_text(
        "Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: sign\n"
        "Name-Real: Example Signer\nName-Email: signer@example.com\n"
        f"Expire-Date: 0\n{protection}\n%commit\n")
    gpg = ["gpg", "--homedir", str(home), "--batch"]
    # Loopback: gpg takes the passphrase from us, no pinentry (and no tty) needed.
    loopback = ["--pinentry-mode", "loopback", "--passphrase", passphrase or ""]
    made = subprocess.run([*gpg, *loopback, "--gen-key", str(batch)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    colons = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True, text=True)
    fpr = next(line.split(":")[9] for line in colons.stdout.splitlines() if line.startswith("fpr:")).lower()
    pubkey = keydir / "pubkeys.gpg"
    pubkey.write_bytes(subprocess.run([*gpg, "--armor", "--export", fpr], check=True, capture_output=True).stdout)
    pass_file = None
    if passphrase:
        pass_file = keydir / "passphrase"
        pass_file.write_text(passphrase + "\n")
    return Signer(home, "Example Signer <signer@example.com>", fpr, pubkey, pass_file)


@pytest.fixture(scope="module", params=[None, "correct horse battery staple"], ids=["no-passphrase", "passphrase"])
def signer(request, module_gpg_homes, tmp_path_factory) -> Signer:
    return gen_key(module_gpg_homes().path, tmp_path_factory.mktemp("keys"), request.param)


@pytest.fixture(scope="module")
def plain_signer(module_gpg_homes, tmp_path_factory) -> Signer:
    return gen_key(module_gpg_homes().path, tmp_path_factory.mktemp("keys"), None)


# ---------------------------------------------------------------- acbuild, as a user runs it


class User:
    """A user's environment: own HOME, config dir, trust dir and TMPDIR (so that we can
    check that acbuild leaves nothing behind there)."""

    def __init__(self, root: Path):
        self.root = root
        self.trust_dir = root / "trust"
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        (root / "home").mkdir()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("GNUPGHOME", "ACBUILD_TRUST_DIR", "SOURCE_DATE_EPOCH")}
        env.update(HOME=str(self.root / "home"), XDG_CONFIG_HOME=str(self.root / "home/.config"),
                   ACBUILD_TRUST_DIR=str(self.trust_dir), TMPDIR=str(self.tmp))
        return env

    def acbuild(self, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run acbuild; stdout and stderr together in `.stdout`, in the order printed."""
        return subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], cwd=cwd or self.root,
                              env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)

    def ok(self, *args: str | Path, cwd: Path | None = None) -> str:
        r = self.acbuild(*args, cwd=cwd)
        assert r.returncode == 0, f"acbuild {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}"
        return r.stdout

    def refused(self, *args: str | Path, cwd: Path | None = None) -> str:
        r = self.acbuild(*args, cwd=cwd)
        assert r.returncode == 1, f"expected a refusal (exit 1), got {r.returncode}:\n{r.stdout}"
        assert "Traceback" not in r.stdout
        return r.stdout

    def trust(self, signer: Signer, prefix: str = NAME) -> None:
        self.ok("trust", "--prefix", prefix, signer.pubkey, "--yes")

    def assert_nothing_left(self) -> None:
        assert list(self.tmp.iterdir()) == [], "acbuild left temp files behind"
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(self.tmp) not in mounts, "acbuild left something mounted"


@pytest.fixture
def user(tmp_path) -> User:
    return User(tmp_path)


def build(user: User, acifile: str, out: str, *flags: str | Path) -> Path:
    """Build `acifile` (text) in a fresh context holding busybox; returns the image path."""
    ctx = user.root / f"ctx-{out}"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "ACIfile").write_text(acifile)
    user.ok("build", "-f", ctx / "ACIfile", "-o", user.root / out, *flags)
    return user.root / out


def sign_flags(signer: Signer) -> list[str | Path]:
    flags: list[str | Path] = ["--sign", "--gpg-home", signer.home]
    if signer.passphrase_file:
        flags += ["--passphrase-file", signer.passphrase_file]
    return flags


HELLO = """\
FROM scratch
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
NAME example.com/hello
EXEC ["/bin/sh", "-c", "echo Hello AppC"]
"""


# ---------------------------------------------------------------- the walk-through


def test_walkthrough(user, signer):
    hello = build(user, HELLO, "hello.aci", *sign_flags(signer))
    asc = hello.with_name("hello.aci.asc")
    assert asc.read_text().startswith("-----BEGIN PGP SIGNATURE-----")

    # An independent party checks the signature: plain gpg, over the bytes acbuild wrote.
    gpg = subprocess.run(["gpg", "--homedir", str(signer.home), "--batch", "--verify", str(asc), str(hello)],
                         capture_output=True, text=True)
    assert gpg.returncode == 0, gpg.stderr
    assert f'Good signature from "{signer.uid}"' in gpg.stderr

    # Nobody trusts the key yet: launch refuses, and says why and what to do.
    out = user.refused("launch", hello)
    assert "unknown signer" in out and f"acbuild trust --prefix {NAME}" in out
    assert "Hello AppC" not in out

    user.trust(signer)
    out = user.ok("launch", hello)
    assert f"signature verified: {signer.uid} ({signer.fingerprint})" in out
    assert "Hello AppC" in out
    assert out.index("signature verified:") < out.index("Hello AppC")
    user.ok("verify", hello)

    # One byte changed after signing: verify and launch both refuse (the messages:
    # test_tampered_*_image_is_a_bad_signature).
    tamper(hello)
    user.refused("verify", hello)
    assert "Hello AppC" not in user.refused("launch", hello)
    user.assert_nothing_left()


def test_walkthrough_interactive(user, signer):
    """The same story with Go acbuild's verbs: begin, copy, run, set-*, write --sign."""
    work = user.root / "work"
    work.mkdir()
    shutil.copy(BUSYBOX, work / "busybox")
    for verb in (["begin"], ["copy", "busybox", "/bin/busybox"], ["run", "--", "/bin/busybox", "--install", "-s", "/bin"],
                 ["set-name", NAME], ["set-exec", "--", "/bin/sh", "-c", "echo Hello AppC"],
                 ["write", *sign_flags(signer), "hello.aci"], ["end"]):
        user.ok(*verb, cwd=work)
    hello = work / "hello.aci"
    gpg = subprocess.run(["gpg", "--homedir", str(signer.home), "--batch", "--verify", f"{hello}.asc", str(hello)],
                         capture_output=True, text=True)
    assert gpg.returncode == 0, gpg.stderr

    # `begin IMAGE` verifies its base like FROM does.
    (user.root / "next").mkdir()
    assert "unknown signer" in user.refused("begin", hello, cwd=user.root / "next")
    user.trust(signer)
    out = user.ok("launch", hello)
    assert f"signature verified: {signer.uid}" in out and "Hello AppC" in out
    (user.root / "again").mkdir()
    user.ok("begin", hello, cwd=user.root / "again")
    user.ok("end", cwd=user.root / "again")
    tamper(hello)
    (user.root / "tampered").mkdir()
    user.refused("begin", hello, cwd=user.root / "tampered")
    user.assert_nothing_left()


def tamper(image: Path) -> None:
    """Flip one bit in the middle of the file, as a corrupted download or an attacker would."""
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))


def check_bad_signature_everywhere(user: User, image: Path) -> None:
    assert "bad signature" in user.refused("verify", image)
    out = user.refused("launch", image)
    assert "bad signature" in out and "Hello AppC" not in out
    acifile = _write(user, "tampered", DERIVED.format(base=image))
    out = user.refused("build", "-f", acifile, "-o", user.root / "derived.aci")
    assert "ACIfile:2:1: FROM " in out and "bad signature" in out
    user.assert_nothing_left()


def test_tampered_uncompressed_image_is_a_bad_signature(user, plain_signer):
    # Uncompressed, the flipped bit lands in busybox's bytes: the image still reads, gpg decides.
    hello = build(user, HELLO, "hello.aci", "--compression", "none", *sign_flags(plain_signer))
    user.trust(plain_signer)
    tamper(hello)
    check_bad_signature_everywhere(user, hello)


def test_tampered_compressed_image_is_a_bad_signature(user, plain_signer):
    hello = build(user, HELLO, "hello.aci", *sign_flags(plain_signer))
    user.trust(plain_signer)
    tamper(hello)
    check_bad_signature_everywhere(user, hello)


def test_launch_refuses_unsigned_unless_told(user):
    hello = build(user, HELLO, "hello.aci")
    assert not hello.with_name("hello.aci.asc").exists()
    out = user.refused("launch", hello)
    assert "not signed" in out and "--insecure-skip-verify" in out and "Hello AppC" not in out

    out = user.ok("launch", hello, "--insecure-skip-verify")
    assert "WARNING: NOT verifying the signature" in out and "Hello AppC" in out


def test_launch_refuses_key_trusted_for_another_prefix(user, plain_signer):
    hello = build(user, HELLO, "hello.aci", *sign_flags(plain_signer))
    user.trust(plain_signer, prefix="example.com/other")
    out = user.refused("launch", hello)
    assert "is trusted for prefix example.com/other, not for example.com/hello" in out


# ---------------------------------------------------------------- launch obeys the manifest


APP = """\
FROM scratch
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /srv/app /data /config && \\
    echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd && \\
    echo "app:x:1000:1000:app:/srv/app:/bin/sh" >> /etc/passwd && \\
    printf "root:x:0:\\napp:x:1000:\\nextra:x:2000:\\n" > /etc/group && \\
    echo "from the image" > /config/setting && \\
    chown 1000:1000 /srv/app /data
NAME example.com/app
ENV GREETING="Hello AppC"
WORKDIR /srv/app
USER app
GROUP 1000
SUPPLEMENTARY-GROUPS 2000
MOUNT data /data
MOUNT config /config read-only
EVENT pre-start ["/bin/sh", "-c", "echo pre-start as $(id -u) > /srv/app/pre-started"]
EVENT post-stop ["/bin/sh", "-c", "echo post-stop >> /data/log"]
EXEC ["/bin/sh", "-c", "id -u; id -g; id -G; pwd; echo $GREETING; echo $AC_APP_NAME $container; \\
      cat pre-started; cat /config/setting; echo app >> /data/log; exit $1", "sh"]
"""


@pytest.fixture(scope="module")
def app_image(tmp_path_factory, plain_signer):
    """The busybox example app, signed; with the trust dir that trusts it."""
    u = User(tmp_path_factory.mktemp("app"))
    image = build(u, APP, "app.aci", *sign_flags(plain_signer))
    u.trust(plain_signer, prefix="example.com/app")
    return image, u.trust_dir


def launcher(user: User, app_image) -> Path:
    image, trust = app_image
    shutil.copytree(trust, user.trust_dir)
    return image


@needs_root
def test_launch_runs_the_app_as_the_manifest_says(user, app_image):
    image = launcher(user, app_image)
    data, config = user.root / "data", user.root / "config"
    data.mkdir()
    os.chown(data, 1000, 1000)
    config.mkdir()
    (config / "setting").write_text("from the host\n")

    r = user.acbuild("launch", image, "--volume", f"data:{data}", "--volume", f"config:{config}", "--", "42")
    assert r.returncode == 42, r.stdout  # the app's exit status, passed as an extra argument
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("signature verified:")) + 1
    expected = [
        "1000", "1000", "1000 2000",  # user, group, supplementary gids
        "/srv/app",  # working directory
        "Hello AppC",  # environment
        "app acbuild",  # AC_APP_NAME, container
        "pre-start as 1000",  # the pre-start handler ran first, as the app's user
        "from the host",  # --volume config:... bound over the image's /config
    ]
    assert lines[start:start + len(expected)] == expected, r.stdout
    assert (data / "log").read_text() == "app\npost-stop\n"  # post-stop ran after the app
    user.assert_nothing_left()


def test_read_only_mount_point_stays_read_only(user):
    probe = HELLO.replace("NAME example.com/hello", "NAME example.com/probe\nMOUNT config /config read-only")
    image = build(user, probe.replace("echo Hello AppC", "cat /config/marker || exit 6; touch /config/x || exit 7"),
                  "probe.aci")
    config = user.root / "config"
    config.mkdir()
    (config / "marker").write_text("bound\n")
    # The manifest says read-only: even root in the app cannot write through it.
    r = user.acbuild("launch", image, "--insecure-skip-verify", "--volume", f"config:{config}")
    assert r.returncode == 7 and "bound" in r.stdout, r.stdout
    assert not (config / "x").exists()
    user.assert_nothing_left()


@needs_root
def test_unknown_volume_lists_mount_points(user, app_image):
    image = launcher(user, app_image)
    out = user.refused("launch", image, "--volume", f"logs:{user.root}")
    assert '--volume logs: the image has no mount point "logs" (mount points: data (/data), config (/config))' in out
    r = user.acbuild("launch", image, "--volume", "no-colon")
    assert r.returncode == 3 and "expected NAME:HOSTPATH" in r.stdout


def test_failing_pre_start_aborts(user):
    bad = HELLO.replace("EXEC", 'EVENT pre-start ["/bin/sh", "-c", "exit 4"]\nEXEC')
    image = build(user, bad, "bad.aci")
    out = user.refused("launch", image, "--insecure-skip-verify")
    assert "pre-start handler /bin/sh exited with status 4; the app was not started" in out
    assert "Hello AppC" not in out
    user.assert_nothing_left()


def test_image_without_exec_is_refused(user):
    image = build(user, HELLO.replace('EXEC ["/bin/sh", "-c", "echo Hello AppC"]\n', ""), "noexec.aci")
    out = user.refused("launch", image, "--insecure-skip-verify")
    assert "has no app to run" in out


def test_network_none_or_host(user):
    image = build(user, HELLO.replace("echo Hello AppC", "cut -d: -f1 -s /proc/net/dev | tr -d ' '"), "net.aci")
    host = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines() if ":" in line]
    assert host != ["lo"], "the host needs an interface besides lo for this test"

    def interfaces(*flags: str) -> list[str]:
        r = user.acbuild("launch", image, "--insecure-skip-verify", *flags)
        assert r.returncode == 0, r.stdout
        return [line for line in r.stdout.splitlines() if not line.startswith("acbuild: WARNING")]

    assert interfaces() == ["lo"]
    assert interfaces("--network", "host") == host


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_launch_cleans_up(user, sig):
    image = build(user, HELLO.replace("echo Hello AppC", "echo ready; sleep 60"), "sleepy.aci")
    proc = subprocess.Popen([sys.executable, "-m", "acbuild", "launch", str(image), "--insecure-skip-verify"],
                            cwd=user.root, env=user.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 130
        assert "interrupted" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()
    user.assert_nothing_left()


# ---------------------------------------------------------------- FROM verifies its base


DERIVED = """\
# a layer on top of the signed hello image
FROM {base}
NAME example.com/derived
EXEC ["/bin/sh", "-c", "echo derived"]
"""


def test_from_verifies_signed_base(user, plain_signer):
    base = build(user, HELLO, "hello.aci", *sign_flags(plain_signer))
    acifile = DERIVED.format(base=base)

    # Untrusted: refused, at FROM's line and column.
    out = user.refused("build", "-f", _write(user, "untrusted", acifile), "-o", user.root / "d1.aci")
    assert "ACIfile:2:1: FROM " in out and "unknown signer" in out
    assert not (user.root / "d1.aci").exists()

    # --insecure-skip-verify passes, loudly.
    out = user.ok("build", "-f", _write(user, "skip", acifile), "-o", user.root / "d2.aci", "--insecure-skip-verify")
    assert "WARNING: NOT verifying the signature of" in out

    # Trusted: verified, and the derived image runs.
    user.trust(plain_signer)
    out = user.ok("build", "-f", _write(user, "trusted", acifile), "-o", user.root / "d3.aci")
    assert f"signature verified: {plain_signer.uid}" in out
    assert "derived" in user.ok("launch", user.root / "d3.aci", "--insecure-skip-verify")
    user.assert_nothing_left()


def test_require_signatures_refuses_unsigned_base(user):
    base = build(user, HELLO, "hello.aci")
    acifile = _write(user, "unsigned", DERIVED.format(base=base))
    user.ok("build", "-f", acifile, "-o", user.root / "d1.aci")  # unsigned, not required: fine
    out = user.refused("build", "-f", acifile, "-o", user.root / "d2.aci", "--require-signatures")
    assert "ACIfile:2:1: FROM " in out and "no signature" in out
    assert not (user.root / "d2.aci").exists()


def _write(user: User, name: str, text: str) -> Path:
    d = user.root / f"acifile-{name}"
    d.mkdir()
    (d / "ACIfile").write_text(text)
    return d / "ACIfile"
