"""The appc ImageManifest (digest section 3): a mutable model, Go-compatible JSON
decoding, actool 0.8.11's validation plus acbuild's stricter checks, and the
canonical bytes that actool itself would write.

Decoding follows Go's encoding/json, because images in the wild were written and
read by Go: keys match case-insensitively, unknown keys are ignored, the last
duplicate wins, null means "absent", and a value of the wrong JSON type is an error.
"""

from __future__ import annotations

from typing import Any

from acbuild.aci import types as t
from acbuild.aci.types import bool_, canonical_json, field_of, int_, list_, loads, str_, strmap
from acbuild.errors import ManifestError
from acbuild.records import dataclass, field

AC_VERSION = "0.8.11"

# Every check acbuild makes that actool 0.8.11 does not (the README lists these).
STRICTER: dict[str, str] = {
    "name-runs": "names follow the documented ACIdentifier regex, so runs like `//` or `._` are refused",
    "image-id-hex": "image IDs must be sha512- followed by 128 lowercase hex digits",
    "path-whitelist-absolute": "pathWhitelist entries must be absolute paths",
    "port-protocol": "a port needs a protocol: tcp, udp or sctp",
    "port-unique": "port names must be unique",
    "mount-point": "mountPoint names must be unique and paths absolute",
    "capabilities-retain-remove": "a capabilities retain-set and remove-set cannot be used together",
}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
S = t.STRICT_SUFFIX


@dataclass
class Label:
    """An image label: a name and its value."""

    name: str
    value: str


@dataclass
class Annotation:
    """An annotation: a name and its value."""

    name: str
    value: str


@dataclass
class EnvVar:
    """One of the app's environment variables."""

    name: str
    value: str


@dataclass
class EventHandler:
    """An event handler: pre-start or post-stop, and the command it runs."""

    name: str
    exec: list[str] = field(default_factory=list)


@dataclass
class MountPoint:
    """A mount point: the name a pod binds a volume to, and its path."""

    name: str
    path: str
    read_only: bool = False


@dataclass
class Port:
    """A port the app exposes."""

    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False


@dataclass
class Isolator:
    """An isolator: a name and its value (any JSON)."""

    name: str
    value: Any


@dataclass
class App:
    """The app section: what runs, as whom, with what environment."""

    exec: list[str] = field(default_factory=list)
    user: str = "0"
    group: str = "0"
    supplementary_gids: list[int] = field(default_factory=list)
    event_handlers: list[EventHandler] = field(default_factory=list)
    working_directory: str = ""
    environment: list[EnvVar] = field(default_factory=list)
    isolators: list[Isolator] = field(default_factory=list)
    mount_points: list[MountPoint] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    # -- editing helpers for the build engine --
    def env(self, name: str) -> str | None:
        return next((e.value for e in self.environment if e.name == name), None)

    def set_env(self, name: str, value: str) -> None:
        _set_named(self.environment, EnvVar, name, value)

    def remove_env(self, name: str) -> bool:
        return _remove_named(self.environment, name)

    def set_port(self, port: Port) -> None:
        _replace_named(self.ports, port)

    def remove_port(self, name: str) -> bool:
        return _remove_named(self.ports, name)

    def set_mount_point(self, mount: MountPoint) -> None:
        _replace_named(self.mount_points, mount)

    def remove_mount_point(self, name: str) -> bool:
        return _remove_named(self.mount_points, name)

    def set_isolator(self, isolator: Isolator) -> None:
        """Replace every isolator of that name by this one."""
        self.isolators[:] = [i for i in self.isolators if i.name != isolator.name] + [isolator]

    def remove_isolator(self, name: str) -> bool:
        return _remove_named(self.isolators, name)

    def set_event_handler(self, name: str, exec: list[str]) -> None:
        _replace_named(self.event_handlers, EventHandler(name, list(exec)))

    def remove_event_handler(self, name: str) -> bool:
        return _remove_named(self.event_handlers, name)


@dataclass
class Dependency:
    """An image this one is rendered on: by name, optionally ID, labels and size."""

    image_name: str
    image_id: str = ""
    labels: list[Label] = field(default_factory=list)
    size: int = 0


