"""What FROM (and `acbuild begin`) names, and where a base named by image name comes from.

    kind, path = classify_base(base, context)   # scratch, oci, dir, file or name
    image = stored_base(base, options)         # FROM NAME: the image store's verified copy

The one rule for telling them apart: "scratch"; a Docker/OCI source (docker://...,
docker-archive:, oci:, oci-archive:); an existing directory; an
existing file or anything ending in ".aci" (a missing one is "no such file", never a name);
else an image name, NAME[:VERSION][,LABEL=VALUE...], resolved through options.fetcher
(acbuild.fetch: the store, then discovery, as --pull says). The step cache keys a named
base by the image ID it resolves to, so an unchanged upstream is a hit and a newly
published image a miss.
"""

from __future__ import annotations

from pathlib import Path

from acbuild import plan as p
from acbuild.errors import AcbuildError, BuildError


def classify_base(base: p.From, context: Path) -> tuple[str, Path | None]:
    text = base.base
    if text == "scratch":
        return "scratch", None
    from acbuild.oci.reference import is_source

    if is_source(text):  # docker://, docker-archive:, oci:, oci-archive:
        return "oci", None
    path = Path(text)
    if not path.is_absolute():
        path = context / path
    if path.is_dir():
        return "dir", path
    if text.endswith(".aci") or path.exists():
        return "file", path
    return "name", None


def stored_base(base: p.From, options):
    """The StoredImage a FROM NAME resolves to (fetched and verified when the store
    lacks it); BuildError with the FROM's position when it cannot be had."""
    from acbuild.net.discovery import AppRequest

    fetcher = options.fetcher
    if fetcher is None:
        raise BuildError(f"FROM {base.base}: images by name need an image store (no fetcher configured)", base.pos)
    if base.insecure_skip_verify:
        fetcher = fetcher.skipping_verification()
    try:
        return fetcher.by_name(AppRequest.parse(base.base))
    except AcbuildError as err:
        raise BuildError(f"FROM {base.base}: {err.message}", base.pos) from err
