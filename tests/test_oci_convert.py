"""acbuild convert: real images (tests/oci_images.py: buildah, skopeo, umoci) from
every source kind, compared file by file with the tree `umoci unpack` gives for
the same image, validated by actool; pulls from a real registry with TLS and
auth, by tag and digest, through a manifest list and an OCI index; tampered
blobs refused; a second pull downloads nothing; hostile layers refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from acbuild.aci.archive import read_aci
from acbuild.aci.extract import extract_rootfs
from acbuild.aci.manifest import ImageManifest
from acbuild.oci.toaci import Origin, image_manifest
from tests.conftest import REPO
from tests.imagetools import layer_tar
from tests.oci_images import ARM_TAG, TAG, test_images
from tests.registry_fixture import BlobProxy, registries  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def images():
    return test_images()


def acbuild(*args, env=None, check=True, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "acbuild", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO)
    if check and done.returncode:
        raise AssertionError(f"acbuild {' '.join(map(str, args))}: exit {done.returncode}\n{done.stderr}")
    return done


def tree(root: Path) -> dict[str, tuple]:
    """path -> (kind, mode, uid, gid, content/target, hardlink group) for a whole tree."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            rel = "/" + str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = ""
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, st.st_ino)
    groups = {ino: tuple(sorted(paths)) for ino, paths in inodes.items()}
    return {p: (*v[:5], groups.get(v[5], ())) for p, v in out.items()}


def rootfs_of(aci: Path, dest: Path) -> Path:
    extract_rootfs(aci, dest)
    return dest


def assert_same_as_runtime(ours: Path, images) -> None:
    want = tree(images.unpacked)
    devices = {p for p, v in want.items() if v[0] in (stat.S_IFCHR, stat.S_IFBLK)}
    assert devices == {"/dev/testnull"}
    want = {p: v for p, v in want.items() if p not in devices}
    got = tree(ours)
    assert sorted(set(got) ^ set(want)) == []
    for path in want:
        assert got[path] == want[path], path
    # What the layers did, spelled out.
    assert "/etc/doomed" not in got and "/data/gone" not in got  # whiteouts of a file and a directory
    assert sorted(p for p in got if p.startswith("/data/keep/")) == ["/data/keep/new"]  # opaque dir
    assert got["/data/links/a"][5] == ("/data/links/a", "/data/links/b")  # hard link within a layer
    assert got["/data/links/x"][5] == ("/data/links/x", "/data/links/y")  # ... within a later layer
    assert got["/data/hl"][5] == ("/data/hl", "/etc/motd")  # ... and across layers
    assert "/dev/testnull" not in got


@pytest.mark.parametrize("kind", ["docker-archive", "oci", "oci-archive"])
def test_every_local_source_converts_to_what_the_runtime_shows(kind, images, tmp_path, actool):
    source = {"docker-archive": f"docker-archive:{images.docker_archive}",
              "oci": f"oci:{images.layout}:{TAG}",
              "oci-archive": f"oci-archive:{images.oci_archive}:{TAG}"}[kind]
    out = tmp_path / "out.aci"
    done = acbuild("convert", source, "-o", out)
    assert done.stdout.strip() == read_aci(out).image_id
    assert "/dev/testnull" in done.stderr  # the device node is reported, not created
    subprocess.run([actool, "validate", str(out)], check=True, capture_output=True)
    assert_same_as_runtime(rootfs_of(out, tmp_path / "rootfs"), images)
    manifest = ImageManifest.from_json(read_aci(out).manifest_bytes)
    app = manifest.app
    assert app.exec == ["/bin/sh", "-c", "echo hello from busytest"]
    assert (app.user, app.group, app.working_directory) == ("1000", "1000", "/data")
    assert app.env("GREETING") == "hello"
    assert [(p.name, p.protocol, p.port) for p in app.ports] == [("53-udp", "udp", 53), ("8080-tcp", "tcp", 8080)]
    assert [(m.name, m.path) for m in app.mount_points] == [("volume-var-cache-app", "/var/cache/app")]
    assert app.user_labels["org.example.kind"] == "test"
    assert manifest.label("os") == "linux" and manifest.label("arch") == "amd64"
    assert manifest.label("version") == TAG
    if kind == "docker-archive":
        assert manifest.name == "docker.io/library/busytest"  # from the archive's RepoTag
    assert manifest.annotation("appc.io/docker/stopsignal") == "SIGTERM"