@dataclass
class ImageManifest:
    """The image manifest (appc schema, written as actool writes it)."""

    name: str
    ac_kind: str = "ImageManifest"
    ac_version: str = AC_VERSION
    labels: list[Label] = field(default_factory=list)
    app: App | None = None
    annotations: list[Annotation] = field(default_factory=list)
    dependencies: list[Dependency] = field(default_factory=list)
    path_whitelist: list[str] = field(default_factory=list)

    # -- JSON --
    @classmethod
    def from_json(cls, data: bytes | str | dict) -> ImageManifest:
        """Decode like Go's encoding/json; ManifestError on bad JSON or types."""
        obj = loads(data, "image manifest")
        if not isinstance(obj, dict):
            raise ManifestError("image manifest must be a JSON object")
        kind = str_(field_of(obj, "acKind"), "acKind")
        if kind not in ("ImageManifest", "PodManifest"):
            raise ManifestError(f"bad ACKind: {kind}" if kind else 'missing or bad ACKind (must be "ImageManifest")')
        app = field_of(obj, "app")
        return cls(
            ac_kind=kind,
            ac_version=str_(field_of(obj, "acVersion"), "acVersion"),
            name=str_(field_of(obj, "name"), "name"),
            labels=decode_labels(field_of(obj, "labels"), "labels"),
            app=None if app is None else decode_app(app, "app"),
            annotations=[Annotation(n, v) for n, v in decode_pairs(field_of(obj, "annotations"), "annotations")],
            dependencies=[_decode_dep(d, f"dependencies[{i}]") for i, d in
                          enumerate(list_(field_of(obj, "dependencies"), "dependencies"))],
            path_whitelist=[str_(p, "pathWhitelist[]") for p in list_(field_of(obj, "pathWhitelist"), "pathWhitelist")],
        )

    def to_dict(self) -> dict[str, Any]:
        """Go's field order and omitempty rules, as actool writes them."""
        d: dict[str, Any] = {"acKind": self.ac_kind, "acVersion": self.ac_version, "name": self.name}
        if self.labels:
            d["labels"] = encode_pairs(self.labels)
        if self.app is not None:
            d["app"] = encode_app(self.app)
        if self.annotations:
            d["annotations"] = encode_pairs(self.annotations)
        if self.dependencies:
            d["dependencies"] = [_encode_dep(dep) for dep in self.dependencies]
        if self.path_whitelist:
            d["pathWhitelist"] = list(self.path_whitelist)
        return d

    def to_json(self, pretty: bool = False) -> bytes:
        """Canonical bytes: compact, Go field order, `<>&` escaped (pretty: 4-space indent)."""
        return canonical_json(self.to_dict(), pretty)

    # -- validation --
    def problems(self, strict: bool = True) -> list[str]:
        """Every problem actool 0.8.11 finds (it stops at the first), plus with
        strict=True acbuild's own stricter checks (STRICTER)."""
        out: list[str] = []
        if self.ac_kind != "ImageManifest":
            out.append('missing or bad ACKind (must be "ImageManifest")')
        if not self.ac_version:
            out.append("acVersion must be set")
        elif p := t.semver_problem(self.ac_version):
            out.append(f"acVersion: {p}")
        if not self.name:
            out.append("name must be set")
        elif p := t.acidentifier_problem(self.name, strict):
            out.append(f"name: {p}")
        out += labels_problems(self.labels, "labels", strict)
        if self.app is not None:
            out += app_problems(self.app, "app", strict)
        out += annotations_problems(self.annotations, "annotations", strict)
        for i, dep in enumerate(self.dependencies):
            where = f"dependencies[{i}]"
            if p := t.acidentifier_problem(dep.image_name, strict):
                out.append(f"{where}.imageName: {p}")
            if dep.image_id and (p := t.image_id_problem(dep.image_id, strict)):
                out.append(f"{where}.imageID: {p}")
            out += labels_problems(dep.labels, f"{where}.labels", strict)
        if strict:
            for path in self.path_whitelist:
                if p := t.absolute_path_problem(path, "a pathWhitelist entry"):
                    out.append(f"pathWhitelist: {p}" + S)
        return out

    def validate(self, strict: bool = True) -> None:
        problems = self.problems(strict)
        if problems:
            raise ManifestError(f"invalid image manifest: {'; '.join(problems)}", problems)

    # -- editing helpers for the build engine --
    def label(self, name: str) -> str | None:
        return next((x.value for x in self.labels if x.name == name), None)

    def set_label(self, name: str, value: str) -> None:
        _set_named(self.labels, Label, name, value)

    def remove_label(self, name: str) -> bool:
        return _remove_named(self.labels, name)

    def annotation(self, name: str) -> str | None:
        return next((x.value for x in self.annotations if x.name == name), None)

    def set_annotation(self, name: str, value: str) -> None:
        _set_named(self.annotations, Annotation, name, value)

    def remove_annotation(self, name: str) -> bool:
        return _remove_named(self.annotations, name)

    def ensure_app(self) -> App:
        if self.app is None:
            self.app = App(user="0", group="0")
        return self.app

    def set_dependency(self, dep: Dependency) -> None:
        """Replace the dependency of that image name in place, or append it."""
        for i, old in enumerate(self.dependencies):
            if old.image_name == dep.image_name:
                self.dependencies[i] = dep
                return
        self.dependencies.append(dep)

    def remove_dependency(self, image_name: str) -> bool:
        before = len(self.dependencies)
        self.dependencies[:] = [d for d in self.dependencies if d.image_name != image_name]
        return len(self.dependencies) != before


