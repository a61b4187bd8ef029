"""Where acbuild keeps data that lasts between runs (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` (parents made as needed) as a 0700 dir, as buildah's storage is: an image's
    setuid binaries, cached layers and work files inside are out of other host users'
    reach. An existing dir is tightened too (older acbuilds made them 0755)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def cache_root() -> Path:
    """$ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild, else ~/.cache/acbuild."""
    explicit = os.environ.get("ACBUILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acbuild"


def store_root() -> Path:
    """The image store: $ACBUILD_STORE_DIR, else $XDG_DATA_HOME/acbuild/images, else
    ~/.local/share/acbuild/images."""
    explicit = os.environ.get("ACBUILD_STORE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "acbuild" / "images"


# The trust store's roots (acbuild.trust.store says what they hold); here, because
# every command that verifies an image names them without opening the store.
SYSTEM_TRUST_DIR = Path("/etc/acbuild/trustedkeys")
ENV_TRUST_DIR = "ACBUILD_TRUST_DIR"


def user_trust_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "acbuild" / "trustedkeys"


def default_trust_dirs(override: Path | None = None, configured: tuple[Path, ...] | None = None) -> list[Path]:
    """The roots to use: the flag, else ACBUILD_TRUST_DIR, else acbuild.toml, else system + user."""
    if override is not None:
        return [override]
    if os.environ.get(ENV_TRUST_DIR):
        return [Path(os.environ[ENV_TRUST_DIR])]
    if configured:
        return list(configured)
    return [SYSTEM_TRUST_DIR, user_trust_dir()]
