"""OCI export (`acbuild build -o oci:DIR[:TAG]`, `oci-archive:`, `docker-archive:`),
checked by other tools: skopeo inspect/copy (every digest re-computed here, with
hashlib), oci-image-tool validate, umoci stat/unpack, and runc running the unpacked
bundle of ACIfile.example (it must print what its exec prints). Two independent
builds give the same manifest digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.test_build import acbuild, example_context

TOOLS = ("skopeo", "umoci", "runc", "oci-image-tool")


def need(*tools: str) -> None:
    for tool in tools:
        require(shutil.which(tool) is not None, f"{tool} is not installed (Makefile APT_PACKAGES)")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(*argv, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ACIfile.example built twice, independently (separate caches, the first build of
    each --no-cache), each as an .aci and then, from its own cache, as OCI in all three forms."""
    require(os.geteuid() == 0 and Path("/bin/busybox").exists(), "needs root and busybox-static (RUN steps)")
    base = tmp_path_factory.mktemp("oci-export")
    ctx = example_context(base)
    out = {}
    for n in (1, 2):
        d = base / f"build{n}"
        d.mkdir()
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
        common = ["-f", ctx / "ACIfile", "--cache-dir", d / "cache", "-q"]
        acbuild("build", *common, "--no-cache", "-o", d / "example.aci", env=env)
        acbuild("build", *common, "-o", f"oci:{d}/layout:v1", "--metadata-file", d / "meta.json", env=env)
        acbuild("build", *common, "-o", f"oci-archive:{d}/example.oci.tar", env=env)
        acbuild("build", *common, "--format", "oci", "-o", f"docker-archive:{d}/example.docker.tar",
                "--metadata-file", d / "docker-meta.json", env=env)
        out[n] = d
    return out