def test_conversion_is_reproducible_and_named_like_docker2aci(images, tmp_path):
    first = acbuild("convert", f"oci:{images.layout}:{TAG}", cwd=tmp_path).stdout
    assert (tmp_path / "layout-latest.aci").exists()
    again = acbuild("convert", "--overwrite", f"oci:{images.layout}:{TAG}", cwd=tmp_path).stdout
    assert first == again
    refused = acbuild("convert", f"oci:{images.layout}:{TAG}", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "exists (use --overwrite)" in refused.stderr


def test_config_mapping_details():
    config = {"architecture": "arm64", "os": "linux", "author": "someone", "created": "2024-01-02T03:04:05Z",
              "config": {"User": "app", "Env": ["A=1", "NOEQUALS", "A=2", "B=x=y"], "Cmd": ["serve"],
                         "ExposedPorts": {"6379": {}}, "Volumes": {"/var/tmp": {}, "/var-tmp": {}},
                         "StopSignal": "SIGQUIT", "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30}}}
    m = image_manifest(json.dumps(config).encode(),
                       Origin("127.0.0.1:5000/team/App", "v1", "docker://x", "127.0.0.1:5000", "team/app"))
    assert m.name == "127.0.0.1_5000/team/app"
    assert m.label("arch") == "aarch64" and m.label("version") == "v1"
    assert (m.app.user, m.app.group) == ("app", "app")
    assert [(e.name, e.value) for e in m.app.environment] == [("A", "2"), ("B", "x=y")]
    assert m.app.exec == ["serve"]
    assert [(p.name, p.protocol) for p in m.app.ports] == [("6379-tcp", "tcp")]
    assert [m.name for m in m.app.mount_points] == ["volume-var-tmp", "volume-var-tmp-1"]
    assert m.annotation("appc.io/docker/stopsignal") == "SIGQUIT"
    assert json.loads(m.annotation("appc.io/docker/healthcheck"))["Test"] == ["CMD", "true"]
    assert m.annotation("appc.io/docker/cmd") == '["serve"]'
    assert m.annotation("author") == "someone"
    assert not m.problems()


# ---------------------------------------------------------------- hostile or broken input


def make_layout(dir: Path, layers: list[bytes], config: dict | None = None, wrong_diff_id: bool = False,
                gzipped: tuple[int, ...] = ()) -> None:
    """A minimal OCI layout with `layers` (plain tars; those at the indexes
    `gzipped` stored gzip-compressed, deterministically) and a matching config,
    unless `wrong_diff_id`."""
    blobs = dir / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    import gzip

    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    layers = [gzip.compress(layer, mtime=0) if n in gzipped else layer for n, layer in enumerate(layers)]
    layer_digests = [put(layer)["digest"] for layer in layers]
    if wrong_diff_id:
        diff_ids[-1] = "sha256:" + "0" * 64
    cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
           "config": config or {}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(cfg).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                            "size": len(layer)} for d, layer in zip(layer_digests, layers)]}
    desc = put(json.dumps(manifest).encode())
    (dir / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dir / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **desc,
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


@pytest.mark.parametrize("entries, message", [
    ([("../evil", b"x", {})], "'..' in the name"),
    ([("link", b"", {"type": tarfile.SYMTYPE, "linkname": "../../outside"})], "leaves the root"),
    ([("d", b"", {"type": tarfile.SYMTYPE, "linkname": "/tmp"}), ("d/planted", b"x", {})], "d/planted"),
    ([("hl", b"", {"type": tarfile.LNKTYPE, "linkname": "etc/passwd"})], "does not exist"),
])
def test_hostile_layers_are_refused_and_write_nothing_outside(entries, message, tmp_path):
    make_layout(tmp_path / "layout", [layer_tar(entries)])
    planted = Path("/tmp/planted")
    planted.unlink(missing_ok=True)
    done = acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci", check=False)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not planted.exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path / "out.aci").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["layout"]  # no temp dir left behind


def test_a_corrupt_blob_in_a_layout_is_refused(tmp_path):
    make_layout(tmp_path / "layout", [layer_tar([("f", b"content", {})])])
    blob = next(p for p in (tmp_path / "layout/blobs/sha256").iterdir()
                if p.read_bytes().startswith(b"f\0"))
    blob.write_bytes(blob.read_bytes().replace(b"content", b"CONTENT"))
    done = acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci", check=False)
    assert done.returncode == 1 and "digest mismatch" in done.stderr
    assert not (tmp_path / "out.aci").exists()


def test_a_layer_that_is_not_its_diff_id_is_refused(tmp_path):
    make_layout(tmp_path / "layout", [layer_tar([("f", b"content", {})])], wrong_diff_id=True)
    done = acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci", check=False)
    assert done.returncode == 1 and "(uncompressed)" in done.stderr and "digest mismatch" in done.stderr


def test_hard_links_keep_their_inode_when_the_target_changes(tmp_path):
    """A link names the file, not the path: replacing or deleting the target in a
    later layer leaves the link with the old content (as on overlayfs)."""
    base = layer_tar([("a", b"old\n", {}), ("b", b"", {"type": tarfile.LNKTYPE, "linkname": "a"}),
                   ("c", b"", {"type": tarfile.LNKTYPE, "linkname": "a"}), ("d", b"dee\n", {}),
                   ("e", b"", {"type": tarfile.LNKTYPE, "linkname": "d"})])
    upper = layer_tar([("a", b"new\n", {}), (".wh.d", b"", {})])
    make_layout(tmp_path / "layout", [base, upper])
    acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci")
    got = tree(rootfs_of(tmp_path / "out.aci", tmp_path / "rootfs"))
    root = tmp_path / "rootfs"
    assert (root / "a").read_text() == "new\n" and (root / "b").read_text() == "old\n"
    assert got["/b"][5] == ("/b", "/c")  # still one file
    assert got["/a"][5] == ("/a",)
    assert not (root / "d").exists() and (root / "e").read_text() == "dee\n"


@pytest.mark.parametrize("source, message, code", [
    ("oci:/nonexistent/layout", "no such file", 2),
    ("oci:/proc/self", "oci-layout is missing", 1),
    ("docker-archive:/nonexistent.tar", "no such file", 2),
    ("nope:thing", "unknown image source", 3),
    ("docker://Bad/Name", "names must be lowercase", 3),
])
def test_bad_sources_are_clear_errors(source, message, code, tmp_path):
    done = acbuild("convert", source, "-o", tmp_path / "x.aci", check=False)
    assert done.returncode == code and message in done.stderr and "Traceback" not in done.stderr


def test_no_squash_writes_a_chain_of_layer_images(images, tmp_path, actool):
    out = tmp_path / "app.aci"
    acbuild("convert", "--no-squash", f"oci:{images.layout}:{TAG}", "-o", out)
    written = sorted(tmp_path.glob("app*.aci"))
    assert len(written) == 4  # three buildah layers and the opaque one
    for path in written:
        subprocess.run([actool, "validate", str(path)], check=True, capture_output=True)
    top = ImageManifest.from_json(read_aci(out).manifest_bytes)
    assert len(top.dependencies) == 3
    ids = {read_aci(p).image_id for p in written if p != out}
    assert {d.image_id for d in top.dependencies} == ids
    whitelist = set(top.path_whitelist)
    assert "/etc/motd" in whitelist and "/data/keep/new" in whitelist
    assert "/etc/doomed" not in whitelist and "/data/gone/f" not in whitelist
    assert "/data/keep/orig" not in whitelist  # hidden by the opaque dir
    # The top (opaque) layer alone: its hard link to a lower file is a copy of that file,
    # and it holds neither whiteout markers nor the device node.
    alone = rootfs_of(out, tmp_path / "top")
    assert (alone / "data/hl").read_text() == "hi\n"
    assert sorted(str(p.relative_to(alone)) for p in alone.rglob("*")) == \
        ["data", "data/hl", "data/keep", "data/keep/new", "dev"]


def test_no_squash_layers_render_to_what_the_runtime_shows(images, tmp_path):
    """FROM the top layer image renders its dependencies (acbuild's appc renderer,
    pathWhitelist included): the tree is the squashed one, except that a hard link
    across layers is a copy in the layer that made it."""
    from tests.conftest import require

    require(os.geteuid() == 0, "building keeps file owners only as root (CI is root)")
    acbuild("convert", "--no-squash", f"oci:{images.layout}:{TAG}", "-o", tmp_path / "app.aci")
    (tmp_path / "ACIfile").write_text("FROM app.aci\nNAME example.com/flat\n")
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "flat.aci", "--image-dir", tmp_path)
    got = tree(rootfs_of(tmp_path / "flat.aci", tmp_path / "rootfs"))
    want = {p: v for p, v in tree(images.unpacked).items() if p != "/dev/testnull"}
    assert sorted(set(got) ^ set(want)) == []
    for path in want:
        if path in ("/data/hl", "/etc/motd"):
            assert got[path][:5] == want[path][:5], path
        else:
            assert got[path] == want[path], path