# ---------------------------------------------------------------- helpers


def _set_named(items: list, cls: type, name: str, value: str) -> None:
    for item in items:
        if item.name == name:
            item.value = value
            return
    items.append(cls(name, value))


def _replace_named(items: list, new: Any) -> None:
    for i, item in enumerate(items):
        if item.name == new.name:
            items[i] = new
            return
    items.append(new)


def _remove_named(items: list, name: str) -> bool:
    before = len(items)
    items[:] = [x for x in items if x.name != name]
    return len(items) != before


# ---------------------------------------------------------------- decoding


def decode_pairs(value: Any, where: str) -> list[tuple[str, str]]:
    """A list of {name, value} objects (labels, annotations, environment)."""
    out = []
    for i, item in enumerate(list_(value, where)):
        obj = _obj(item, f"{where}[{i}]")
        out.append((str_(field_of(obj, "name"), f"{where}[{i}].name"),
                    str_(field_of(obj, "value"), f"{where}[{i}].value")))
    return out


def decode_labels(value: Any, where: str) -> list[Label]:
    return [Label(n, v) for n, v in decode_pairs(value, where)]


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a JSON object")
    return value


def _strlist(value: Any, where: str) -> list[str]:
    return [str_(s, f"{where}[{i}]") for i, s in enumerate(list_(value, where))]


def decode_isolators(value: Any, where: str) -> list[Isolator]:
    out = []
    for i, item in enumerate(list_(value, where)):
        obj = _obj(item, f"{where}[{i}]")
        out.append(Isolator(str_(field_of(obj, "name"), f"{where}[{i}].name"), field_of(obj, "value")))
    return out


def decode_app(value: Any, where: str) -> App:
    obj = _obj(value, where)
    f = lambda key: field_of(obj, key)  # noqa: E731
    ports = []
    for i, p in enumerate(list_(f("ports"), f"{where}.ports")):
        pw = f"{where}.ports[{i}]"
        po = _obj(p, pw)
        count = int_(field_of(po, "count"), f"{pw}.count", unsigned=True)
        ports.append(Port(
            name=str_(field_of(po, "name"), f"{pw}.name"),
            protocol=str_(field_of(po, "protocol"), f"{pw}.protocol"),
            port=int_(field_of(po, "port"), f"{pw}.port", unsigned=True),
            count=count or 1,  # appc reads a missing or zero count as 1
            socket_activated=bool_(field_of(po, "socketActivated"), f"{pw}.socketActivated"),
        ))
    mounts = []
    for i, m in enumerate(list_(f("mountPoints"), f"{where}.mountPoints")):
        mw = f"{where}.mountPoints[{i}]"
        mo = _obj(m, mw)
        mounts.append(MountPoint(str_(field_of(mo, "name"), f"{mw}.name"), str_(field_of(mo, "path"), f"{mw}.path"),
                                 bool_(field_of(mo, "readOnly"), f"{mw}.readOnly")))
    handlers = []
    for i, h in enumerate(list_(f("eventHandlers"), f"{where}.eventHandlers")):
        hw = f"{where}.eventHandlers[{i}]"
        ho = _obj(h, hw)
        handlers.append(EventHandler(str_(field_of(ho, "name"), f"{hw}.name"), _strlist(field_of(ho, "exec"), f"{hw}.exec")))
    return App(
        exec=_strlist(f("exec"), f"{where}.exec"),
        user=str_(f("user"), f"{where}.user"),
        group=str_(f("group"), f"{where}.group"),
        supplementary_gids=[int_(g, f"{where}.supplementaryGIDs[{i}]")
                            for i, g in enumerate(list_(f("supplementaryGIDs"), f"{where}.supplementaryGIDs"))],
        event_handlers=handlers,
        working_directory=str_(f("workingDirectory"), f"{where}.workingDirectory"),
        environment=[EnvVar(n, v) for n, v in decode_pairs(f("environment"), f"{where}.environment")],
        isolators=decode_isolators(f("isolators"), f"{where}.isolators"),
        mount_points=mounts,
        ports=ports,
        user_annotations=strmap(f("userAnnotations"), f"{where}.userAnnotations"),
        user_labels=strmap(f("userLabels"), f"{where}.userLabels"),
    )


