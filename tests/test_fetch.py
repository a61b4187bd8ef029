"""acbuild fetch and acbuild image: verified fetch into the content-addressed store, with
real parts only: a real HTTPS server on 127.0.0.1 whose certificate comes from a test CA
made with openssl (repofixtures.Repo), real GnuPG keys in throwaway homes, the acbuild
command line as a user runs it. Each refusal has its own message, exit status 1, no
traceback, and leaves nothing in the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from netfixtures import no_proxy_env, test_ca  # noqa: F401 (fixtures)
from repofixtures import Repo

BUSYBOX = Path("/bin/busybox")


@dataclass
class Key:
    home: Path
    fingerprint: str
    pubkey: Path


@pytest.fixture(scope="module")
def key(module_gpg_homes, tmp_path_factory) -> Key:
    home = module_gpg_homes()
    fpr = home.make_key("Publisher <publisher@example.com>")
    pub = tmp_path_factory.mktemp("pub") / "publisher.asc"
    pub.write_bytes(home.export(fpr))
    return Key(home.path, fpr, pub)


class User:
    """acbuild as a user runs it, with its own trust store, image store and step cache."""

    def __init__(self, root: Path):
        self.root = root
        self.store = root / "store"
        self.trust_dir = root / "trust"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("GNUPGHOME", "SOURCE_DATE_EPOCH")}
        return {**env, "ACBUILD_TRUST_DIR": str(self.trust_dir), "ACBUILD_STORE_DIR": str(self.store),
                "ACBUILD_CACHE_DIR": str(self.root / "cache")}

    def run(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], cwd=self.root,
                              env={**self.env(), **(env or {})}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300)

    def ok(self, *args, env: dict | None = None) -> str:
        r = self.run(*args, env=env)
        assert r.returncode == 0, f"acbuild {' '.join(map(str, args))}: {r.returncode}\n{r.stdout}{r.stderr}"
        return r.stdout

    def refused(self, *args, exit_code: int = 1) -> str:
        r = self.run(*args)
        assert r.returncode == exit_code, f"expected exit {exit_code}, got {r.returncode}:\n{r.stdout}{r.stderr}"
        assert "Traceback" not in r.stderr
        return r.stderr

    def trust(self, key: Key, prefix: str) -> None:
        self.ok("trust", "--prefix", prefix, key.pubkey, "--yes")

    def stored_ids(self) -> list[str]:
        entries = self.store / "entries"
        return sorted(p.name for p in entries.iterdir()) if entries.is_dir() else []

    def image(self, name: str, version: str, *, word: str = "hello", key: Key | None = None,
              extra: str = "", out: str | None = None) -> Path:
        """Build NAME:VERSION (busybox echoing WORD), signed by `key` if given."""
        ctx = self.root / f"ctx-{name.replace('/', '_')}-{version}-{word}"
        ctx.mkdir(exist_ok=True)
        shutil.copy(BUSYBOX, ctx / "busybox")
        (ctx / "ACIfile").write_text(
            f"FROM scratch\nCOPY --chmod=0755 busybox /bin/busybox\nNAME {name}\nLABEL version={version}\n"
            f'{extra}EXEC ["/bin/busybox", "echo", "{word}"]\n')
        aci = self.root / (out or f"{name.replace('/', '_')}-{version}-{word}.aci")
        sign = ["--sign", "--gpg-home", key.home] if key else []
        self.ok("build", "-q", "-f", ctx / "ACIfile", "-o", aci, *sign, "--no-cache")
        return aci


@pytest.fixture
def user(tmp_path, no_proxy_env) -> User:  # noqa: F811
    return User(tmp_path)


@pytest.fixture
def repo(test_ca):  # noqa: F811
    with Repo(test_ca) as served:
        yield served


def image_id(user: User, aci: Path) -> str:
    return user.ok("image-id", aci).strip()


# ---------------------------------------------------------------- the good path


def test_fetch_verifies_stores_and_revalidates(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")

    r = user.run("fetch", "localhost/app:1.0", *repo.flags())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == image_id(user, aci)
    assert f"signature verified: Publisher <publisher@example.com> ({key.fingerprint})" in r.stderr
    assert "downloaded https://localhost:" in r.stderr  # plain lines: stderr is not a terminal
    assert user.stored_ids() == [image_id(user, aci)]
    assert oct((user.store).stat().st_mode & 0o777) == "0o700"

    listing = user.ok("image", "list")
    assert "localhost/app" in listing and "1.0" in listing and image_id(user, aci)[:19] in listing
    rows = json.loads(user.ok("image", "list", "--json"))
    assert [(row["name"], row["labels"]["version"], row["size"], row["signed"]) for row in rows] == [
        ("localhost/app", "1.0", aci.stat().st_size, True)]
    manifest = json.loads(user.ok("image", "cat-manifest", "localhost/app:1.0"))
    assert manifest["name"] == "localhost/app"

    out = user.root / "exported.aci"
    user.ok("image", "export", image_id(user, aci)[:25], out)
    assert out.read_bytes() == aci.read_bytes()
    assert Path(f"{out}.asc").read_bytes() == Path(f"{aci}.asc").read_bytes()

    # Again (fetch asks the server each time): the server says "not modified", nothing
    # is downloaded, the stored image is the answer.
    before = len(repo.gets(".aci"))
    r = user.run("fetch", "localhost/app:1.0", *repo.flags())
    assert r.returncode == 0 and r.stdout.strip() == image_id(user, aci), r.stderr
    assert "unchanged" in r.stderr
    revalidation = repo.gets(".aci")[before:]
    assert len(revalidation) == 1 and "If-None-Match" in revalidation[0]
    # The same URL for other labels: "not modified" does not make it the image asked for.
    assert "the image has no channel label, not channel=beta" in user.refused(
        "fetch", "localhost/app:1.0,channel=beta", *repo.flags())
    # --pull missing: the store answers, the network is not asked at all.
    before = len(repo.site.requests)
    assert user.ok("fetch", "--pull", "missing", "localhost/app:1.0", *repo.flags()).strip() == image_id(user, aci)
    assert len(repo.site.requests) == before

    assert "removed localhost/app:1.0" in user.ok("image", "rm", "localhost/app")
    assert user.stored_ids() == []
    assert "no such image" in user.refused("image", "cat-manifest", "localhost/app", exit_code=2)


def test_fetch_url_and_file_go_through_the_same_checks(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    url = f"https://localhost:{repo.port}{repo.image_path('localhost/app', '1.0')}"
    assert "unknown signer" in user.refused("fetch", url, "--ca-file", repo.tls.ca)
    assert "unknown signer" in user.refused("fetch", aci)
    user.trust(key, "localhost")
    assert user.ok("fetch", url, "--ca-file", repo.tls.ca).strip() == image_id(user, aci)
    assert user.ok("fetch", aci).strip() == image_id(user, aci)
    assert user.stored_ids() == [image_id(user, aci)]

    unsigned = user.image("localhost/loose", "1.0", word="loose")
    assert "no signature" in user.refused("fetch", unsigned)
    r = user.run("fetch", unsigned, "--insecure-skip-verify")
    assert r.returncode == 0 and "WARNING: NOT verifying the signature" in r.stderr
    assert len(user.stored_ids()) == 2
    # What was taken unverified is there only for those who skip verification too.
    assert "not in the image store" in user.refused("fetch", "--pull", "never", "localhost/loose:1.0", exit_code=2)
    r = user.run("fetch", "--pull", "never", "localhost/loose:1.0", "--insecure-skip-verify")
    assert r.returncode == 0 and r.stdout.strip() == image_id(user, unsigned)
    rows = {row["name"]: row for row in json.loads(user.ok("image", "list", "--json"))}
    assert (rows["localhost/loose"]["verified"], rows["localhost/app"]["verified"]) == (False, True)


def test_dependencies_are_fetched_recursively_under_the_same_policy(user, repo, key):
    base = user.image("localhost/base", "1.0", key=key, word="base")
    base_id = image_id(user, base)
    app = user.image("localhost/app", "1.0", key=key,
                     extra=f"DEPENDENCY --image-id={base_id} localhost/base version=1.0\n")
    repo.publish("localhost/base", "1.0", base)
    repo.publish("localhost/app", "1.0", app)
    user.trust(key, "localhost/app")

    # The dependency is signed by the same key, but the key is trusted only for the app.
    assert "not for localhost/base" in user.refused("fetch", "localhost/app:1.0", *repo.flags())
    user.trust(key, "localhost/base")
    user.ok("fetch", "localhost/app:1.0", *repo.flags())
    assert user.stored_ids() == sorted([base_id, image_id(user, app)])
    rows = {row["name"]: row for row in json.loads(user.ok("image", "list", "--json"))}
    assert rows["localhost/app"]["dependencies"] == [base_id]

    # gc: both are what their names resolve to; a superseded, unused base goes.
    newer = user.image("localhost/base", "1.0", key=key, word="newer")
    user.ok("fetch", newer)
    assert user.ok("image", "gc", "--days", "0") == ""  # the old base is still the app's dependency
    user.ok("image", "rm", "localhost/app")
    assert "removed localhost/base:1.0" in user.ok("image", "gc", "--days", "0")
    assert user.stored_ids() == [image_id(user, newer)]


# ---------------------------------------------------------------- refusals


def refusal(user: User, repo: Repo, *args: str) -> str:
    err = user.refused("fetch", *args, *repo.flags())
    assert user.stored_ids() == [], "a refused image must not be stored"
    return err


def test_refuses_an_untrusted_key(user, repo, key):
    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key))
    err = refusal(user, repo, "localhost/app:1.0")
    assert "unknown signer" in err and "acbuild trust --prefix localhost/app" in err
    assert "--insecure-skip-verify skips this check" in err


def test_refuses_a_key_trusted_for_another_prefix(user, repo, key):
    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key))
    user.trust(key, "localhost/other")
    assert "is trusted for prefix localhost/other, not for localhost/app" in refusal(user, repo, "localhost/app:1.0")


def test_refuses_a_tampered_image(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")
    data = bytearray(repo.files[repo.image_path("localhost/app", "1.0")])
    data[len(data) // 2] ^= 0xFF
    repo.put(repo.image_path("localhost/app", "1.0"), bytes(data))
    assert "bad signature" in refusal(user, repo, "localhost/app:1.0")


def test_refuses_a_missing_signature(user, repo, key):
    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key), signature=False)
    user.trust(key, "localhost/app")
    err = refusal(user, repo, "localhost/app:1.0")
    assert "no signature" in err and "app-1.0.aci.asc does not exist" in err


def test_refuses_a_manifest_name_other_than_the_request(user, repo, key):
    # Signed by a key trusted for all of localhost, but it is another image.
    repo.publish("localhost/app", "1.0", user.image("localhost/other", "1.0", key=key))
    user.trust(key, "localhost")
    assert "the image is named localhost/other, not localhost/app as requested" in refusal(
        user, repo, "localhost/app:1.0")


def test_refuses_a_label_other_than_the_request(user, repo, key):
    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key, extra="LABEL channel=stable\n"))
    user.trust(key, "localhost/app")
    assert "the image has channel=stable, not channel=beta as requested" in refusal(
        user, repo, "localhost/app:1.0,channel=beta")


def test_refuses_a_pinned_image_id_or_size_that_does_not_match(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")
    wrong_id = "sha512-" + "0" * 128
    assert "does not match the ID sha512-000000000000..." in refusal(
        user, repo, "localhost/app:1.0", "--image-id", wrong_id)
    size = aci.stat().st_size
    assert f"the image is {size} bytes, not the size {size + 1}" in refusal(
        user, repo, "localhost/app:1.0", "--size", str(size + 1))
    # A pinned size below the file's: refused before a byte is read (Content-Length) ...
    assert f"more than the {size - 1} allowed" in refusal(user, repo, "localhost/app:1.0", "--size", str(size - 1))
    # The image size limit (a global option) caps a download too.
    assert "more than the 1024 allowed" in user.refused("--max-image-size", "1K", "fetch", "localhost/app:1.0",
                                                        *repo.flags())
    assert user.stored_ids() == []
    # ... and when the server does not say how much it sends, once it has sent too much.
    repo.overflow.add(repo.image_path("localhost/app", "1.0"))
    err = refusal(user, repo, "localhost/app:1.0", "--size", str(size))
    assert f"the server sent more than the {size} bytes allowed" in err and "pinned" in err


def test_refuses_a_pinned_dependency_that_does_not_match(user, repo, key):
    base = user.image("localhost/base", "1.0", key=key, word="base")
    app = user.image("localhost/app", "1.0", key=key,
                     extra=f"DEPENDENCY --image-id={image_id(user, base)} localhost/base version=1.0\n")
    impostor = user.image("localhost/base", "1.0", key=key, word="impostor")
    repo.publish("localhost/app", "1.0", app)
    repo.publish("localhost/base", "1.0", impostor)
    user.trust(key, "localhost")
    err = user.refused("fetch", "localhost/app:1.0", *repo.flags())
    assert f"does not match the ID {image_id(user, base)[:19]}... pinned by localhost/app" in err
    assert user.stored_ids() == [image_id(user, app)]  # the app itself was verified and kept

    size = impostor.stat().st_size
    sized = user.image("localhost/sized", "1.0", key=key, extra=f"DEPENDENCY --size={size + 7} localhost/base version=1.0\n")
    repo.publish("localhost/sized", "1.0", sized)
    err = user.refused("fetch", "localhost/sized:1.0", *repo.flags())
    assert f"the image is {size} bytes, not the size {size + 7} pinned by localhost/sized" in err


def test_refuses_a_certificate_from_an_unknown_ca(user, repo, key):
    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key))
    user.trust(key, "localhost/app")
    err = user.refused("fetch", "localhost/app:1.0", "--port", str(repo.port), exit_code=2)  # no image found
    assert "certificate verify failed" in err and "unknown CA" in err
    assert user.stored_ids() == []


# ---------------------------------------------------------------- robustness


def test_an_interrupted_download_resumes_with_range(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")
    path = repo.image_path("localhost/app", "1.0")
    repo.truncate_once.add(path)
    err = user.refused("fetch", "localhost/app:1.0", *repo.flags())
    half = aci.stat().st_size // 2
    # (a clean close, or a TLS one without close_notify: either way, after half the body)
    assert (f"connection closed after {half} of {aci.stat().st_size} bytes" in err
            or f"connection lost after {half} bytes of the body" in err), err
    assert "the next fetch resumes from there" in err
    assert user.stored_ids() == []
    partials = list((user.store / "tmp").glob("*.part"))
    assert [p.stat().st_size for p in partials] == [half]

    assert user.ok("fetch", "localhost/app:1.0", *repo.flags()).strip() == image_id(user, aci)
    resumed = repo.gets(".aci")[-1]
    assert resumed["Range"] == f"bytes={half}-" and resumed["If-Range"].startswith('"')
    assert list((user.store / "tmp").glob("*.part")) == []


def test_a_damaged_store_entry_is_removed_and_fetched_again(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")
    iid = user.ok("fetch", "localhost/app:1.0", *repo.flags()).strip()
    stored = user.store / "entries" / iid / "image.aci"
    data = bytearray(stored.read_bytes())
    data[100] ^= 1
    stored.write_bytes(bytes(data))

    fetches = len(repo.gets(".aci"))
    r = user.run("fetch", "--pull", "missing", "localhost/app:1.0", *repo.flags())
    assert r.returncode == 0, r.stderr
    assert f"{iid[:19]} was damaged" in r.stderr and "removed it" in r.stderr
    assert len(repo.gets(".aci")) == fetches + 1  # downloaded again
    assert stored.read_bytes() == aci.read_bytes()
    # export of a damaged entry refuses rather than hand out bad bytes.
    stored.write_bytes(bytes(data))
    assert "damaged" in user.refused("image", "export", iid, user.root / "x.aci")
    assert not (user.root / "x.aci").exists()


def test_concurrent_fetches_of_one_name_store_one_entry(user, repo, key):
    aci = user.image("localhost/app", "1.0", key=key)
    repo.publish("localhost/app", "1.0", aci)
    user.trust(key, "localhost/app")
    procs = [subprocess.Popen([sys.executable, "-m", "acbuild", "fetch", "localhost/app:1.0", *repo.flags()],
                              cwd=user.root, env=user.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    assert {out.strip() for _, out, _ in results} == {image_id(user, aci)}
    assert user.stored_ids() == [image_id(user, aci)]
    assert sorted(p.name for p in (user.store / "tmp").iterdir() if not p.name.endswith(".lock")) == []


def test_progress_is_a_bar_on_a_terminal(user, repo, key):
    import pty

    repo.publish("localhost/app", "1.0", user.image("localhost/app", "1.0", key=key))
    user.trust(key, "localhost/app")
    leader, follower = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "acbuild", "fetch", "localhost/app:1.0", *repo.flags()],
                          cwd=user.root, env=user.env(), stdout=subprocess.PIPE, stderr=follower, timeout=300)
    os.close(follower)
    shown = b""
    while True:
        try:
            piece = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not piece:
            break
        shown += piece
    os.close(leader)
    assert done.returncode == 0, shown.decode(errors="replace")
    assert b"\r" in shown and b" MiB" in shown and b"%" in shown  # the bar, redrawn in place
    assert b"downloading " not in shown  # the plain lines are for pipes and logs


def test_bad_names_and_store_references_are_usage_errors(user):
    assert "expected NAME[:VERSION]" in user.refused("fetch", "Bad Name:1:2", exit_code=3)
    assert "no such image" in user.refused("image", "rm", "sha512-abc", exit_code=2)
    assert "--image-id '..'" in user.refused("fetch", "--image-id", "..", "localhost/app", exit_code=3)
    assert "not in the image store" in user.refused("fetch", "--pull", "never", "localhost/app", exit_code=2)
