"""An OCI/Docker image config mapped to an appc ImageManifest, as docker2aci
v0.17 mapped it (appc digest section 7), plus what it dropped:

- exec = Entrypoint + Cmd (originals kept as JSON in appc.io/docker/entrypoint
  and appc.io/docker/cmd); Env split at the first `=` (entries without one
  dropped, the last duplicate wins); User `u[:g]` (only `u` gives group u, none
  gives 0/0); WorkingDir verbatim; Volumes -> mountPoints `volume-PATH`;
  ExposedPorts `6379/tcp` -> port `6379-tcp`; Labels -> app.userLabels;
- annotations: origin (appc.io/docker/originalname, registryurl, repository,
  imageid, manifesthash, tag), author, created, and StopSignal and Healthcheck
  (appc.io/docker/stopsignal, appc.io/docker/healthcheck as JSON);
- name from the reference (an ACIdentifier, docker2aci's sanitising), label
  version = the tag, os/arch from the config (arm64 -> aarch64).
"""

from __future__ import annotations

import json
import re
from typing import Any

from acbuild.aci.manifest import Annotation, App, EnvVar, ImageManifest, Label, MountPoint, Port
from acbuild.errors import ImageError
from acbuild.oci.manifests import json_object
from acbuild.records import dataclass

# Go GOARCH (+ variant) -> appc arch.
_ARCH = {"amd64": "amd64", "386": "i386", "arm64": "aarch64", "arm": "armv7l", "arm/v6": "armv6l",
         "arm/v7": "armv7l", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Origin:
    """Where the image came from, for the name, the version label and annotations."""

    name: str  # e.g. 127.0.0.1:5000/busybox or docker.io/library/busybox
    tag: str = ""
    original: str = ""  # the SOURCE argument as given
    registry: str = ""
    repository: str = ""
    manifest_digest: str = ""
    config_digest: str = ""


def sanitize_identifier(text: str) -> str:
    """docker2aci's SanitizeACIdentifier: lowercase, other characters become `_`,
    punctuation at the ends dropped."""
    out = re.sub(r"[^a-z0-9._~/-]", "_", text.lower())
    return out.strip("._~/-_") or "image"


def _acname(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def _config(config_bytes: bytes) -> dict[str, Any]:
    return json_object(config_bytes, "image config")


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config: {where} is not a list of strings")
    return value


def app_of(cfg: dict[str, Any]) -> App:
    """The App for the `config` object of an image config."""
    entrypoint, cmd = _strings(cfg.get("Entrypoint"), "Entrypoint"), _strings(cfg.get("Cmd"), "Cmd")
    app = App(exec=entrypoint + cmd)
    user = cfg.get("User") or ""
    if user:
        u, _, g = str(user).partition(":")
        app.user, app.group = u, g or u
    env: dict[str, str] = {}
    for item in _strings(cfg.get("Env"), "Env"):
        if "=" in item:
            k, _, v = item.partition("=")
            env.pop(k, None)
            env[k] = v
    app.environment = [EnvVar(k, v) for k, v in env.items()]
    app.working_directory = str(cfg.get("WorkingDir") or "")
    names: dict[str, str] = {}
    for path in sorted(cfg.get("Volumes") or {}):
        base = "volume-" + (_acname(path) or "root")
        name, n = base, 1
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names[name] = path
    app.mount_points = [MountPoint(n, p) for n, p in sorted(names.items())]
    ports = []
    for spec in cfg.get("ExposedPorts") or {}:
        number, _, proto = str(spec).partition("/")
        proto = proto or "tcp"
        if not number.isdigit():
            raise ImageError(f"image config: bad ExposedPorts entry {spec!r}")
        ports.append(Port(f"{number}-{proto}", proto, int(number)))
    app.ports = sorted(ports, key=lambda p: p.name)
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict):
        raise ImageError("image config: Labels is not an object")
    app.user_labels = {str(k): str(v) for k, v in sorted(labels.items())}
    return app


def os_arch(doc: dict[str, Any]) -> tuple[str, str]:
    goarch = str(doc.get("architecture") or "amd64")
    variant = doc.get("variant") or ""
    arch = _ARCH.get(f"{goarch}/{variant}" if variant else goarch) or _ARCH.get(goarch, goarch)
    return str(doc.get("os") or "linux"), arch


def image_manifest(config_bytes: bytes, origin: Origin) -> ImageManifest:
    """The ImageManifest of a squashed image."""
    doc = _config(config_bytes)
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise ImageError("image config: 'config' is not an object")
    manifest = ImageManifest(name=sanitize_identifier(origin.name))
    os_name, arch = os_arch(doc)
    if origin.tag:
        manifest.labels.append(Label("version", origin.tag))
    manifest.labels += [Label("os", os_name), Label("arch", arch)]
    manifest.app = app_of(cfg)
    notes: list[tuple[str, str]] = [
        ("appc.io/docker/originalname", origin.original),
        ("appc.io/docker/registryurl", origin.registry),
        ("appc.io/docker/repository", origin.repository),
        ("appc.io/docker/imageid", origin.config_digest),
        ("appc.io/docker/manifesthash", origin.manifest_digest),
        ("appc.io/docker/tag", origin.tag),
        ("appc.io/docker/entrypoint", json.dumps(cfg.get("Entrypoint")) if cfg.get("Entrypoint") else ""),
        ("appc.io/docker/cmd", json.dumps(cfg.get("Cmd")) if cfg.get("Cmd") else ""),
        ("appc.io/docker/stopsignal", str(cfg.get("StopSignal") or "")),
        ("appc.io/docker/healthcheck", json.dumps(cfg["Healthcheck"], sort_keys=True) if cfg.get("Healthcheck") else ""),
        ("author", str(doc.get("author") or "")),
        ("created", str(doc.get("created") or "") if not str(doc.get("created", "")).startswith("0001-") else ""),
    ]
    manifest.annotations = [Annotation(k, v) for k, v in notes if v]
    return manifest


def created_epoch(config_bytes: bytes) -> int | None:
    """The config's `created` time as a Unix time (for file mtimes), if it has one."""
    from datetime import datetime

    created = _config(config_bytes).get("created")
    if not isinstance(created, str) or not created:
        return None
    text = re.sub(r"(\.\d{1,6})\d*", r"\1", created.replace("Z", "+00:00"))
    try:
        return max(0, int(datetime.fromisoformat(text).timestamp()))
    except ValueError:
        return None
