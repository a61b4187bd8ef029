"""The appc PodManifest (digest section 8), modelled for validation only:
acbuild does not run pods, but `acbuild validate` checks pod manifests the way
actool 0.8.11 does (plus the stricter checks listed in STRICTER)."""

from __future__ import annotations

from typing import Any

from acbuild.aci import manifest as im
from acbuild.aci import types as t
from acbuild.aci.types import bool_, field_of, int_, list_, loads, str_, strmap
from acbuild.errors import ManifestError
from acbuild.records import dataclass, field

STRICTER: dict[str, str] = {
    "pod-ac-version": "a pod manifest must have an acVersion",
    "pod-app-name": "every pod app needs a name",
}
S = t.STRICT_SUFFIX


@dataclass
class RuntimeImage:
    id: str | None = None  # None: not given (allowed); "" is given, and invalid
    name: str | None = None
    labels: list[im.Label] = field(default_factory=list)


@dataclass
class Mount:
    volume: str
    path: str


@dataclass
class RuntimeApp:
    name: str
    image: RuntimeImage = field(default_factory=RuntimeImage)
    app: im.App | None = None
    read_only_rootfs: bool = False
    mounts: list[Mount] = field(default_factory=list)
    annotations: list[im.Annotation] = field(default_factory=list)


@dataclass
class Volume:
    name: str
    kind: str
    source: str = ""
    read_only: bool | None = None
    recursive: bool | None = None
    mode: str | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass
class ExposedPort:
    name: str
    host_port: int
    host_ip: str = ""
    pod_port: int | None = None


@dataclass
class PodManifest:
    ac_kind: str = "PodManifest"
    ac_version: str = im.AC_VERSION
    apps: list[RuntimeApp] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    isolators: list[im.Isolator] = field(default_factory=list)
    annotations: list[im.Annotation] = field(default_factory=list)
    ports: list[ExposedPort] = field(default_factory=list)
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> PodManifest:
        obj = loads(data, "pod manifest")
        if not isinstance(obj, dict):
            raise ManifestError("pod manifest must be a JSON object")
        f = lambda key: field_of(obj, key)  # noqa: E731
        kind = str_(f("acKind"), "acKind")
        if kind not in ("ImageManifest", "PodManifest"):
            raise ManifestError(f"bad ACKind: {kind}" if kind else 'missing or bad ACKind (must be "PodManifest")')
        return cls(
            ac_kind=kind,
            ac_version=str_(f("acVersion"), "acVersion"),
            apps=[_decode_app(a, f"apps[{i}]") for i, a in enumerate(list_(f("apps"), "apps"))],
            volumes=[_decode_volume(v, f"volumes[{i}]") for i, v in enumerate(list_(f("volumes"), "volumes"))],
            isolators=im.decode_isolators(f("isolators"), "isolators"),
            annotations=[im.Annotation(n, v) for n, v in im.decode_pairs(f("annotations"), "annotations")],
            ports=[_decode_port(p, f"ports[{i}]") for i, p in enumerate(list_(f("ports"), "ports"))],
            user_annotations=strmap(f("userAnnotations"), "userAnnotations"),
            user_labels=strmap(f("userLabels"), "userLabels"),
        )

    def problems(self, strict: bool = True) -> list[str]:
        out: list[str] = []
        if self.ac_kind != "PodManifest":
            out.append('missing or bad ACKind (must be "PodManifest")')
        if self.ac_version:
            if p := t.semver_problem(self.ac_version):
                out.append(f"acVersion: {p}")
        elif strict:
            out.append("acVersion must be set" + S)
        names: set[str] = set()
        for i, app in enumerate(self.apps):
            where = f"apps[{i}]"
            if p := t.acname_problem(app.name):
                out.append(f"{where}.name: {p}")
            if app.name in names:
                out.append(f'duplicate apps of name "{app.name}"')
            names.add(app.name)
            if app.image.id is not None and (p := t.image_id_problem(app.image.id, strict)):
                out.append(f"{where}.image.id: {p}")
            if app.image.name is not None and (p := t.acidentifier_problem(app.image.name, strict)):
                out.append(f"{where}.image.name: {p}")
            out += im.labels_problems(app.image.labels, f"{where}.image.labels", strict)
            if app.app is not None:
                out += im.app_problems(app.app, f"{where}.app", strict)
            for m in app.mounts:
                if p := t.acname_problem(m.volume):
                    out.append(f"{where}.mounts: {p}")
            out += im.annotations_problems(app.annotations, f"{where}.annotations", strict)
        volumes: set[str] = set()
        for v in self.volumes:
            if p := t.acname_problem(v.name):
                out.append(f"volumes: {p}")
            if v.name in volumes:
                out.append(f'duplicate volume name "{v.name}"')
            volumes.add(v.name)
            if v.kind == "host":
                if not v.source:
                    out.append("source for host volume cannot be empty")
                elif not v.source.startswith("/"):
                    out.append("source for host volume must be absolute path")
            elif v.kind == "empty":
                if v.source:
                    out.append(f'volumes: "{v.name}": source for empty volume must be empty')
            else:
                out.append('unrecognized volume kind: should be one of "empty", "host"')
        # actool accepts unknown isolators at pod level; known ones get their value checks.
        for iso in self.isolators:
            if iso.name in t.KNOWN_ISOLATORS and (p := t.isolator_problem(iso.name, iso.value, strict)):
                out.append(f"isolators: {iso.name}: {p}")
        for p_ in self.ports:
            if p := t.acname_problem(p_.name):
                out.append(f"ports: {p}")
        out += im.annotations_problems(self.annotations, "annotations", strict)
        return out

    def validate(self, strict: bool = True) -> None:
        problems = self.problems(strict)
        if problems:
            raise ManifestError(f"invalid pod manifest: {'; '.join(problems)}", problems)


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a JSON object")
    return value


