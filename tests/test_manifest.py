"""The ImageManifest model: Go-compatible decoding, validation messages, and
canonical bytes compared with what actool itself writes."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from imagetools import hand_made_aci

from acbuild.aci import types as t
from acbuild.aci.manifest import (
    STRICTER,
    App,
    Dependency,
    ImageManifest,
    Isolator,
    Label,
    MountPoint,
    Port,
)
from acbuild.aci.pod import PodManifest
from acbuild.errors import ManifestError

BASE = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/app"}


def full_manifest() -> ImageManifest:
    return ImageManifest(
        name="example.com/app",
        labels=[Label("version", "1.0"), Label("os", "linux"), Label("arch", "amd64")],
        app=App(
            exec=["/bin/app", "<&>"],
            user="1000",
            group="1000",
            supplementary_gids=[10, 20],
            working_directory="/srv",
            isolators=[Isolator("resource/memory", {"limit": "1Gi", "request": "512Mi"})],
            mount_points=[MountPoint("data", "/data", read_only=True), MountPoint("tmp", "/tmp")],
            ports=[Port("http", "tcp", 8080)],
            user_annotations={"z": "1", "a": "2"},
            user_labels={"tier": "web"},
        ),
        dependencies=[Dependency("example.com/base", "sha512-" + "0" * 128, [Label("version", "2")], 4096)],
        path_whitelist=["/bin/app"],
    )


def test_round_trip_and_canonical_bytes():
    m = full_manifest()
    m.app.set_env("PATH", "/bin")
    m.set_annotation("homepage", "https://example.com/?a=1&b=<2>")
    data = m.to_json()
    assert ImageManifest.from_json(data) == m
    assert ImageManifest.from_json(data).to_json() == data
    assert b"\\u003c\\u0026\\u003e" in data and b"<" not in data and b"&" not in data
    assert b" " not in data.replace(b"example.com", b"")  # compact
    assert data.startswith(b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/app","labels":')
    keys = list(json.loads(data))
    assert keys == ["acKind", "acVersion", "name", "labels", "app", "annotations", "dependencies", "pathWhitelist"]
    app_keys = list(json.loads(data)["app"])
    assert app_keys == ["exec", "user", "group", "supplementaryGIDs", "workingDirectory", "environment",
                        "mountPoints", "ports", "isolators", "userAnnotations", "userLabels"]
    port = json.loads(data)["app"]["ports"][0]
    assert port == {"name": "http", "protocol": "tcp", "port": 8080, "count": 1, "socketActivated": False}
    assert list(json.loads(data)["app"]["userAnnotations"]) == ["a", "z"]  # Go sorts map keys
    assert m.problems() == []


def test_empty_optional_fields_are_omitted():
    assert ImageManifest("example.com/x").to_json() == b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/x"}'
    m = ImageManifest("example.com/x")
    m.ensure_app()
    assert m.to_dict()["app"] == {"exec": None, "user": "0", "group": "0"}


def test_go_json_quirks():
    m = ImageManifest.from_json(
        '{"ACKIND":"ImageManifest","acversion":"0.8.11","Name":"first","name":"a.b/c","unknown":1,'
        '"app":{"User":"u","group":"g","supplementaryGids":[1,-2],"ports":[{"name":"p","protocol":"tcp","port":1,"count":0}],'
        '"exec":null},"labels":null}'
    )
    assert (m.ac_kind, m.ac_version, m.name) == ("ImageManifest", "0.8.11", "a.b/c")
    assert m.app.user == "u" and m.app.supplementary_gids == [1, -2]
    assert m.app.ports[0].count == 1  # count 0 reads as 1
    assert m.app.exec == [] and m.labels == []


@pytest.mark.parametrize("doc,message", [
    ('{"acKind":', "not valid JSON"),
    ("[]", "must be a JSON object"),
    ({**BASE, "app": {"exec": "/bin/sh", "user": "0", "group": "0"}}, "app.exec must be a list"),
    ({**BASE, "app": {"user": 0, "group": "0"}}, "app.user must be a string"),
    ({**BASE, "app": {"user": "0", "group": "0", "ports": [{"name": "p", "port": 8.5}]}}, "non-negative integer"),
    ({**BASE, "labels": {"os": "linux"}}, "labels must be a list"),
    ({**BASE, "acKind": "Other"}, "bad ACKind: Other"),
    ({"name": "x"}, "missing or bad ACKind"),
])
def test_decode_errors(doc, message):
    with pytest.raises(ManifestError) as err:
        ImageManifest.from_json(doc if isinstance(doc, str) else json.dumps(doc))
    assert message in str(err.value)


@pytest.mark.parametrize("over,problem", [
    ({"name": "Example.com"}, 'must contain only lower case alphanumeric characters plus "-._~/"'),
    ({"acVersion": "0.0.0"}, "SemVer cannot be zero"),
    ({"labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "arm64"}]}, 'bad arch "arm64" for linux'),
    ({"labels": [{"name": "name", "value": "x"}]}, 'invalid label name: "name"'),
    ({"app": {"user": "0", "group": "0", "isolators": [{"name": "os/linux/cpu-shares", "value": 1}]}},
     "os/linux/cpu-shares must be between 2 and 262144, got 1"),
    ({"app": {"user": "0", "group": "0", "isolators": [{"name": "os/unix/sysctl", "value": {}},
                                                        {"name": "os/unix/sysctl", "value": {}}]}},
     'isolators set contains too many instances of type os/unix/sysctl"'),
    ({"annotations": [{"name": "documentation", "value": "://x"}]}, "missing protocol scheme"),
])
def test_actool_problems(over, problem):
    problems = ImageManifest.from_json({**BASE, **over}).problems(strict=False)
    assert any(problem in p for p in problems), problems


def test_strict_checks_are_marked_and_listed():
    m = ImageManifest.from_json({**BASE, "name": "a//b", "pathWhitelist": ["rel"],
                                 "dependencies": [{"imageName": "x", "imageID": "sha512-abc"}]})
    assert m.problems(strict=False) == []
    strict = m.problems()
    assert len(strict) == 3 and all(p.endswith(t.STRICT_SUFFIX) for p in strict)
    assert len(STRICTER) >= 5


def test_validate_raises_with_every_problem():
    m = ImageManifest("", ac_version="x")
    with pytest.raises(ManifestError) as err:
        m.validate()
    assert err.value.problems == ["acVersion: SemVer is bad", "name must be set"]


def test_editing_helpers():
    m = ImageManifest("example.com/x")
    m.set_label("version", "1")
    m.set_label("version", "2")
    assert m.label("version") == "2" and len(m.labels) == 1
    assert m.remove_label("version") and not m.remove_label("version")
    assert m.annotation("a") is None
    app = m.ensure_app()
    assert app is m.ensure_app() and (app.user, app.group) == ("0", "0")
    app.set_port(Port("http", "tcp", 80))
    app.set_port(Port("http", "tcp", 81))
    assert [p.port for p in app.ports] == [81]
    assert app.remove_port("http") and not app.remove_port("http")
    app.set_mount_point(MountPoint("d", "/d"))
    assert app.remove_mount_point("d") and not app.remove_mount_point("d")
    app.set_env("A", "1")
    assert app.env("A") == "1" and app.remove_env("A") and not app.remove_env("A")
    app.set_isolator(Isolator("resource/cpu", {"limit": "1"}))
    assert app.remove_isolator("resource/cpu") and not app.remove_isolator("resource/cpu")
    m.set_dependency(Dependency("example.com/base"))
    m.set_dependency(Dependency("example.com/base", size=5))
    assert [d.size for d in m.dependencies] == [5]
    assert m.remove_dependency("example.com/base") and not m.remove_dependency("example.com/base")


@pytest.mark.parametrize("value,problem", [
    ("1", None), ("250m", None), ("1Gi", None), ("1e3", None), ("-1", None), ("1.5", None),
    ("1K", "unable to parse quantity's suffix"), ("1Mii", "unable to parse"), ("1.2.3", "regular expression"), ("abc", "regular expression"), ("", "regular expression"),
])
def test_quantities(value, problem):
    got = t.quantity_problem(value)
    assert (got is None) if problem is None else (problem in got)


def test_value_types():
    assert t.semver_problem("01.0.0") is None  # actool accepts leading zeros
    assert t.semver_problem("1.0.0-rc.1+meta") is None
    assert t.semver_problem("1.0") == "SemVer is bad"
    assert t.acname_problem("http-alt") is None and "ACName" in t.acname_problem("http.alt")
    assert t.env_name_problem("my.var-1") is None
    assert t.date_problem("2020-01-01T00:00:00.5+02:00") is None
    assert t.date_problem("2020-13-01T00:00:00Z") is not None
    assert t.image_id_problem("sha512-" + "a" * 128) is None
    assert t.image_id_problem("sha512-AB", strict=False) is None
    assert "128 lowercase hex" in t.image_id_problem("sha512-AB")
    os_, arch = t.host_os_arch()
    assert t.os_arch_problem(os_, arch) is None


def test_pod_manifest():
    pod = PodManifest.from_json({"acKind": "PodManifest", "acVersion": "0.8.11",
                                 "apps": [{"name": "web", "image": {"id": "sha512-" + "a" * 128},
                                           "app": {"user": "", "group": "0"}}],
                                 "volumes": [{"name": "v", "kind": "empty", "mode": "0700"}]})
    assert pod.problems() == ["apps[0].app: user is required"]


def _aci_with(manifest: bytes, path: Path) -> None:
    hand_made_aci(path, manifest, compress=False)


def test_bytes_identical_to_actool(tmp_path: Path, actool: str):
    """actool re-serialises a manifest when it patches one; ours must be the same bytes."""
    src = full_manifest()
    src.app.event_handlers = []
    src.set_annotation("authors", "A <a@example.com> & co")
    messy = json.dumps(json.loads(src.to_json()), indent=2, sort_keys=True).encode()  # other order and spacing
    _aci_with(messy, tmp_path / "in.aci")
    subprocess.run([actool, "patch-manifest", "--user", "1000", str(tmp_path / "in.aci"), str(tmp_path / "out.aci")],
                   check=True, capture_output=True)
    go = subprocess.run([actool, "cat-manifest", str(tmp_path / "out.aci")], check=True, capture_output=True).stdout
    assert ImageManifest.from_json(messy).to_json() == go.rstrip(b"\n")
    pretty = subprocess.run([actool, "cat-manifest", "--pretty-print", str(tmp_path / "out.aci")],
                            check=True, capture_output=True).stdout
    assert ImageManifest.from_json(messy).to_json(pretty=True) == pretty.rstrip(b"\n")


# ---------------------------------------------------------------- cat-manifest / patch-manifest (CLI)

import sys  # noqa: E402

from conftest import REPO  # noqa: E402


def acbuild(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acbuild", *args], capture_output=True, timeout=120, cwd=REPO)


def _sample_aci(path: Path, manifest: dict | None = None) -> bytes:
    m = manifest or {**BASE, "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
                     "app": {"exec": ["/bin/app"], "user": "0", "group": "0"}}
    data = json.dumps(m, indent=1).encode()  # not canonical on purpose: cat-manifest must keep it as stored
    with tarfile.open(path, "w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("rootfs", "rootfs/bin"):
            d = tarfile.TarInfo(name)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        f = tarfile.TarInfo("rootfs/bin/app")
        f.size, f.mode = 3, 0o755
        tar.addfile(f, io.BytesIO(b"hi\n"))
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return data


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(m.name for m in tar if m.name != "manifest")


def test_cat_manifest_as_stored_and_pretty(tmp_path: Path, actool: str):
    aci = tmp_path / "app.aci"
    stored = _sample_aci(aci)
    res = acbuild("cat-manifest", str(aci))
    assert res.returncode == 0 and res.stdout == stored + b"\n"
    pretty = acbuild("cat-manifest", "--pretty", str(aci)).stdout
    go = subprocess.run([actool, "cat-manifest", "--pretty-print", str(aci)], capture_output=True, check=True).stdout
    assert pretty == go
    layout = tmp_path / "layout"
    (layout / "rootfs").mkdir(parents=True)
    (layout / "manifest").write_bytes(stored)
    assert acbuild("cat-manifest", str(layout)).stdout == stored + b"\n"
    missing = acbuild("cat-manifest", str(tmp_path / "nope.aci"))
    assert missing.returncode == 2 and b"Traceback" not in missing.stderr


def test_patch_manifest_edits_and_keeps_rootfs(tmp_path: Path, actool: str):
    src, out = tmp_path / "in.aci", tmp_path / "out.aci"
    _sample_aci(src)
    res = acbuild("patch-manifest", "--name", "example.com/patched", "--exec", "/bin/app --greeting 'hello world'",
                  "--user", "1000", "--group", "1000", "--supplementary-gids", "10,20",
                  "--capability", "CAP_NET_BIND_SERVICE,CAP_CHOWN", "--mounts", "data,path=/data,readOnly=true",
                  "--ports", "http,protocol=tcp,port=8080:dns,protocol=udp,port=53,count=2",
                  "--isolators", "resource/memory,limit=1Gi", "--seccomp-mode", "retain,errno=EPERM",
                  "--seccomp-set", "read,write", str(src), str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().startswith("sha512-")
    assert subprocess.run([actool, "validate", str(out)], capture_output=True).returncode == 0
    m = ImageManifest.from_json(acbuild("cat-manifest", str(out)).stdout)
    assert m.name == "example.com/patched"
    assert m.app.exec == ["/bin/app", "--greeting", "hello world"]
    assert (m.app.user, m.app.group, m.app.supplementary_gids) == ("1000", "1000", [10, 20])
    assert [(p.name, p.port, p.count) for p in m.app.ports] == [("http", 8080, 1), ("dns", 53, 2)]
    assert m.app.mount_points == [MountPoint("data", "/data", True)]
    isolators = {i.name: i.value for i in m.app.isolators}
    assert isolators["os/linux/capabilities-retain-set"] == {"set": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]}
    assert isolators["resource/memory"] == {"limit": "1Gi"}
    assert isolators["os/linux/seccomp-retain-set"] == {"set": ["read", "write"], "errno": "EPERM"}
    assert _names(out) == _names(src)
    # The same port again replaces it rather than adding a duplicate.
    again = acbuild("patch-manifest", "--ports", "http,protocol=tcp,port=9090", "--replace", str(out))
    assert again.returncode == 0, again.stderr
    m2 = ImageManifest.from_json(acbuild("cat-manifest", str(out)).stdout)
    assert [(p.name, p.port) for p in m2.app.ports] == [("http", 9090), ("dns", 53)]


@pytest.mark.parametrize("args,message,code", [
    (["--capability", "CAP_CHOWN", "--revoke-capability", "CAP_KILL"], b"cannot be used together", 3),
    (["--name", "Not Valid"], b"nothing written", 1),
    (["--ports", "http,protocol=tcp,port=70000"], b"1-65535", 1),
    (["--isolators", "os/linux/cpu-shares,value=5"], b"not supported for patching", 3),
    (["--manifest", "m.json", "--ports", "p,port=1"], b"cannot be combined", 3),
    (["--mounts", "data,path"], b"key=value", 3),
])
def test_patch_manifest_refuses_and_writes_nothing(tmp_path: Path, args, message, code):
    src = tmp_path / "in.aci"
    _sample_aci(src)
    before = src.read_bytes()
    res = acbuild("patch-manifest", *args, "--replace", str(src))
    assert res.returncode == code, res.stderr
    assert message in res.stderr and b"Traceback" not in res.stderr
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.aci"]  # no temp file left


def test_patch_manifest_output_rules(tmp_path: Path):
    src, out = tmp_path / "in.aci", tmp_path / "out.aci"
    _sample_aci(src)
    out.write_bytes(b"keep")
    assert acbuild("patch-manifest", "--user", "1", str(src), str(out)).returncode == 1  # an existing output: the one OutputExistsError, as pack and write
    assert out.read_bytes() == b"keep"
    assert acbuild("patch-manifest", "--user", "1", str(src), str(tmp_path / "out.tar")).returncode == 3
    assert acbuild("patch-manifest", "--user", "1", "--overwrite", str(src), str(out)).returncode == 0
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**BASE, "name": "example.com/other"}))
    assert acbuild("patch-manifest", "--manifest", str(new), "--no-compression", "--replace", str(src)).returncode == 0
    assert src.read_bytes()[257:262] == b"ustar"  # uncompressed now
    assert json.loads(acbuild("cat-manifest", str(src)).stdout)["name"] == "example.com/other"