# ---------------------------------------------------------------- docker://


def _convert_from(reg, ref: str, out: Path, *extra: str, env=None, check=True):
    return acbuild("convert", *reg.acbuild_flags(), *extra, f"docker://{reg.host}/{ref}", "-o", out, env=env,
                   check=check)


def _image_env(tmp_path: Path) -> dict:
    return dict(os.environ, ACBUILD_CACHE_DIR=str(tmp_path / "cache"))


@pytest.mark.parametrize("kind", ["plain", "tls+basic", "tls+bearer"])
def test_docker_pulls_convert_like_the_local_layout(kind, registries, images, tmp_path, actool):  # noqa: F811
    reg = registries(tls="tls" in kind, basic="basic" in kind, bearer="bearer" in kind)
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    env = _image_env(tmp_path)
    local = acbuild("convert", "--name", "busybox", f"oci:{images.layout}:{TAG}", "-o", tmp_path / "local.aci").stdout
    pulled = _convert_from(reg, "busybox:latest", tmp_path / "pulled.aci", "--name", "busybox", env=env).stdout
    assert pulled != local  # the origin annotations differ ...
    assert_same_as_runtime(rootfs_of(tmp_path / "pulled.aci", tmp_path / "rootfs"), images)  # ... the tree does not
    subprocess.run([actool, "validate", str(tmp_path / "pulled.aci")], check=True, capture_output=True)
    manifest = ImageManifest.from_json(read_aci(tmp_path / "pulled.aci").manifest_bytes)
    digest = manifest.annotation("appc.io/docker/manifesthash")
    assert manifest.annotation("appc.io/docker/repository") == "busybox"
    by_digest = _convert_from(reg, f"busybox@{digest}", tmp_path / "digest.aci", "--name", "busybox", env=env)
    assert ImageManifest.from_json(read_aci(tmp_path / "digest.aci").manifest_bytes).label("version") is None
    assert by_digest.returncode == 0
    if "basic" in kind or "bearer" in kind:
        refused = acbuild("convert", "--ca-file", str(reg.ca.ca), f"docker://{reg.host}/busybox:latest",
                          "-o", tmp_path / "no.aci", env=env, check=False)
        assert refused.returncode == 1 and "--creds" in refused.stderr