def index_manifest(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    return entry


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()


def test_two_builds_same_bytes_and_manifest_digest(exported):
    one, two = exported[1], exported[2]
    assert index_manifest(one / "layout", "v1") == index_manifest(two / "layout", "v1")
    for name in ("example.oci.tar", "example.docker.tar"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    meta = json.loads((one / "meta.json").read_text())
    assert meta["oci-manifest-digest"] == index_manifest(one / "layout", "v1")["digest"]


def test_digests_sizes_and_config(exported):
    layout = exported[1] / "layout"
    entry = index_manifest(layout, "v1")
    raw = blob(layout, entry["digest"])
    assert sha256(raw) == entry["digest"] and len(raw) == entry["size"]
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config_raw = blob(layout, manifest["config"]["digest"])
    assert sha256(config_raw) == manifest["config"]["digest"] and len(config_raw) == manifest["config"]["size"]
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_raw = blob(layout, layer["digest"])
    assert sha256(layer_raw) == layer["digest"] and len(layer_raw) == layer["size"]
    config = json.loads(config_raw)
    assert config["rootfs"]["diff_ids"] == [sha256(gzip.decompress(layer_raw))]
    assert config["created"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH=1700000000
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    c = config["config"]
    assert c["Entrypoint"] == ["/bin/sh", "-c", "echo $GREETING; httpd -f -p 8080 -h /srv/www"]
    assert "Cmd" not in c
    assert c["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "GREETING=Hello AppC", "LANG=C.UTF-8"]
    assert c["User"] == "hello:hello" and c["WorkingDir"] == "/srv/www"
    assert c["ExposedPorts"] == {"8080/tcp": {}} and c["Volumes"] == {"/var/log/hello": {}}
    assert c["Labels"] == {"version": "1.0.0", "channel": "stable", "authors": "acbuild developers",
                           "homepage": "https://example.com/busybox-hello"}


def test_layer_is_the_aci_rootfs(exported):
    """The one layer holds exactly the .aci's rootfs entries, `rootfs/` stripped
    (hard link targets too), in the same order with the same headers and content."""
    d = exported[1]
    manifest = json.loads(blob(d / "layout", index_manifest(d / "layout", "v1")["digest"]))
    layer = tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(d / "layout", manifest["layers"][0]["digest"]))))
    aci = tarfile.open(d / "example.aci")

    def entries(tf, strip):
        out = []
        for m in tf:
            if m.name in ("rootfs", "manifest"):
                continue
            data = tf.extractfile(m).read() if m.isreg() else b""
            link = m.linkname.removeprefix(strip) if m.islnk() else m.linkname
            out.append((m.name.removeprefix(strip), m.type, m.mode, m.uid, m.gid, m.mtime, link, data))
        return out

    layer_entries = entries(layer, "")
    assert layer_entries == entries(aci, "rootfs/")
    names = [e[0] for e in layer_entries]
    assert "bin/busybox" in names and "srv/www/version.txt" in names
    assert not any(n.startswith(("rootfs", "/", "./")) for n in names)


def test_skopeo_reads_and_copies_every_form(exported, tmp_path):
    need("skopeo")
    d = exported[1]
    digest = index_manifest(d / "layout", "v1")["digest"]
    raw = run("skopeo", "inspect", "--raw", f"oci:{d}/layout:v1").stdout.encode()
    assert sha256(raw) == digest
    info = json.loads(run("skopeo", "inspect", f"oci:{d}/layout:v1").stdout)
    assert info["Digest"] == digest and info["Labels"]["version"] == "1.0.0"
    assert info["Layers"] == [json.loads(raw)["layers"][0]["digest"]]
    # oci-archive -> layout: the same manifest, byte for byte
    run("skopeo", "copy", "-q", f"oci-archive:{d}/example.oci.tar", f"oci:{tmp_path}/from-archive:x")
    assert index_manifest(tmp_path / "from-archive", "x")["digest"] == digest
    run("skopeo", "copy", "-q", f"oci:{d}/layout:v1", f"oci:{tmp_path}/copy:y")
    assert index_manifest(tmp_path / "copy", "y")["digest"] == digest
    # docker-archive: the same config (so the same image) with its uncompressed layer
    docker = json.loads(run("skopeo", "inspect", "--config", "--raw", f"docker-archive:{d}/example.docker.tar").stdout)
    oci_config = json.loads(blob(d / "layout", json.loads(raw)["config"]["digest"]))
    assert docker == oci_config
    with tarfile.open(d / "example.docker.tar") as tf:
        [entry] = json.loads(tf.extractfile("manifest.json").read())
        assert entry["RepoTags"] == ["example.com/busybox-hello:1.0.0"]
        layer = tf.extractfile(entry["Layers"][0]).read()
        assert sha256(layer) == oci_config["rootfs"]["diff_ids"][0]
        assert sha256(tf.extractfile(entry["Config"]).read()) == "sha256:" + entry["Config"].removesuffix(".json")
    meta = json.loads((d / "docker-meta.json").read_text())
    assert meta["docker-image-id"] == "sha256:" + entry["Config"].removesuffix(".json")
    run("skopeo", "copy", "-q", f"docker-archive:{d}/example.docker.tar", f"oci:{tmp_path}/from-docker:z")


def test_oci_image_tool_validates(exported, tmp_path):
    need("oci-image-tool")
    d = exported[1]
    run("oci-image-tool", "validate", "--type", "image", "--ref", "name=v1", d / "layout")
    # Its tar reader fails even on skopeo's own oci-archives, so the archive is unpacked first.
    with tarfile.open(d / "example.oci.tar") as tf:
        tf.extractall(tmp_path / "unpacked", filter="data") if hasattr(tarfile, "data_filter") else \
            tf.extractall(tmp_path / "unpacked")
    run("oci-image-tool", "validate", "--type", "image", "--ref", "name=latest", tmp_path / "unpacked")
    entry = index_manifest(d / "layout", "v1")
    path = d / "layout/blobs/sha256" / entry["digest"].partition(":")[2]
    run("oci-image-tool", "validate", "--type", "manifest", path)


def test_umoci_unpack_and_runc_runs_it(exported, tmp_path):
    need("umoci", "runc")
    d = exported[1]
    stat = run("umoci", "stat", "--image", f"{d}/layout:v1", "--json").stdout
    assert json.loads(stat)["history"][0]["created_by"] == "acbuild: example.com/busybox-hello"
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{d}/layout:v1", bundle)
    assert (bundle / "rootfs/srv/www/version.txt").read_text() == "built from version 1.0.0\n"
    assert os.path.islink(bundle / "rootfs/bin/sh")
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/bin/sh", "-c", "echo $GREETING; httpd -f -p 8080 -h /srv/www"]
    assert config["process"]["user"]["uid"] == 1000 and config["process"]["cwd"] == "/srv/www"
    config["process"]["terminal"] = False  # no tty under pytest; the image's own process otherwise
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"acbuild-oci-test-{os.getpid()}"
    proc = subprocess.Popen(["runc", "run", "-b", str(bundle), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line == b"Hello AppC\n", proc.stderr.read() if proc.poll() is not None else line
        # the httpd its exec started serves the image's files, as user hello
        for _ in range(50):
            got = subprocess.run(["runc", "exec", name, "/bin/sh", "-c", "id -un; wget -qO- http://127.0.0.1:8080/version.txt"],
                                 capture_output=True, text=True)
            if got.returncode == 0:
                break
            time.sleep(0.1)
        assert got.stdout == "hello\nbuilt from version 1.0.0\n", got.stderr
    finally:
        subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
        proc.wait(timeout=20)
        subprocess.run(["runc", "delete", "-f", name], capture_output=True)


def test_bad_destinations_are_usage_errors(tmp_path):
    (tmp_path / "ACIfile").write_text("FROM scratch\nNAME example.com/x\n")
    for bad, message in [("oci:", "no path after oci:"), ("oci:x:bad tag", "is not a valid tag"),
                         ("docker-archive:f.tar:Not/A:tag!", "is not a Docker reference")]:
        result = acbuild("build", "-f", tmp_path / "ACIfile", "-o", bad, check=False)
        assert result.returncode == 3 and message in result.stderr, result.stderr
    result = acbuild("build", "-f", tmp_path / "ACIfile", "--format", "aci", "-o", f"oci:{tmp_path}/l", check=False)
    assert result.returncode == 3 and "--format aci" in result.stderr
    result = acbuild("build", "-f", tmp_path / "ACIfile", check=False)
    assert result.returncode == 3 and "nothing to write" in result.stderr
    result = acbuild("build", "-f", tmp_path / "ACIfile", "--format", "oci", "-o", tmp_path / "x.aci", check=False)
    assert result.returncode == 3 and "give oci:DIR" in result.stderr
    result = acbuild("build", "-f", tmp_path / "ACIfile", "--sign", "-o", f"oci:{tmp_path}/l", check=False)
    assert result.returncode == 3 and "--sign signs the .aci" in result.stderr
    result = acbuild("build", "-f", tmp_path / "ACIfile", "-o", f"oci:{tmp_path}/l", "--push", "127.0.0.1:1/x", check=False)
    assert result.returncode == 3 and "expected docker://" in result.stderr
    result = acbuild("convert", tmp_path / "missing.aci", "--to", f"oci:{tmp_path}/l", check=False)
    assert result.returncode == 2 and "no such file" in result.stderr
    assert not (tmp_path / "l").exists()


def test_layout_keeps_other_tags_and_a_bare_dir_with_format_oci(tmp_path):
    (tmp_path / "ACIfile").write_text("FROM scratch\nNAME example.com/x\nLABEL version=2\nEXEC [\"/x\"]\n")
    (tmp_path / "ACIfile2").write_text("FROM scratch\nNAME example.com/y\nEXEC [\"/y\"]\n")
    layout = tmp_path / "layout"
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", f"oci:{layout}:one", "-q")
    acbuild("build", "-f", tmp_path / "ACIfile2", "-o", f"oci:{layout}:two", "-q")
    acbuild("build", "-f", tmp_path / "ACIfile2", "--format", "oci", "-o", layout, "-q")  # tag "latest"
    index = json.loads((layout / "index.json").read_text())
    tags = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert tags == ["latest", "one", "two"]
    assert index_manifest(layout, "two")["digest"] == index_manifest(layout, "latest")["digest"]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not [p for p in (layout / "blobs/sha256").iterdir() if p.name.startswith(".")]


def test_image_config_mapping():
    from acbuild.aci.manifest import ImageManifest
    from acbuild.oci.export import image_config

    manifest = ImageManifest.from_json({
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/m",
        "labels": [{"name": "arch", "value": "armv7l"}, {"name": "os", "value": "linux"},
                   {"name": "version", "value": "3"}],
        "annotations": [{"name": "version", "value": "loses to the label"}, {"name": "homepage", "value": "h"}],
        "app": {"exec": ["/x", "a b"], "user": "0", "group": "0",
                "environment": [{"name": "PATH", "value": "/only"}],
                "ports": [{"name": "p", "protocol": "udp", "port": 53, "count": 3}]},
    })
    config = image_config(manifest, ["sha256:" + "0" * 64], 0)
    assert (config["architecture"], config["variant"], config["os"]) == ("arm", "v7", "linux")
    assert config["created"] == "1970-01-01T00:00:00Z"
    c = config["config"]
    assert c["Env"] == ["PATH=/only"] and c["User"] == "0:0" and c["Entrypoint"] == ["/x", "a b"]
    assert c["ExposedPorts"] == {"53/udp": {}, "54/udp": {}, "55/udp": {}}
    assert c["Labels"] == {"version": "3", "homepage": "h"}
    assert "Volumes" not in c and "WorkingDir" not in c


def test_convert_to_gives_the_build_s_image(exported, tmp_path):
    d = exported[1]
    result = acbuild("convert", d / "example.aci", "--to", f"oci-archive:{tmp_path}/c.tar",
                     env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    assert result.stdout.strip() == index_manifest(d / "layout", "v1")["digest"]
    assert (tmp_path / "c.tar").read_bytes() == (d / "example.oci.tar").read_bytes()


def test_layered_image_is_refused(tmp_path):
    (tmp_path / "ACIfile").write_text("FROM scratch\nNAME example.com/top\nDEPENDENCY example.com/base\n")
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "top.aci", "-q")
    from acbuild.errors import ImageError
    from acbuild.oci.destination import parse_destination
    from acbuild.oci.export import export_aci

    with pytest.raises(ImageError, match="dependencies"):
        export_aci(tmp_path / "top.aci", parse_destination(f"oci-archive:{tmp_path}/top.tar"), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ACIfile", "top.aci"]  # no staging left


def test_a_damaged_aci_leaves_no_partial_output(exported, tmp_path):
    """The .aci breaks off in the middle: every form fails with a message and leaves
    nothing behind (no archive, no temp file, no layout)."""
    data = (exported[1] / "example.aci").read_bytes()
    bad = tmp_path / "bad.aci"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    out.mkdir()
    for dest in (f"oci-archive:{out}/x.tar", f"docker-archive:{out}/x.tar", f"oci:{out}/layout:v1"):
        result = acbuild("convert", bad, "--to", dest, check=False)
        assert result.returncode == 1 and "bad.aci" in result.stderr, result.stderr
    assert list(out.iterdir()) == []