def _decode_app(value: Any, where: str) -> RuntimeApp:
    obj = _obj(value, where)
    image = _obj(field_of(obj, "image") or {}, f"{where}.image")
    app = field_of(obj, "app")
    return RuntimeApp(
        name=str_(field_of(obj, "name"), f"{where}.name"),
        image=RuntimeImage(
            id=None if field_of(image, "id") is None else str_(field_of(image, "id"), f"{where}.image.id"),
            name=None if field_of(image, "name") is None else str_(field_of(image, "name"), f"{where}.image.name"),
            labels=im.decode_labels(field_of(image, "labels"), f"{where}.image.labels"),
        ),
        app=None if app is None else im.decode_app(app, f"{where}.app"),
        read_only_rootfs=bool_(field_of(obj, "readOnlyRootFS"), f"{where}.readOnlyRootFS"),
        mounts=[
            Mount(str_(field_of(_obj(m, f"{where}.mounts[{i}]"), "volume"), f"{where}.mounts[{i}].volume"),
                  str_(field_of(m, "path"), f"{where}.mounts[{i}].path"))
            for i, m in enumerate(list_(field_of(obj, "mounts"), f"{where}.mounts"))
        ],
        annotations=[im.Annotation(n, v) for n, v in im.decode_pairs(field_of(obj, "annotations"), f"{where}.annotations")],
    )


def _opt(value: Any, conv, where: str):
    return None if value is None else conv(value, where)


def _decode_volume(value: Any, where: str) -> Volume:
    obj = _obj(value, where)
    f = lambda key: field_of(obj, key)  # noqa: E731
    return Volume(
        name=str_(f("name"), f"{where}.name"),
        kind=str_(f("kind"), f"{where}.kind"),
        source=str_(f("source"), f"{where}.source"),
        read_only=_opt(f("readOnly"), bool_, f"{where}.readOnly"),
        recursive=_opt(f("recursive"), bool_, f"{where}.recursive"),
        mode=_opt(f("mode"), str_, f"{where}.mode"),
        uid=_opt(f("uid"), int_, f"{where}.uid"),
        gid=_opt(f("gid"), int_, f"{where}.gid"),
    )


def _decode_port(value: Any, where: str) -> ExposedPort:
    obj = _obj(value, where)
    pod_port = field_of(obj, "podPort")
    return ExposedPort(
        name=str_(field_of(obj, "name"), f"{where}.name"),
        host_port=int_(field_of(obj, "hostPort"), f"{where}.hostPort", unsigned=True),
        host_ip=str_(field_of(obj, "hostIP"), f"{where}.hostIP"),
        pod_port=None if pod_port is None else _decode_pod_port(pod_port, f"{where}.podPort"),
    )


def _decode_pod_port(value: Any, where: str) -> int:
    obj = _obj(value, where)
    return int_(field_of(obj, "port"), f"{where}.port", unsigned=True)