def test_second_pull_downloads_nothing_and_tampered_blobs_are_refused(registries, images, tmp_path):  # noqa: F811
    reg = registries()
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    proxy = BlobProxy(reg)
    try:
        env = _image_env(tmp_path)
        flags = ["--insecure"]
        acbuild("convert", *flags, f"docker://{proxy.host}/busybox:latest", "-o", tmp_path / "1.aci", env=env)
        first = len(proxy.blob_gets)
        assert first == 5  # config and four layers
        acbuild("convert", *flags, f"docker://{proxy.host}/busybox:latest", "-o", tmp_path / "2.aci", env=env)
        assert len(proxy.blob_gets) == first  # all from the blob cache
        assert read_aci(tmp_path / "1.aci").image_id == read_aci(tmp_path / "2.aci").image_id
        # A fresh cache and a proxy that corrupts one layer: refused, nothing written.
        proxy.tamper.add(proxy.blob_gets[2])
        env2 = _image_env(tmp_path / "other")
        bad = acbuild("convert", *flags, f"docker://{proxy.host}/busybox:latest", "-o", tmp_path / "3.aci",
                      env=env2, check=False)
        assert bad.returncode == 1 and "digest mismatch" in bad.stderr
        assert not (tmp_path / "3.aci").exists()
    finally:
        proxy.stop()


