"""Registry credentials and authentication challenges.

Credentials come from `--creds USER[:PASSWORD]`, else from the auth files that
skopeo and podman read (containers-auth.json(5)), first hit wins:
$REGISTRY_AUTH_FILE (or ${XDG_RUNTIME_DIR}/containers/auth.json when unset),
${XDG_CONFIG_HOME:-~/.config}/containers/auth.json, ~/.docker/config.json,
~/.dockercfg. Inside a file the most specific key wins: `host/ns/repo`, then
`host/ns`, then `host` (Docker's `https://index.docker.io/v1/` is docker.io).
Credential helpers (`credHelpers`, `credsStore`) are not run.

`parse_challenge` reads a WWW-Authenticate header (RFC 7235) into its scheme
and parameters; the registry client answers Basic and Bearer ones.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from acbuild.errors import UsageError
from acbuild.oci.reference import DOCKER_HUB, Reference
from acbuild.records import dataclass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    # Where they came from, for error messages ("--creds", a file path).
    origin: str = "--creds"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a registry: --insecure (HTTPS without a certificate check, plain
    HTTP when the registry speaks no TLS), --ca-file, --creds (acbuild.oci.registry).
    Here, not beside the client: every command that has these flags makes one."""

    insecure: bool = False
    ca_file: Path | None = None
    credentials: Credentials | None = None
    timeout: float = 60.0


def parse_creds(text: str) -> Credentials:
    """`USER[:PASSWORD]` as skopeo's --creds takes it."""
    user, _, password = text.partition(":")
    if not user:
        raise UsageError("--creds: want USER[:PASSWORD]")
    return Credentials(user, password)


def auth_files() -> list[Path]:
    """The files searched, in order (see the module docstring)."""
    home = Path(os.path.expanduser("~"))
    first = os.environ.get("REGISTRY_AUTH_FILE")
    files = []
    if first:
        files.append(Path(first))
    elif os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers/auth.json")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    files += [config / "containers/auth.json", home / ".docker/config.json", home / ".dockercfg"]
    return files


def _normalise_key(key: str) -> str:
    """An auth-file key as `host[/path]`: Docker writes URLs like https://index.docker.io/v1/."""
    key = re.sub(r"^https?://", "", key).rstrip("/")
    host, _, path = key.partition("/")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
        path = "" if path in ("v1", "v2") else path
    elif re.fullmatch(r"v[12]", path):
        path = ""
    return f"{host}/{path}" if path else host


def _entries(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read credentials: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a JSON object")
    auths = data.get("auths", data if path.name == ".dockercfg" else {})
    if not isinstance(auths, dict):
        raise UsageError(f"{path}: 'auths' is not an object")
    return {_normalise_key(k): v for k, v in auths.items() if isinstance(v, dict)}


def _decode(entry: dict, path: Path, key: str) -> Credentials | None:
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{path}: entry {key!r}: 'auth' is not base64 of USER:PASSWORD") from None
        if not sep:
            raise UsageError(f"{path}: entry {key!r}: 'auth' is not base64 of USER:PASSWORD")
        return Credentials(user, password, str(path))
    if entry.get("username"):
        return Credentials(entry["username"], entry.get("password", ""), str(path))
    return None


def find_credentials(ref: Reference) -> Credentials | None:
    """The credentials for `ref` from the auth files, or None."""
    parts = ref.repository.split("/")
    wanted = [f"{ref.registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + [ref.registry]
    for path in auth_files():
        entries = _entries(path)
        for key in wanted:
            if key in entries:
                creds = _decode(entries[key], path, key)
                if creds:
                    return creds
    return None


# ---------------------------------------------------------------- challenges

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "basic", "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
        pos = m.end()
    return Challenge(scheme.lower(), params)
