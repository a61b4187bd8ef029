"""An image's .asc follows the image: every command that rewrites an image drops
a signature of its old bytes and says so, --sign says where the new one is, and
a missing signature's message suggests only what the command can do."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from test_build import acbuild


def acifile(tmp_path: Path) -> Path:
    (tmp_path / "ACIfile").write_text("FROM scratch\nNAME example.com/signed\nLABEL version=1\n")
    return tmp_path / "ACIfile"


def stale_asc(out: Path) -> Path:
    """A signature of some earlier bytes (its content does not matter: it is stale)."""
    asc = out.with_name(out.name + ".asc")
    asc.write_text("-----BEGIN PGP SIGNATURE-----\nstale\n-----END PGP SIGNATURE-----\n")
    return asc


def test_rebuilding_says_the_old_signature_was_removed(tmp_path):
    out = tmp_path / "app.aci"
    acbuild("build", "-f", acifile(tmp_path), "-o", out)
    asc = stale_asc(out)
    result = acbuild("build", "--no-cache", "-f", acifile(tmp_path), "-o", out)
    assert not asc.exists()
    assert f"removed {asc}" in result.stderr


def test_build_sign_says_where_the_signature_is(tmp_path, gpg_homes):
    home = gpg_homes()
    home.make_key("Signer <signer@example.com>")
    out = tmp_path / "app.aci"
    result = acbuild("build", "-f", acifile(tmp_path), "-o", out, "--sign", "--gpg-home", home.path)
    assert f"wrote {out}.asc" in result.stderr and Path(f"{out}.asc").is_file()


def test_pack_overwrite_drops_the_old_signature(tmp_path):
    layout = tmp_path / "layout"
    (layout / "rootfs").mkdir(parents=True)
    (layout / "manifest").write_text(json.dumps({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/packed"}))
    out = tmp_path / "packed.aci"
    acbuild("pack", layout, out)
    asc = stale_asc(out)
    result = acbuild("pack", "--overwrite", layout, out)
    assert not asc.exists() and f"removed {asc}" in result.stderr


def test_patch_manifest_replace_and_overwrite_drop_the_old_signature(tmp_path):
    out = tmp_path / "app.aci"
    acbuild("build", "-f", acifile(tmp_path), "-o", out)
    asc = stale_asc(out)
    result = acbuild("patch-manifest", "--name", "example.com/renamed", "--replace", out)
    assert not asc.exists() and f"removed {asc}" in result.stderr
    copy = tmp_path / "copy.aci"
    shutil.copy(out, copy)
    copy_asc = stale_asc(copy)
    acbuild("patch-manifest", "--name", "example.com/again", "--overwrite", out, copy)
    assert not copy_asc.exists()


def test_require_signatures_suggests_no_flag_build_lacks(tmp_path):
    base = tmp_path / "base.aci"
    acbuild("build", "-f", acifile(tmp_path), "-o", base)
    (tmp_path / "Next").write_text(f"FROM {base}\nNAME example.com/next\n")
    result = acbuild("build", "-f", tmp_path / "Next", "-o", tmp_path / "next.aci", "--require-signatures",
                     "--trust-dir", tmp_path / "trust", check=False)
    assert result.returncode != 0 and "no signature" in result.stderr
    assert "--signature" not in result.stderr


def test_unknown_signer_is_named_by_its_primary_key(tmp_path, gpg_homes):
    """gpg signs with the newest signing subkey, and the signature names only that;
    the error names the primary key (what `trust --list` and the signer show)."""
    home = gpg_homes()
    primary = home.make_key("Sub Signer <sub@example.com>")
    home.gpg("--pinentry-mode", "loopback", "--passphrase", "", "--quick-add-key", primary, "ed25519", "sign", "0")
    out = tmp_path / "app.aci"
    acbuild("build", "-f", acifile(tmp_path), "-o", out, "--sign", "--gpg-home", home.path)
    env = {**os.environ, "GNUPGHOME": str(home.path)}
    result = acbuild("verify", out, "--trust-dir", tmp_path / "trust", env=env, check=False)
    assert result.returncode != 0 and "unknown signer" in result.stderr
    assert primary in result.stderr and "Sub Signer <sub@example.com>" in result.stderr
