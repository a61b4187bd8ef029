"""What was verified is what is used: an image swapped on disk right after its
signature was checked must not be the one extracted (FROM) or run (launch).

The attacker is simulated by a `gpg` on PATH that runs the real gpg and then,
after a --verify, replaces the image file with another one. gpg itself, the
images and the namespaces are real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

SWAPPING_GPG = """#!/bin/sh
/usr/bin/gpg "$@"
status=$?
case " $* " in *" --verify "*) cp "$SWAP_FROM" "$SWAP_TO" ;; esac
exit $status
"""


def test_the_verified_bytes_are_the_ones_used(tmp_path, gpg_homes):
    home = gpg_homes()
    fpr = home.make_key("Signer <signer@example.com>")
    (tmp_path / "key.asc").write_bytes(home.export(fpr))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(BUSYBOX, ctx / "busybox")
    env = dict(os.environ, GNUPGHOME=str(home.path), ACBUILD_TRUST_DIR=str(tmp_path / "trust"))

    def acbuild(*args, extra_env=None):
        return subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True,
                              env={**env, **(extra_env or {})})

    def image(name: str, word: str) -> Path:
        (ctx / "ACIfile").write_text(
            f'FROM scratch\nNAME example.com/base\nCOPY busybox /bin/busybox\n'
            f'RUN ["/bin/busybox", "sh", "-c", "echo {word} > /word"]\n'
            f'EXEC ["/bin/busybox", "cat", "/word"]\n')
        out = tmp_path / name
        assert acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", out).returncode == 0
        return out

    good = image("base.aci", "genuine")
    evil = image("evil.aci", "swapped")
    assert acbuild("sign", good).returncode == 0
    assert acbuild("trust", "--prefix", "example.com/base", tmp_path / "key.asc", "--yes").returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gpg").write_text(SWAPPING_GPG)
    (bin_dir / "gpg").chmod(0o755)
    swap = {"PATH": f"{bin_dir}:{env['PATH']}", "SWAP_FROM": str(evil), "SWAP_TO": str(good)}
    pristine = good.read_bytes()

    # FROM: the base is swapped after its check; the build must use the checked bytes.
    (ctx / "ACIfile").write_text("FROM base.aci\nNAME example.com/app\n")
    shutil.copy(good, ctx / "base.aci")
    shutil.copy(str(good) + ".asc", ctx / "base.aci.asc")
    swap_from = {**swap, "SWAP_TO": str(ctx / "base.aci")}
    result = acbuild("build", "--no-cache", "-f", ctx / "ACIfile", "-o", tmp_path / "app.aci", extra_env=swap_from)
    assert result.returncode == 0, result.stderr
    assert (ctx / "base.aci").read_bytes() == evil.read_bytes()  # the attacker did swap it
    with tarfile.open(tmp_path / "app.aci") as tar:
        assert tar.extractfile("rootfs/word").read() == b"genuine\n"

    # launch: the same, for the image it runs.
    good.write_bytes(pristine)
    result = acbuild("launch", good, extra_env=swap)
    assert good.read_bytes() == evil.read_bytes()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "genuine\n"