def _decode_dep(value: Any, where: str) -> Dependency:
    obj = _obj(value, where)
    return Dependency(
        image_name=str_(field_of(obj, "imageName"), f"{where}.imageName"),
        image_id=str_(field_of(obj, "imageID"), f"{where}.imageID"),
        labels=decode_labels(field_of(obj, "labels"), f"{where}.labels"),
        size=int_(field_of(obj, "size"), f"{where}.size", unsigned=True),
    )


# ---------------------------------------------------------------- encoding


def encode_pairs(items: list) -> list[dict[str, str]]:
    return [{"name": x.name, "value": x.value} for x in items]


def encode_isolators(items: list[Isolator]) -> list[dict[str, Any]]:
    return [{"name": i.name, "value": i.value} for i in items]


def encode_app(app: App) -> dict[str, Any]:
    # Go's types.App field order; exec has no omitempty (nil is written as null).
    d: dict[str, Any] = {"exec": list(app.exec) or None}
    if app.event_handlers:
        d["eventHandlers"] = [{"name": h.name, "exec": list(h.exec) or None} for h in app.event_handlers]
    d["user"] = app.user
    d["group"] = app.group
    if app.supplementary_gids:
        d["supplementaryGIDs"] = list(app.supplementary_gids)
    if app.working_directory:
        d["workingDirectory"] = app.working_directory
    if app.environment:
        d["environment"] = encode_pairs(app.environment)
    if app.mount_points:
        d["mountPoints"] = [
            {"name": m.name, "path": m.path, **({"readOnly": True} if m.read_only else {})} for m in app.mount_points
        ]
    if app.ports:
        d["ports"] = [{"name": p.name, "protocol": p.protocol, "port": p.port, "count": p.count,
                       "socketActivated": p.socket_activated} for p in app.ports]
    if app.isolators:
        d["isolators"] = encode_isolators(app.isolators)
    if app.user_annotations:
        d["userAnnotations"] = dict(sorted(app.user_annotations.items()))
    if app.user_labels:
        d["userLabels"] = dict(sorted(app.user_labels.items()))
    return d


def _encode_dep(dep: Dependency) -> dict[str, Any]:
    d: dict[str, Any] = {"imageName": dep.image_name}
    if dep.image_id:
        d["imageID"] = dep.image_id
    if dep.labels:
        d["labels"] = encode_pairs(dep.labels)
    if dep.size:
        d["size"] = dep.size
    return d


# ---------------------------------------------------------------- validation


def labels_problems(labels: list[Label], where: str, strict: bool) -> list[str]:
    out = []
    seen: set[str] = set()
    for lb in labels:
        if p := t.acidentifier_problem(lb.name, strict):
            out.append(f"{where}: {p}")
        if lb.name in seen:
            out.append(f'{where}: duplicate labels of name "{lb.name}"')
        seen.add(lb.name)
        if lb.name == "name":
            out.append(f'{where}: invalid label name: "name"')
    values = {lb.name: lb.value for lb in labels}
    if "os" in values and (p := t.os_arch_problem(values["os"], values.get("arch"))):
        out.append(f"{where}: {p}")
    return out