def _push_manifest_list(reg, tmp_path: Path, fmt: str, tag: str) -> None:
    """buildah manifest create/add/push: a list of the amd64 and the arm64 image."""
    storage = ["--storage-driver", "vfs", "--root", str(tmp_path / "bh-root"), "--runroot", str(tmp_path / "bh-run")]
    tls = ["--tls-verify=false"]

    def buildah(*args: str) -> None:
        subprocess.run(["buildah", *storage, *args], check=True, capture_output=True)

    buildah("manifest", "create", f"list-{tag}")
    for image_tag in (TAG, ARM_TAG):
        buildah("manifest", "add", *tls, f"list-{tag}", f"docker://{reg.host}/busybox:{image_tag}")
    buildah("manifest", "push", "--all", "--format", fmt, *tls, f"list-{tag}", f"docker://{reg.host}/busybox:{tag}")


@pytest.mark.parametrize("fmt, tag, media_type", [
    ("v2s2", "list", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ("oci", "index", "application/vnd.oci.image.index.v1+json"),
])
def test_manifest_lists_and_indexes_resolve_to_a_platform(fmt, tag, media_type, registries, images, tmp_path):  # noqa: F811
    reg = registries()
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    reg.push(f"oci:{images.layout}:{ARM_TAG}", f"busybox:{ARM_TAG}")
    _push_manifest_list(reg, tmp_path, fmt, tag)
    from acbuild.oci.reference import parse_reference
    from acbuild.oci.registry import RegistryClient, RegistryOptions

    with RegistryClient.for_reference(parse_reference(f"{reg.host}/busybox"), RegistryOptions(insecure=True)) as c:
        assert c.get_manifest("busybox", tag)[1] == media_type
    env = _image_env(tmp_path)
    _convert_from(reg, f"busybox:{tag}", tmp_path / "host.aci", env=env)
    assert ImageManifest.from_json(read_aci(tmp_path / "host.aci").manifest_bytes).label("arch") == "amd64"
    _convert_from(reg, f"busybox:{tag}", tmp_path / "arm.aci", "--platform", "linux/arm64", env=env)
    assert ImageManifest.from_json(read_aci(tmp_path / "arm.aci").manifest_bytes).label("arch") == "aarch64"
    missing = _convert_from(reg, f"busybox:{tag}", tmp_path / "x.aci", "--platform", "linux/s390x", env=env,
                            check=False)
    assert missing.returncode == 1 and "no image for platform linux/s390x" in missing.stderr
    assert "linux/arm64" in missing.stderr


# ---------------------------------------------------------------- FROM SOURCE in an ACIfile


def test_from_docker_builds_with_run(registries, images, tmp_path, actool):  # noqa: F811
    from tests.conftest import require

    require(os.geteuid() == 0, "RUN needs root namespaces here (CI is root)")
    reg = registries(tls=True, basic=True)
    reg.push(f"oci:{images.layout}:{TAG}", "busybox:latest")
    (tmp_path / "ACIfile").write_text(
        f"FROM docker://{reg.host}/busybox:latest\n"
        "NAME example.com/from-docker\n"
        "USER 0\nGROUP 0\n"  # the image runs as 1000:1000, which cannot write to /
        "RUN cat /etc/motd > /copied && ls /data/keep > /listing && test ! -e /etc/doomed\n")
    env = _image_env(tmp_path)
    out = tmp_path / "out.aci"
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", out, *reg.acbuild_flags(), env=env)
    subprocess.run([actool, "validate", str(out)], check=True, capture_output=True)
    rootfs = rootfs_of(out, tmp_path / "rootfs")
    assert (rootfs / "copied").read_text() == "hi\n"
    assert (rootfs / "listing").read_text() == "new\n"
    manifest = ImageManifest.from_json(read_aci(out).manifest_bytes)
    assert manifest.name == "example.com/from-docker"
    assert manifest.app.exec == ["/bin/sh", "-c", "echo hello from busytest"]  # inherited from the image
    bases = list((tmp_path / "cache/oci/bases").glob("*.aci"))
    assert len(bases) == 1 and bases[0].name.startswith(
        ImageManifest.from_json(read_aci(bases[0]).manifest_bytes)
        .annotation("appc.io/docker/manifesthash").split(":")[1][:16])
    # Again: every step from the cache (the tag still names the same manifest).
    again = acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "again.aci", "--progress", "plain",
                    *reg.acbuild_flags(), env=env)
    assert read_aci(tmp_path / "again.aci").image_id == read_aci(out).image_id
    assert "CACHED" in again.stderr or "cached" in again.stderr
    # The tag moves to another image: the FROM misses the cache and the new base is used.
    reg.push(f"oci:{images.layout}:{ARM_TAG}", "busybox:latest")
    moved = acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "moved.aci", *reg.acbuild_flags(), env=env)
    assert moved.stdout.strip() != read_aci(out).image_id
    assert ImageManifest.from_json(read_aci(tmp_path / "moved.aci").manifest_bytes).label("arch") == "aarch64"
    assert len(list((tmp_path / "cache/oci/bases").glob("*.aci"))) == 2
    # A wrong password is a clear error at the FROM line.
    bad = acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "bad.aci", "--ca-file", str(reg.ca.ca),
                  "--creds", "tester:wrong", env=dict(env, ACBUILD_CACHE_DIR=str(tmp_path / "cache2")), check=False)
    assert bad.returncode == 1 and "FROM docker://" in bad.stderr and "refused" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_from_oci_layout_relative_to_the_context(images, tmp_path):
    from tests.conftest import require

    require(os.geteuid() == 0, "RUN needs root namespaces here (CI is root)")
    import shutil

    shutil.copytree(images.layout, tmp_path / "layout", symlinks=True)
    (tmp_path / "ACIfile").write_text("FROM oci:layout:latest\nNAME example.com/from-oci\nRUN test -f /data/hl\n")
    acbuild("build", "-f", tmp_path / "ACIfile", "-o", tmp_path / "out.aci", env=_image_env(tmp_path))
    assert (tmp_path / "out.aci").exists()


