"""Images by name, end to end, as the appc walk-through ends: a publisher builds and signs
an image and serves it (acbuild serve, and serve --export behind Debian's nginx, and a
test repository that logs request headers); a user trusts the key (found by discovery),
builds `FROM localhost/app:1.0` (fetched, verified and stored), launches it by name, and
rebuilds: with nothing changed nothing is downloaded and every step is a cache hit; after
a new 1.0 is published the build misses from the FROM step. Real parts: HTTPS on
127.0.0.1 with a test CA (openssl), GnuPG, namespaces (RUN and launch need root, as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import require
from netfixtures import no_proxy_env, test_ca  # noqa: F401 (fixtures)
from repofixtures import Repo
from test_fetch import Key, User, image_id, key  # noqa: F401 (fixtures)


@pytest.fixture
def user(tmp_path, no_proxy_env) -> User:  # noqa: F811
    require(os.geteuid() == 0, "RUN and launch need namespaces (CI runs as root)")
    return User(tmp_path)


@pytest.fixture
def repo(test_ca):  # noqa: F811
    with Repo(test_ca) as served:
        yield served


CONSUMER = """\
FROM localhost/app:1.0
NAME localhost/consumer
RUN ["/bin/busybox", "sh", "-c", "echo built on $(/bin/busybox cat /word) > /built"]
EXEC ["/bin/busybox", "cat", "/built"]
"""


def publish_app(user: User, repo: Repo, key: Key, word: str) -> Path:  # noqa: F811
    aci = user.image("localhost/app", "1.0", key=key, word=word,
                     extra=f'RUN ["/bin/busybox", "sh", "-c", "echo {word} > /word"]\n')
    repo.publish("localhost/app", "1.0", aci)
    return aci


def key_home(user: User) -> Path:
    return user.signing_home


def build_consumer(user: User, repo: Repo, *flags: str) -> dict:
    ctx = user.root / "consumer"
    ctx.mkdir(exist_ok=True)
    (ctx / "ACIfile").write_text(CONSUMER)
    meta = user.root / "consumer.json"
    user.ok("build", "-f", ctx / "ACIfile", "-o", user.root / "consumer.aci", "--metadata-file", meta,
            "--sign", "--gpg-home", key_home(user), *repo.flags(), *flags)
    return json.loads(meta.read_text())


def test_from_a_name_fetched_verified_stored_launched_and_cached(user, repo, key):  # noqa: F811
    app = publish_app(user, repo, key, "first")
    user.trust(key, "localhost")  # the app, and what the user builds from it
    user.signing_home = key.home

    first = build_consumer(user, repo)
    assert [s["cache"] for s in first["steps"]] == ["miss"] * 4
    assert user.stored_ids() == [image_id(user, app)]
    assert user.ok("launch", user.root / "consumer.aci").strip() == "built on first"
    # launch by name: the stored image, verified on use.
    out = user.run("launch", "localhost/app:1.0", *repo.flags())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "first" and "signature verified" in out.stderr

    # Nothing changed: nothing is asked of the server (--pull missing, the default) ...
    served = len(repo.site.requests)
    again = build_consumer(user, repo)
    assert again["cached-image"] and [s["cache"] for s in again["steps"]] == ["hit"] * 4
    assert len(repo.site.requests) == served
    # ... and with --pull always the server is asked, says "not modified", and nothing
    # is downloaded: still a full cache hit.
    downloads = len(repo.gets(".aci"))
    again = build_consumer(user, repo, "--pull", "always")
    assert again["cached-image"] and [s["cache"] for s in again["steps"]] == ["hit"] * 4
    asked = repo.gets(".aci")[downloads:]
    assert len(asked) == 1 and "If-None-Match" in asked[0]
    assert user.stored_ids() == [image_id(user, app)]

    # A new 1.0 is published: --pull always fetches it, and the build misses from FROM.
    newer = publish_app(user, repo, key, "second")
    third = build_consumer(user, repo, "--pull", "always")
    assert [s["cache"] for s in third["steps"]] == ["miss"] * 4
    assert third["image-id"] != first["image-id"]
    assert user.stored_ids() == sorted([image_id(user, app), image_id(user, newer)])
    assert user.ok("launch", user.root / "consumer.aci").strip() == "built on second"
    # The newest stored 1.0 is what the name means now.
    assert user.ok("launch", "localhost/app:1.0").strip() == "second"

    # The trust store changed: a cached FROM by name is checked again, and refused.
    user.ok("trust", "--remove", key.fingerprint)
    err = user.refused("build", "-f", user.root / "consumer/ACIfile", "-o", user.root / "consumer.aci", *repo.flags())
    assert "FROM localhost/app:1.0" in err and "unknown signer" in err


def test_begin_and_dependency_by_name(user, repo, key):  # noqa: F811
    publish_app(user, repo, key, "base")
    user.trust(key, "localhost")
    work = user.root / "work"
    work.mkdir()
    user.ok("--work-path", work, "begin", "localhost/app:1.0", *repo.flags())
    assert json.loads(user.ok("--work-path", work, "cat-manifest"))["name"] == "localhost/app"
    user.ok("--work-path", work, "end")

    # DEPENDENCY by name: fetched through the store; RUN sees it below the image.
    ctx = user.root / "layered"
    ctx.mkdir()
    (ctx / "ACIfile").write_text(
        "FROM scratch\nNAME localhost/layered\nDEPENDENCY localhost/app version=1.0\n"
        'RUN ["/bin/busybox", "sh", "-c", "cat /word > /seen"]\nEXEC ["/bin/busybox", "cat", "/seen"]\n')
    user.ok("build", "-f", ctx / "ACIfile", "-o", user.root / "layered.aci", "--sign", "--gpg-home", key.home,
            *repo.flags())
    assert user.ok("launch", user.root / "layered.aci").strip() == "base"
    # An unknown name is a clear failure with the FROM's place.
    (ctx / "ACIfile").write_text("FROM localhost/missing:1.0\nNAME localhost/x\n")
    err = user.refused("build", "-f", ctx / "ACIfile", "-o", user.root / "x.aci", *repo.flags(), exit_code=1)
    assert "ACIfile:1:1: FROM localhost/missing:1.0:" in err and "discovery failed" in err


def the_full_loop(user: User, key: Key, flags: list[str], publish) -> None:  # noqa: F811
    """trust --prefix (keys discovered) -> FROM localhost/app:1.0 in another build ->
    launch NAME -> rebuild (a hit) -> `publish` a new 1.0 -> rebuild (a miss from FROM)."""
    publish("served")
    out = user.ok("trust", "--prefix", "localhost/app", *flags, "--yes")
    assert key.fingerprint in out.lower() or key.fingerprint in user.ok("trust", "--list").lower()
    user.trust(key, "localhost/consumer")  # the user's own output, signed with the same key here

    ctx = user.root / "consumer"
    ctx.mkdir()
    (ctx / "ACIfile").write_text(CONSUMER)

    def build(*more: str) -> dict:
        meta = user.root / "meta.json"
        user.ok("build", "-f", ctx / "ACIfile", "-o", user.root / "consumer.aci", "--metadata-file", meta,
                "--sign", "--gpg-home", key.home, *flags, *more)
        return json.loads(meta.read_text())

    assert [s["cache"] for s in build()["steps"]] == ["miss"] * 4
    assert user.ok("launch", user.root / "consumer.aci").strip() == "built on served"
    assert user.ok("launch", "localhost/app:1.0", *flags).strip() == "served"
    assert [s["cache"] for s in build("--pull", "always")["steps"]] == ["hit"] * 4

    publish("republished")
    assert [s["cache"] for s in build("--pull", "always")["steps"]] == ["miss"] * 4
    assert user.ok("launch", user.root / "consumer.aci").strip() == "built on republished"


def publisher(user: User, key: Key, into: Path):  # noqa: F811
    """A function that builds and signs localhost/app:1.0 saying WORD into `into`."""
    into.mkdir(exist_ok=True)

    def publish(word: str) -> None:
        aci = user.image("localhost/app", "1.0", key=key, word=word,
                         extra=f'RUN ["/bin/busybox", "sh", "-c", "echo {word} > /word"]\n')
        for suffix in ("", ".asc"):
            os.replace(f"{aci}{suffix}", into / f"app.aci{suffix}")  # rename: a server never sees half a file

    return publish


def image_statuses(log: str) -> list[str]:
    """The HTTP status of each GET of the app's .aci in a server's access log (acbuild
    serve's and nginx's both put it right after the quoted request line)."""
    return [line.rsplit('"GET ', 1)[1].split('"', 1)[1].split()[0] for line in log.splitlines()
            if '"GET /localhost/app-1.0-' in line and '.aci HTTP' in line]


def test_the_full_loop_with_acbuild_serve_and_trust_by_discovery(user, key, test_ca):  # noqa: F811
    from test_discover_cli import start_serve, stop

    served = user.root / "served"
    publish = publisher(user, key, served)
    publish("placeholder")  # serve needs a directory with an image to start from
    proc, url = start_serve(str(served), "--port", "0", "--tls-cert", str(test_ca.cert), "--tls-key",
                            str(test_ca.key), "--keys", str(key.pubkey))
    try:
        the_full_loop(user, key, ["--port", url.rsplit(":", 1)[1].strip("/"), "--ca-file", str(test_ca.ca)], publish)
    finally:
        log = stop(proc)
    # The unchanged image was revalidated, not downloaded again; the new one was.
    assert image_statuses(log) == ["200", "304", "200"], log


def test_the_full_loop_against_nginx_serving_the_export(user, key, test_ca):  # noqa: F811
    """The same loop, with `acbuild serve --export` behind Debian's nginx (static files)."""
    from test_serve_export import Nginx, free_port

    require(shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists(), "nginx is not installed")
    port = free_port()
    images, site = user.root / "images", user.root / "site"
    make = publisher(user, key, images)

    def publish(word: str) -> None:
        make(word)
        user.ok("serve", "--export", images, site, "--base-url", f"https://localhost:{port}", "--keys", key.pubkey)

    with Nginx(user.root / "nginx", site, test_ca, port) as nginx:
        the_full_loop(user, key, ["--port", str(port), "--ca-file", str(test_ca.ca)], publish)
    log = (nginx.work / "access.log").read_text()
    assert image_statuses(log) == ["200", "304", "200"], log
