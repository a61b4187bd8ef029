"""acbuild.toml: user defaults for signing and verification.

Read from `--config FILE`, else `$XDG_CONFIG_HOME/acbuild/acbuild.toml`
(default ~/.config/acbuild/acbuild.toml); a missing default file means defaults.

    signing-key = "alice@example.com"     # default for --key
    gpg-home = "~/.gnupg-acbuild"          # default for --gpg-home
    trust-dirs = ["/etc/acbuild/trustedkeys", "~/.config/acbuild/trustedkeys"]
    require-signatures = true             # every base image must be signed and trusted
    max-image-size = "16G"                # uncompressed bytes one image may hold (acbuild.limits)
    store-dir = "~/images"                # the image store (default $XDG_DATA_HOME/acbuild/images)

    [discovery]                           # defaults for --ca-file, --port, --timeout, --insecure
    ca-file = "/etc/ssl/private-ca.pem"   # CAs to trust for discovery and downloads
    port = 8443                           # appended to the host of every discovery URL
    timeout = 30                          # seconds a silent connection is given
    insecure = false                      # true: no certificate checks, plain HTTP allowed (warned)

Relative paths are relative to the file's directory; "~" is expanded. Command-line
flags and ACBUILD_TRUST_DIR win over the file. `insecure-skip-verify` is refused
here on purpose: skipping verification must be asked for on each command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from acbuild.errors import SourcePos, UsageError
from acbuild.files import read_user_text
from acbuild.records import dataclass

KEYS = ("signing-key", "gpg-home", "trust-dirs", "require-signatures", "store-dir", "max-image-size", "discovery")
DISCOVERY_KEYS = ("ca-file", "port", "timeout", "insecure")


@dataclass(frozen=True)
class DiscoveryConfig:
    """acbuild.toml's [discovery] table (the defaults of the discovery options)."""

    ca_file: Path | None = None
    port: int | None = None
    timeout: float | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Config:
    signing_key: str | None = None
    gpg_home: Path | None = None
    trust_dirs: tuple[Path, ...] | None = None  # None: the built-in system + user dirs
    require_signatures: bool = False
    store_dir: Path | None = None
    discovery: DiscoveryConfig = DiscoveryConfig()
    max_image_size: str | None = None  # as written ("16G"); acbuild.limits reads it
    source: Path | None = None  # the file read, if any


def default_config_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "acbuild" / "acbuild.toml"


def load_config(path: Path | None = None) -> Config:
    """The configuration from `path` (must exist), else from the default file if present."""
    if path is None:
        path = default_config_path()
        if not path.is_file():
            return Config()
    text = read_user_text(path, "config file")
    tomllib = _toml_reader()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(_toml_message(e), _toml_pos(path, text, e)) from e
    return _from_table(data, path)


def _toml_reader():
    """tomllib, imported only when there is a file to read: most runs have none, and the
    import (it compiles its regular expressions) costs an interactive command 10-20 ms."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


def _from_table(data: dict[str, Any], path: Path) -> Config:
    def bad(msg: str) -> UsageError:
        return UsageError(f"{path}: {msg}")

    if "insecure-skip-verify" in data:
        raise bad("insecure-skip-verify is not allowed in a config file; pass --insecure-skip-verify per command")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")

    key = data.get("signing-key")
    if key is not None and (not isinstance(key, str) or not key):
        raise bad("signing-key must be a non-empty string (key id, fingerprint or user id)")
    home = data.get("gpg-home")
    if home is not None and not isinstance(home, str):
        raise bad("gpg-home must be a string path")
    dirs = data.get("trust-dirs")
    if dirs is not None and (not isinstance(dirs, list) or not dirs or not all(isinstance(d, str) for d in dirs)):
        raise bad("trust-dirs must be a non-empty list of paths (system first, writable last)")
    require = data.get("require-signatures", False)
    if not isinstance(require, bool):
        raise bad("require-signatures must be true or false")
    size = data.get("max-image-size")
    if size is not None and (not isinstance(size, (str, int)) or isinstance(size, bool)):
        raise bad('max-image-size must be a size ("16G", "512M" or a number of bytes)')
    store = data.get("store-dir")
    if store is not None and (not isinstance(store, str) or not store):
        raise bad("store-dir must be a non-empty string path")
    return Config(
        discovery=_discovery(data.get("discovery", {}), path, bad),
        signing_key=key,
        gpg_home=_path(home, path) if home else None,
        trust_dirs=tuple(_path(d, path) for d in dirs) if dirs else None,
        require_signatures=require,
        max_image_size=None if size is None else str(size),
        store_dir=_path(store, path) if store else None,
        source=path,
    )


def _discovery(table: Any, path: Path, bad) -> DiscoveryConfig:
    if not isinstance(table, dict):
        raise bad("discovery must be a table: [discovery]")
    unknown = sorted(set(table) - set(DISCOVERY_KEYS))
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} in [discovery] (known: {', '.join(DISCOVERY_KEYS)})")
    ca_file, port, timeout = table.get("ca-file"), table.get("port"), table.get("timeout")
    insecure = table.get("insecure", False)
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise bad("discovery.ca-file must be a path")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise bad("discovery.port must be a port number (1-65535)")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise bad("discovery.timeout must be a number of seconds above 0")
    if not isinstance(insecure, bool):
        raise bad("discovery.insecure must be true or false")
    return DiscoveryConfig(_path(ca_file, path) if ca_file else None, port, timeout, insecure)


def _path(value: str, config_file: Path) -> Path:
    return config_file.parent / Path(value).expanduser()  # "/" keeps absolute paths absolute


_AT_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _toml_message(e: Exception) -> str:
    return "bad TOML: " + _AT_RE.sub("", str(e))


def _toml_pos(path: Path, text: str, e: Exception) -> SourcePos:
    m = _AT_RE.search(str(e))
    if not m:
        return SourcePos(file=str(path))
    line, col = int(m.group(1)), int(m.group(2))
    lines = text.splitlines()
    return SourcePos(str(path), line, col, lines[line - 1] if 0 < line <= len(lines) else "")
