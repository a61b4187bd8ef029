"""Where acbuild keeps data that lasts between runs (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$ACBUILD_CACHE_DIR, else $XDG_CACHE_HOME/acbuild, else ~/.cache/acbuild."""
    explicit = os.environ.get("ACBUILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acbuild"