# ---------------------------------------------------------------- the squash's bytes are pinned


def _known_layers() -> list[bytes]:
    """Three layers exercising every rule of the squash: implicit parents, long
    (PAX) names and big ids, files across the 1 MiB chunk size, hard links within
    and across layers, a link that keeps its content when its target is replaced,
    whiteouts of a file and a directory, an opaque directory, a directory over a
    directory (its header changes), a file over a directory, a device (dropped)."""
    big = bytes(range(256)) * 5000  # 1.28 MB, not a multiple of 512
    deep = "usr/share/" + "very-long-directory-name/" * 5 + "file.txt"
    base = layer_tar([
        (".", b"", {"type": tarfile.DIRTYPE, "mode": 0o700}),
        ("etc", b"", {"type": tarfile.DIRTYPE}), ("etc/motd", b"hi\n", {}),
        ("etc/doomed", b"bye\n", {}), ("etc/old", b"old\n", {"mtime": 4_000_000_000}),
        ("etc/keep-old", b"", {"type": tarfile.LNKTYPE, "linkname": "etc/old"}),
        ("data/keep/orig", b"orig\n", {}),  # data/ and data/keep/ are implicit
        ("data/gone/f", b"f\n", {}), ("data/big", big, {"uid": 3_000_000, "gid": 3_000_001}),
        ("bin/sh", b"#!fake\n", {"mode": 0o755}), ("bin/ash", b"", {"type": tarfile.SYMTYPE, "linkname": "sh"}),
        (deep, b"deep\n", {}), ("dev/null", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        ("run/fifo", b"", {"type": tarfile.FIFOTYPE}), ("opt", b"", {"type": tarfile.DIRTYPE}),
        ("opt/x", b"x\n", {}),
    ])
    middle = layer_tar([
        ("etc", b"", {"type": tarfile.DIRTYPE, "mode": 0o750}),  # merges, new mode
        ("etc/.wh.doomed", b"", {}), ("data/.wh.gone", b"", {}),
        ("etc/old", b"new\n", {}),  # etc/keep-old keeps "old"
        ("data/hl", b"", {"type": tarfile.LNKTYPE, "linkname": "etc/motd"}),
        ("data/links/a", big[:700], {}), ("data/links/b", b"", {"type": tarfile.LNKTYPE, "linkname": "data/links/a"}),
        ("opt", b"a file now\n", {}),  # a file over a directory
    ])
    top = layer_tar([
        ("data/keep", b"", {"type": tarfile.DIRTYPE}), ("data/keep/.wh..wh..opq", b"", {}),
        ("data/keep/new", b"new\n", {}), ("bin/sh", b"#!replaced\n", {"mode": 0o755}),
    ])
    return [base, middle, top]


# The image IDs `acbuild convert` gave for _known_layers before the one-pass
# squash (commit 4fad00c): a change to the squash must not change a byte.
KNOWN_SQUASHED_ID = ("sha512-f52028caf59aea0a598c54d245203c728810b309881449d90d925314dbe0e717"
                     "13d145e76899916df20df9fe6f750b152ea19bdd1ea0fc9e2a26f97edc8a32a9")
KNOWN_LAYER_IDS = [
    "sha512-a5237b082ad83fc007a223ce293340bb6b82e9e7521d0829ad076f90f6beb0ad961889e678067db5210945d1946794f2"
    "86ac9f0477a1b0de311e4329905fa168",
    "sha512-bb3c9f0fab332bad12ddc39882cda78dacb9f8821cd00847be76489b78293ebc586fd58b95c08fd2bdff2d8684db832a"
    "afb04096812293b9c77e67b8794ad659",
    "sha512-3e711cd7364889ad47cee893e58607e2199a559183277afcbf73e3cce154a637901716b65d2021e6b3ab067d70ce3186"
    "6942adfa5609221717726886648b7659",
]


def test_the_image_id_of_a_known_image_does_not_change(tmp_path):
    make_layout(tmp_path / "layout", _known_layers(), config={"Cmd": ["/bin/sh"]}, gzipped=(1,))
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000500")
    # Relative names: the source as given is an annotation, and tmp_path must not matter.
    done = acbuild("convert", "oci:layout", "-o", "out.aci", env=env, cwd=tmp_path)
    assert done.stdout.strip() == KNOWN_SQUASHED_ID
    acbuild("convert", "--no-squash", "oci:layout", "-o", "split/out.aci", env=env, cwd=tmp_path)
    got = sorted(read_aci(p).image_id for p in (tmp_path / "split").glob("*.aci"))
    assert got == sorted(KNOWN_LAYER_IDS)


def test_a_layer_cannot_escape_through_a_lower_layers_symlink(tmp_path):
    """Each link stays inside on its own (`a/p -> ..` is the root, `q ->
    a/p/../outside` is lexically /outside), but resolved through the lower
    layer's link, q leaves the root: refused, as an .aci holding it would be."""
    lower = layer_tar([("a", b"", {"type": tarfile.DIRTYPE}),
                       ("a/p", b"", {"type": tarfile.SYMTYPE, "linkname": ".."})])
    upper = layer_tar([("q", b"", {"type": tarfile.SYMTYPE, "linkname": "a/p/../outside"})])
    make_layout(tmp_path / "layout", [lower, upper])
    done = acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci", check=False)
    assert done.returncode == 1, done.stderr
    assert "/q: symlink target 'a/p/../outside' escapes rootfs" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.aci").exists()


def test_a_truncated_gzip_layer_is_refused(tmp_path):
    """The layer is gunzipped by a reader thread; its failure is the convert's error."""
    make_layout(tmp_path / "layout", [layer_tar([("f", os.urandom(3 << 20), {})])], gzipped=(0,))
    blob = max((tmp_path / "layout/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:-100])
    done = acbuild("convert", f"oci:{tmp_path / 'layout'}", "-o", tmp_path / "out.aci", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "layer" in done.stderr and not (tmp_path / "out.aci").exists()