def annotations_problems(annotations: list[Annotation], where: str, strict: bool) -> list[str]:
    out = []
    seen: set[str] = set()
    for a in annotations:
        if p := t.acidentifier_problem(a.name, strict):
            out.append(f"{where}: {p}")
        if a.name in seen:
            out.append(f'{where}: duplicate annotations of name "{a.name}"')
        seen.add(a.name)
        check = {"created": t.date_problem, "homepage": t.url_problem, "documentation": t.url_problem}.get(a.name)
        if check and (p := check(a.value)):
            out.append(f"{where}: {a.name}: {p}")
    return out


def isolators_problems(isolators: list[Isolator], where: str, strict: bool) -> list[str]:
    out = []
    counts: dict[str, int] = {}
    for i in isolators:
        if i.name and (p := t.acidentifier_problem(i.name, strict)):
            out.append(f"{where}: {p}")
        elif p := t.isolator_problem(i.name, i.value, strict):
            out.append(f"{where}: {i.name or '(no name)'}: {p}")
        counts[i.name] = counts.get(i.name, 0) + 1
    for name in sorted(counts):
        if name in t.SINGLE_ISOLATORS and counts[name] > 1:
            out.append(f'{where}: isolators set contains too many instances of type {name}"')
    if "os/linux/seccomp-retain-set" in counts and "os/linux/seccomp-remove-set" in counts:
        out.append(f"{where}: isolators set contains incompatible types")
    if strict and "os/linux/capabilities-retain-set" in counts and "os/linux/capabilities-remove-set" in counts:
        out.append(f"{where}: capabilities retain-set and remove-set cannot be used together" + S)
    return out


def app_problems(app: App, where: str, strict: bool) -> list[str]:
    out = []
    if not app.user:
        out.append(f"{where}: user is required")
    if not app.group:
        out.append(f"{where}: group is required")
    seen_handlers: set[str] = set()
    for h in app.event_handlers:
        if h.name not in ("pre-start", "post-stop"):
            out.append(f'{where}: bad eventHandler "name": "{h.name}"')
        elif h.name in seen_handlers:
            out.append(f'{where}: Only one eventHandler of name "{h.name}" allowed')
        seen_handlers.add(h.name)
    if app.working_directory and (p := t.absolute_path_problem(app.working_directory, "workingDirectory")):
        out.append(f"{where}: {p}")
    seen_env: set[str] = set()
    for e in app.environment:
        if p := t.env_name_problem(e.name):
            out.append(f"{where}.environment: {p}")
        elif e.name in seen_env:
            out.append(f'{where}.environment: duplicate environment variable of name "{e.name}"')
        seen_env.add(e.name)
    out += isolators_problems(app.isolators, f"{where}.isolators", strict)
    seen_mounts: set[str] = set()
    for i, m in enumerate(app.mount_points):
        mw = f"{where}.mountPoints[{i}]"
        if p := t.acname_problem(m.name):
            out.append(f"{mw}: {p}")
        if strict and m.name in seen_mounts:
            out.append(f'{mw}: duplicate mountPoint name "{m.name}"' + S)
        if strict and (p := t.absolute_path_problem(m.path, f'the path of "{m.name}"')):
            out.append(f"{mw}: {p}" + S)
        seen_mounts.add(m.name)
    seen_ports: set[str] = set()
    for i, p in enumerate(app.ports):
        pw = f"{where}.ports[{i}]"
        if msg := t.acname_problem(p.name):
            out.append(f"{pw}: {msg}")
        if msg := t.port_problem(p.port, max(p.count, 1)):  # a count of 0 reads as 1
            out.append(f"{pw}: {msg}")
        # The spec allows any protocol (executors may refuse one); only a missing one is refused.
        if strict and not p.protocol:
            out.append(f'{pw}: port "{p.name}" has no protocol (give one, such as {", ".join(PORT_PROTOCOLS)})' + S)
        if strict and p.name in seen_ports:
            out.append(f'{pw}: duplicate port name "{p.name}"' + S)
        seen_ports.add(p.name)
    return out

