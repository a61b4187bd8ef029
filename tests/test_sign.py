"""Signing, trust store and verification, with real GnuPG in a throwaway GNUPGHOME per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from imagetools import hand_made_aci
from conftest import GpgHome

from acbuild.config import Config, load_config
from acbuild.errors import NotFoundError, SignatureError, UsageError
from acbuild.report import QUIET
from acbuild.trust.sign import SigningOptions, publish, sign_file
from acbuild.trust.store import TrustStore
from acbuild.trust.verify import check_image, image_name_of, verify_image

REPO = Path(__file__).resolve().parent.parent
NAME = "example.com/hello"


# ---------------------------------------------------------------- fixtures


@dataclass
class Key:
    fingerprint: str
    uid: str
    pub: Path  # armored public key file
    passphrase: str | None = None


class Keyring:
    """A fresh GNUPGHOME (conftest's GpgHome) that makes keys and exports them to files."""

    def __init__(self, gpg_home: GpgHome, keydir: Path):
        self.gpg_home, self.home, self.keydir = gpg_home, gpg_home.path, keydir

    def gpg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.gpg_home.gpg(*args, check=check)

    def make(self, name: str, *, passphrase: str | None = None, expire: str = "0",
             faked_time: str | None = None) -> Key:
        uid = f"{name.title()} <{name}@example.com>"
        fpr = self.gpg_home.make_key(uid, passphrase=passphrase, expire=expire, faked_time=faked_time)
        return Key(fpr, uid, self.export(fpr, name), passphrase)

    def export(self, fpr: str, name: str) -> Path:
        pub = self.keydir / f"{name}.pub.asc"
        pub.write_bytes(self.gpg_home.export(fpr))
        return pub

    def revoke(self, key: Key) -> Path:
        """Import the revocation certificate gpg made at key generation; export the revoked key."""
        cert = self.home / "openpgp-revocs.d" / f"{key.fingerprint.upper()}.rev"
        text = cert.read_text().replace(":-----BEGIN", "-----BEGIN")  # gpg guards it with a ':'
        self.gpg_home.gpg("--import", input=text.encode())
        return self.export(key.fingerprint, "revoked")


@pytest.fixture
def keyring(gpg_homes, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    return Keyring(gpg_homes(), keydir)


@pytest.fixture
def store(tmp_path) -> TrustStore:
    return TrustStore([tmp_path / "trust"])


def make_aci(path: Path, name: str = NAME) -> Path:
    """A small real image: gzip'd tar with `rootfs/hello` and `manifest`."""
    manifest = json.dumps({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name}).encode()
    return hand_made_aci(path, manifest, {"hello": b"hello\n"})


@pytest.fixture
def aci(tmp_path) -> Path:
    return make_aci(tmp_path / "hello.aci")


def run_cli(*args: str, keyring: Keyring | None = None, trust: Path | None = None,
            stdin: str | None = None, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GNUPGHOME", "ACBUILD_TRUST_DIR")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    if keyring:
        env["GNUPGHOME"] = str(keyring.home)
    if trust:
        env["ACBUILD_TRUST_DIR"] = str(trust)
    return subprocess.run([sys.executable, "-m", "acbuild", *args], cwd=REPO, env=env, text=True,
                          input=stdin if stdin is not None else "", capture_output=True, timeout=60)


def signed(aci: Path, keyring: Keyring, key: Key) -> Path:
    return sign_file(aci, key=key.fingerprint, gpg_home=keyring.home, passphrase=key.passphrase)


# ---------------------------------------------------------------- signing


def test_signature_checks_with_plain_gpg(keyring, aci, gpg_homes):
    alice = keyring.make("alice")
    asc = signed(aci, keyring, alice)
    assert asc == aci.with_name("hello.aci.asc")
    assert asc.read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    # An independent party: plain gpg with the public key alone.
    other = gpg_homes()
    other.gpg("--import", alice.pub)
    ok = other.gpg("--status-fd", "1", "--verify", asc, aci, check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"VALIDSIG {alice.fingerprint.upper()}" in ok.stdout.decode()
    aci.write_bytes(aci.read_bytes() + b"\0")
    assert other.gpg("--verify", asc, aci, check=False).returncode != 0


def test_passphrase_key(keyring, aci, store):
    bob = keyring.make("bob", passphrase="s3cret words")
    with pytest.raises(SignatureError, match="wrong passphrase for key"):
        sign_file(aci, key=bob.fingerprint, gpg_home=keyring.home, passphrase="wrong")
    with pytest.raises(SignatureError, match="protected by a passphrase: pass --passphrase-file"):
        sign_file(aci, key=bob.fingerprint, gpg_home=keyring.home)
    assert not aci.with_name("hello.aci.asc").exists()
    signed(aci, keyring, bob)
    store.add(bob.pub.read_bytes(), NAME)
    assert verify_image(aci, None, NAME, store).fingerprint == bob.fingerprint


def test_sign_cli_with_passphrase_file(keyring, aci, tmp_path):
    bob = keyring.make("bob", passphrase="s3cret words")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret words\n")
    bad.write_text("nope\n")
    r = run_cli("sign", str(aci), "--key", bob.fingerprint, "--passphrase-file", str(bad),
                keyring=keyring, home=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"acbuild: wrong passphrase for key '{bob.fingerprint}' (check --passphrase-file)"]
    r = run_cli("sign", str(aci), "--key", bob.fingerprint, "--passphrase-file", str(good),
                keyring=keyring, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and aci.with_name("hello.aci.asc").is_file()


def test_missing_key_errors(keyring, aci):
    with pytest.raises(SignatureError, match="no secret key in .*create one with 'gpg --quick-gen-key'"):
        sign_file(aci, gpg_home=keyring.home)
    keyring.make("alice")
    with pytest.raises(SignatureError, match="no secret key 'carol@example.com'"):
        sign_file(aci, key="carol@example.com", gpg_home=keyring.home)
    with pytest.raises(NotFoundError):
        sign_file(aci.with_name("nope.aci"), gpg_home=keyring.home)


def test_gpg_not_installed(keyring, aci, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SignatureError, match="gpg not found on PATH: install GnuPG"):
        sign_file(aci, gpg_home=keyring.home)


def test_sign_with_expired_key_is_refused(keyring, aci):
    old = keyring.make("old", expire="1d", faked_time="20200101T000000")
    with pytest.raises(SignatureError, match="has expired: extend it"):
        sign_file(aci, key=old.fingerprint, gpg_home=keyring.home)


def test_publish_never_leaves_a_stale_signature(keyring, tmp_path, store):
    alice = keyring.make("alice")
    store.add(alice.pub.read_bytes(), None)
    out = tmp_path / "app.aci"
    opts = SigningOptions(key=alice.fingerprint, gpg_home=keyring.home)
    assert publish(make_aci(tmp_path / ".app.aci.tmp1"), out, opts, reporter=QUIET) == tmp_path / "app.aci.asc"
    assert verify_image(out, None, NAME, store).fingerprint == alice.fingerprint
    # Rewritten unsigned: the old signature must go with the old bytes.
    assert publish(make_aci(tmp_path / ".app.aci.tmp2", "example.com/other"), out, None, reporter=QUIET) is None
    assert not (tmp_path / "app.aci.asc").exists()
    # A failed signing leaves the old pair alone and no temp files.
    before = out.read_bytes()
    with pytest.raises(SignatureError):
        publish(make_aci(tmp_path / ".app.aci.tmp3"), out, SigningOptions(key="nobody", gpg_home=keyring.home), reporter=QUIET)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.aci", "keys", "trust"]


# ---------------------------------------------------------------- verification


def test_verify_prefix_root_and_cli(keyring, aci, store, tmp_path):
    alice = keyring.make("alice")
    signed(aci, keyring, alice)
    store.add(alice.pub.read_bytes(), NAME)
    s = verify_image(aci, None, NAME, store)
    assert (s.fingerprint, s.uid, s.trusted_for) == (alice.fingerprint, "Alice <alice@example.com>", NAME)
    r = run_cli("verify", str(aci), trust=store.dirs[0], home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"signature verified: Alice <alice@example.com> ({alice.fingerprint})\n"
    # Root trust works for any name.
    assert store.remove(alice.fingerprint) == 1
    store.add(alice.pub.read_bytes(), None)
    assert verify_image(aci, None, NAME, store).trusted_for is None
    assert verify_image(aci, None, "other.org/x", store).fingerprint == alice.fingerprint


def test_unknown_signer(keyring, aci, store, tmp_path):
    alice, bob = keyring.make("alice"), keyring.make("bob")
    signed(aci, keyring, alice)
    store.add(bob.pub.read_bytes(), None)  # someone else's key is trusted, not Alice's
    with pytest.raises(SignatureError, match=f"unknown signer: key {alice.fingerprint} is not trusted for {NAME}"):
        verify_image(aci, None, NAME, store)
    r = run_cli("verify", str(aci), trust=store.dirs[0], home=tmp_path)
    assert r.returncode == 1 and "unknown signer" in r.stderr and "Traceback" not in r.stderr


def test_signer_trusted_for_another_prefix(keyring, aci, store):
    alice = keyring.make("alice")
    signed(aci, keyring, alice)
    store.add(alice.pub.read_bytes(), "example.org")
    with pytest.raises(SignatureError, match=f"is trusted for prefix example.org, not for {NAME}"):
        verify_image(aci, None, NAME, store)


def test_prefix_needs_a_segment_boundary(keyring, tmp_path, store):
    alice = keyring.make("alice")
    store.add(alice.pub.read_bytes(), "example.com/hello")
    assert store.keys_for("example.com/hello") and store.keys_for("example.com/hello/sub")
    assert store.keys_for("example.com/helloworld") == []  # rkt would trust it; acbuild does not
    store.add(alice.pub.read_bytes(), "example.com")
    assert len(store.keys_for("example.com/helloworld")) == 1
    aci = make_aci(tmp_path / "hw.aci", "example.com/helloworld")
    signed(aci, keyring, alice)
    assert verify_image(aci, None, "example.com/helloworld", store).trusted_for == "example.com"


def test_tampered_image_is_a_bad_signature(keyring, aci, store, tmp_path):
    alice = keyring.make("alice")
    signed(aci, keyring, alice)
    store.add(alice.pub.read_bytes(), NAME)
    data = bytearray(aci.read_bytes())
    data[len(data) // 2] ^= 1
    aci.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="bad signature: the image does not match its signature"):
        verify_image(aci, None, NAME, store)


def test_no_signature(aci, store, tmp_path):
    with pytest.raises(SignatureError, match=r"no signature \(.*hello.aci.asc does not exist\)"):
        verify_image(aci, None, NAME, store)
    assert check_image(aci, store) is None  # unsigned base, nothing required
    with pytest.raises(SignatureError, match="no signature"):
        check_image(aci, store, require_signature=True)
    assert check_image(aci, store, require_signature=True, insecure_skip_verify=True) is None
    r = run_cli("verify", str(aci), trust=store.dirs[0], home=tmp_path)
    assert r.returncode == 1 and "no signature" in r.stderr


def test_other_signature_file_and_garbage(keyring, aci, store, tmp_path):
    alice = keyring.make("alice")
    store.add(alice.pub.read_bytes(), NAME)
    asc = signed(aci, keyring, alice)
    moved = asc.rename(tmp_path / "elsewhere.asc")
    assert verify_image(aci, moved, NAME, store).fingerprint == alice.fingerprint
    moved.write_text("not a signature\n")
    with pytest.raises(SignatureError, match="signature not valid"):
        verify_image(aci, moved, NAME, store)


def test_expired_key(keyring, aci, store):
    old = keyring.make("old", expire="1d", faked_time="20200101T000000")
    # Signed while it was valid (a day in 2020); now it has expired.
    keyring.gpg("--faked-system-time", "20200101T010000", "--armor", "--detach-sign", "-u", old.fingerprint,
                "-o", str(aci) + ".asc", str(aci))
    store.add(old.pub.read_bytes(), NAME)
    with pytest.raises(SignatureError, match=f"key Old <old@example.com> \\({old.fingerprint}\\) has expired"):
        verify_image(aci, None, NAME, store)


def test_revoked_key(keyring, aci, store):
    rev = keyring.make("rev")
    signed(aci, keyring, rev)
    store.add(rev.pub.read_bytes(), NAME)
    revoked = keyring.revoke(rev)
    # Re-trusting the revoked key updates its entry (how a revocation reaches the store)...
    store.add(revoked.read_bytes(), NAME)
    with pytest.raises(SignatureError, match=f"key Rev <rev@example.com> \\({rev.fingerprint}\\) was revoked"):
        verify_image(aci, None, NAME, store)
    # ...but a revoked key is never newly trusted.
    with pytest.raises(SignatureError, match="is revoked; refusing to trust it"):
        store.add(revoked.read_bytes(), "example.org")


def test_users_keyring_does_not_decide(keyring, aci, store, monkeypatch):
    """Only the trust store's view counts. Alice's key sits in the user's keyring
    (GNUPGHOME, ultimately trusted there), and the store trusts it for example.org only:
    the refusal must name that prefix, which only a verifier that knew nothing but the
    store's keys for the image name can say (one using the user's keyring would find
    a good signature by a key outside the trusted set)."""
    alice = keyring.make("alice")
    signed(aci, keyring, alice)
    monkeypatch.setenv("GNUPGHOME", str(keyring.home))
    assert keyring.gpg("--verify", str(aci) + ".asc", str(aci), check=False).returncode == 0  # good to gpg
    store.add(alice.pub.read_bytes(), "example.org")
    with pytest.raises(SignatureError, match=f"is trusted for prefix example.org, not for {NAME}$"):
        verify_image(aci, None, NAME, store)
    assert store.remove(alice.fingerprint) == 1
    with pytest.raises(SignatureError, match=f"unknown signer: key {alice.fingerprint} is not trusted for {NAME} "):
        verify_image(aci, None, NAME, store)


# ---------------------------------------------------------------- trust store


def test_trust_cli(keyring, tmp_path):
    alice = keyring.make("alice")
    trust = tmp_path / "trust"
    r = run_cli("trust", "--prefix", NAME, str(alice.pub), trust=trust, home=tmp_path)  # stdin empty, no --yes
    assert r.returncode == 3 and "pass --yes" in r.stderr
    assert alice.fingerprint in r.stderr and "Alice <alice@example.com>" in r.stderr
    r = run_cli("trust", "--prefix", NAME, str(alice.pub), trust=trust, stdin="n\n", home=tmp_path)
    assert r.returncode == 1 and not trust.exists()
    r = run_cli("trust", "--prefix", NAME, str(alice.pub), trust=trust, stdin="y\n", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"Trust this key for prefix {NAME}? [y/N]" in r.stderr
    stored = trust / "prefix.d" / "example.com" / "hello" / alice.fingerprint
    assert stored.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    r = run_cli("trust", "--root", str(alice.pub), "--yes", trust=trust, home=tmp_path)
    assert r.returncode == 0 and (trust / "root.d" / alice.fingerprint).is_file()
    r = run_cli("trust", "--list", trust=trust, home=tmp_path)
    assert r.stdout.splitlines() == [
        f"{alice.fingerprint}  every image (root)  Alice <alice@example.com>",
        f"{alice.fingerprint}  prefix {NAME}  Alice <alice@example.com>",
    ]
    r = run_cli("trust", "--remove", alice.fingerprint.upper(), trust=trust, home=tmp_path)
    assert r.returncode == 0 and "removed 2 trust entries" in r.stdout
    assert run_cli("trust", "--list", trust=trust, home=tmp_path).stdout == ""
    r = run_cli("trust", "--remove", alice.fingerprint, trust=trust, home=tmp_path)
    assert r.returncode == 2 and "is not trusted" in r.stderr


def test_trust_refusals(keyring, aci, store, tmp_path):
    alice = keyring.make("alice")
    with pytest.raises(SignatureError, match="holds no OpenPGP public key"):
        store.add(aci.read_bytes(), NAME)
    for bad in ("Example.com", "example.com/../x", "/abs", "a//b", ""):
        with pytest.raises(UsageError, match="bad prefix"):
            store.add(alice.pub.read_bytes(), bad)
    r = run_cli("trust", str(alice.pub), "--yes", trust=tmp_path / "t", home=tmp_path)
    assert r.returncode == 3 and "--prefix PREFIX or --root" in r.stderr
    # A file whose name is not its key's fingerprint is an error, not silently used.
    store.add(alice.pub.read_bytes(), None)
    f = store.dirs[0] / "root.d" / alice.fingerprint
    f.rename(f.with_name("0" * 40))
    signed(aci, keyring, alice)
    with pytest.raises(SignatureError, match="holds key .*, not 0000"):
        verify_image(aci, None, NAME, store)


def test_user_dir_masks_system_key(keyring, aci, tmp_path):
    alice = keyring.make("alice")
    system, user = tmp_path / "system", tmp_path / "user"
    TrustStore([system]).add(alice.pub.read_bytes(), NAME)
    signed(aci, keyring, alice)
    both = TrustStore([system, user])
    assert verify_image(aci, None, NAME, both).fingerprint == alice.fingerprint
    # Removing a key the user may not edit writes an empty mask in the user dir.
    assert both.remove(alice.fingerprint) == 1
    mask = user / "prefix.d" / "example.com" / "hello" / alice.fingerprint
    assert mask.is_file() and mask.stat().st_size == 0
    assert (system / "prefix.d" / "example.com" / "hello" / alice.fingerprint).stat().st_size > 0
    assert both.list() == [] and both.keys_for(NAME) == []
    with pytest.raises(SignatureError, match="unknown signer"):
        verify_image(aci, None, NAME, both)
    mask.unlink()
    assert len(both.keys_for(NAME)) == 1


def test_image_name_of(aci):
    assert image_name_of(aci) == NAME


# ---------------------------------------------------------------- config


def test_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert load_config(None) == Config()
    f = tmp_path / "xdg" / "acbuild" / "acbuild.toml"
    f.parent.mkdir(parents=True)
    f.write_text('signing-key = "alice@example.com"\ngpg-home = "gnupg"\n'
                 'trust-dirs = ["/etc/x", "~/keys"]\nrequire-signatures = true\n')
    c = load_config(None)
    assert c.signing_key == "alice@example.com" and c.require_signatures
    assert c.gpg_home == f.parent / "gnupg"
    assert c.trust_dirs == (Path("/etc/x"), Path("~/keys").expanduser())
    f.write_text('signing-key = "a"\nrequire-signatures = yes\n')
    with pytest.raises(UsageError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}:2:")
    assert "bad TOML" in str(e.value)
    f.write_text("insecure-skip-verify = true\n")
    with pytest.raises(UsageError, match="not allowed in a config file"):
        load_config(f)
    f.write_text("signin-key = 'x'\n")
    with pytest.raises(UsageError, match="unknown key 'signin-key'"):
        load_config(f)
    with pytest.raises(NotFoundError):
        load_config(tmp_path / "missing.toml")


def test_config_signing_key_used_by_cli(keyring, aci, tmp_path):
    alice, bob = keyring.make("alice"), keyring.make("bob")
    conf = tmp_path / "acbuild.toml"
    conf.write_text(f'signing-key = "{bob.fingerprint}"\n')
    r = run_cli("sign", str(aci), "--config", str(conf), keyring=keyring, home=tmp_path)
    assert r.returncode == 0, r.stderr
    trust = tmp_path / "trust"
    TrustStore([trust]).add(bob.pub.read_bytes(), NAME)
    r = run_cli("verify", str(aci), trust=trust, home=tmp_path)
    assert r.returncode == 0 and bob.fingerprint in r.stdout and alice.fingerprint not in r.stdout


def test_trust_dir_resolution(tmp_path, monkeypatch):
    from acbuild.dirs import SYSTEM_TRUST_DIR, default_trust_dirs

    monkeypatch.delenv("ACBUILD_TRUST_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_trust_dirs() == [SYSTEM_TRUST_DIR, tmp_path / "xdg" / "acbuild" / "trustedkeys"]
    assert default_trust_dirs(configured=(tmp_path / "c",)) == [tmp_path / "c"]
    monkeypatch.setenv("ACBUILD_TRUST_DIR", str(tmp_path / "env"))
    assert default_trust_dirs(configured=(tmp_path / "c",)) == [tmp_path / "env"]
    assert default_trust_dirs(tmp_path / "flag") == [tmp_path / "flag"]
