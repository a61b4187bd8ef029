"""The name a signature is checked for is the name the image is used under.

A manifest may spell a key twice ({"name": A, "NAME": B}); Go and acbuild decode
keys case-insensitively, last one wins, so the image is B. Verification must
look up the keys trusted for B, not for A (a reviewer found it read A)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from imagetools import hand_made_aci


@pytest.fixture
def gnupg_home():
    home = Path(tempfile.mkdtemp(prefix="acb-gpg-", dir="/tmp"))
    os.chmod(home, 0o700)
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def two_named_image(path: Path) -> None:
    manifest = b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"evil.example/x","NAME":"victim.example/app"}'
    hand_made_aci(path, manifest)


def test_signature_is_checked_for_the_name_the_image_is_used_under(tmp_path, gnupg_home):
    env = dict(os.environ, GNUPGHOME=str(gnupg_home), ACBUILD_TRUST_DIR=str(tmp_path / "trust"))
    gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "Evil <evil@example.com>", "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)
    key = tmp_path / "evil.asc"
    key.write_bytes(subprocess.run(["gpg", "--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    image = tmp_path / "confused.aci"
    two_named_image(image)
    subprocess.run([*gpg, "--armor", "--detach-sign", "-o", str(image) + ".asc", str(image)], env=env, check=True,
                   capture_output=True)

    def acbuild(*args):
        return subprocess.run([sys.executable, "-m", "acbuild", *args], env=env, capture_output=True, text=True)

    assert acbuild("trust", "--prefix", "evil.example", str(key), "--yes").returncode == 0
    result = acbuild("verify", str(image))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "trusted for prefix evil.example, not for victim.example/app" in result.stderr
    # trusted for the name the image really has: verified
    assert acbuild("trust", "--prefix", "victim.example/app", str(key), "--yes").returncode == 0
    assert acbuild("verify", str(image)).returncode == 0
