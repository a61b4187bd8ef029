"""`acbuild fetch docker://...` against a real registry (Debian's docker-registry,
tests/registry_fixture.py) with real GnuPG keys: an .aci pushed as an appc
artifact (`acbuild push`) comes back into the image store byte for byte, its
signature verified against the trust store as for a discovered image; unsigned,
untrusted and tampered artifacts are refused with nothing stored; a plain
Docker/OCI image is converted as `acbuild convert` converts it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from acbuild.aci.archive import read_aci
from acbuild.store.images import ImageStore
from tests.conftest import REPO
from tests.imagetools import layer_tar
from tests.registry_fixture import BlobProxy, registries  # noqa: F401 (fixture)
from tests.test_oci_convert import make_layout

NAME = "example.com/fetched-hello"


def acbuild(*args, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    if check and done.returncode:
        raise AssertionError(f"acbuild {' '.join(map(str, args))}: exit {done.returncode}\n{done.stderr}")
    return done


@pytest.fixture()
def signed(gpg_homes, tmp_path):
    """(signed .aci, its trust dir, an unsigned copy, a plain OCI layout): the .aci
    is a small converted image named NAME, signed by a fresh key trusted for NAME."""
    layout = tmp_path / "layout"
    make_layout(layout, [layer_tar([("etc", b"", {"type": tarfile.DIRTYPE}), ("etc/motd", b"fetched\n", {}),
                                    ("bin/hello", b"#!/bin/sh\necho hi\n", {"mode": 0o755})])],
                config={"Cmd": ["/bin/hello"]})
    aci = tmp_path / "signed" / "hello.aci"
    aci.parent.mkdir()
    acbuild("convert", "--name", NAME, f"oci:{layout}", "-o", aci)
    home = gpg_homes()
    fpr = home.make_key("Alice <alice@example.com>")
    acbuild("sign", aci, "--key", fpr, "--gpg-home", home.path)
    key = tmp_path / "alice.asc"
    key.write_bytes(home.export(fpr))
    trust = tmp_path / "trust"
    acbuild("trust", "--trust-dir", trust, "--prefix", NAME, key, "--yes")
    unsigned = tmp_path / "unsigned" / "hello.aci"
    unsigned.parent.mkdir()
    shutil.copy(aci, unsigned)
    return aci, trust, unsigned, layout


def fetch(reg_host: str, ref: str, store: Path, trust: Path, *extra, check=True, env=None):
    return acbuild("fetch", "--insecure", "--store-dir", store, "--trust-dir", trust, *extra,
                   f"docker://{reg_host}/{ref}", check=check, env=env)


def stored(store: Path) -> list:
    return ImageStore(store).list() if store.exists() else []


def test_an_artifact_is_fetched_into_the_store_verified_and_byte_identical(signed, registries, tmp_path):  # noqa: F811
    aci, trust, _, _ = signed
    reg = registries()
    digest = acbuild("push", aci, f"docker://{reg.host}/appc/hello:1.0", "--insecure").stdout.strip()
    store = tmp_path / "store"
    done = fetch(reg.host, "appc/hello:1.0", store, trust)
    image_id = read_aci(aci).image_id
    assert done.stdout.strip() == image_id
    assert "signature verified: Alice <alice@example.com>" in done.stderr
    [image] = stored(store)
    assert image.image_id == image_id and image.name == NAME and image.signer
    assert image.aci.read_bytes() == aci.read_bytes()
    assert image.signature.read_bytes() == Path(f"{aci}.asc").read_bytes()
    assert image.origin == {"docker": f"docker://{reg.host}/appc/hello:1.0", "manifest-digest": digest}
    # By digest, and then `acbuild fetch NAME --pull never` answers from the store, verified.
    assert fetch(reg.host, f"appc/hello@{digest}", store, trust).stdout.strip() == image_id
    by_name = acbuild("fetch", "--store-dir", store, "--trust-dir", trust, "--pull", "never", NAME)
    assert by_name.stdout.strip() == image_id


def test_unsigned_untrusted_and_tampered_artifacts_are_refused(signed, registries, tmp_path):  # noqa: F811
    aci, trust, unsigned, _ = signed
    reg = registries()
    acbuild("push", aci, f"docker://{reg.host}/appc/hello:signed", "--insecure")
    acbuild("push", unsigned, f"docker://{reg.host}/appc/hello:unsigned", "--insecure")
    store = tmp_path / "store"
    no_keys = tmp_path / "no-keys"
    no_keys.mkdir()

    untrusted = fetch(reg.host, "appc/hello:signed", store, no_keys, check=False)
    assert untrusted.returncode != 0 and "Traceback" not in untrusted.stderr
    assert "--insecure-skip-verify" in untrusted.stderr
    bare = fetch(reg.host, "appc/hello:unsigned", store, trust, check=False)
    assert bare.returncode != 0 and "no signature" in bare.stderr and "Traceback" not in bare.stderr
    proxy = BlobProxy(reg)
    try:
        proxy.tamper.add("sha256:" + hashlib.sha256(aci.read_bytes()).hexdigest())
        tampered = fetch(proxy.host, "appc/hello:signed", store, trust, check=False)
        assert tampered.returncode != 0 and "digest mismatch" in tampered.stderr
    finally:
        proxy.stop()
    assert stored(store) == []
    assert not [p for p in (store / "tmp").rglob("*") if p.is_file() and p.name != ".lock"] \
        if (store / "tmp").exists() else True

    taken = fetch(reg.host, "appc/hello:unsigned", store, trust, "--insecure-skip-verify")
    assert "NOT verifying" in taken.stderr
    [image] = stored(store)
    assert image.image_id == read_aci(unsigned).image_id and not image.signer


def test_a_plain_image_is_converted(signed, registries, tmp_path):  # noqa: F811
    _, trust, _, layout = signed
    reg = registries(tls=True)
    reg.push(f"oci:{layout}:latest", "plain/hello:2.0")
    env = dict(os.environ, ACBUILD_CACHE_DIR=str(tmp_path / "cache"))
    store = tmp_path / "store"
    done = acbuild("fetch", "--ca-file", reg.ca.ca, "--store-dir", store, "--trust-dir", trust,
                   f"docker://{reg.host}/plain/hello:2.0", env=env)
    assert "converted" in done.stderr and "no appc signature" in done.stderr
    converted = acbuild("convert", "--ca-file", reg.ca.ca, f"docker://{reg.host}/plain/hello:2.0",
                        "-o", tmp_path / "converted.aci", env=env).stdout.strip()
    assert done.stdout.strip() == converted
    [image] = stored(store)
    assert image.image_id == converted and not image.signer
    assert image.name == f"{reg.host.replace(':', '_')}/plain/hello" and image.labels["version"] == "2.0"
    assert image.aci.read_bytes() == (tmp_path / "converted.aci").read_bytes()
