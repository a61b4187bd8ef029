"""The ImageManifest model: Go-compatible decoding, validation messages, and
canonical bytes compared with what actool itself writes."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

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
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        root = tarfile.TarInfo("rootfs")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        info = tarfile.TarInfo("manifest")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))


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
