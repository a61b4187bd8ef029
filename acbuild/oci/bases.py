"""Docker/OCI images as build bases (`FROM docker://...`, `FROM oci:DIR` ...):
converted once, kept under the acbuild cache root, keyed by the image's
manifest digest.

`converted_base(text, options)` returns the path of an .aci for the SOURCE
`text`: CACHE/oci/bases/MANIFEST-HEX[:16]-KEY[:16].aci, where KEY also covers the
name it was pulled as (the name and origin annotations are part of the ACI) and
the converter version. A cache file is written atomically and never changes,
so it is used without re-checking; registry blobs come from the blob cache.

`source_digest(text, options)` is the step-cache key part for such a base: the
manifest digest the source resolves to now (one manifest GET for docker://), so
a tag that moved to a new image misses the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from acbuild.dirs import cache_root
from acbuild.oci.convert import ConvertOptions, convert, open_source
from acbuild.oci.reference import DOCKER, parse_source
from acbuild.oci.registry import RegistryClient

# Bump when the conversion of the same image would give other bytes.
CONVERTER_VERSION = "1"


def bases_dir() -> Path:
    return cache_root() / "oci" / "bases"


def converted_base(text: str, options: ConvertOptions = ConvertOptions()) -> Path:
    """The cached .aci for SOURCE `text`, converted now if it is not there yet."""
    opened = open_source(parse_source(text), options)
    o = opened.origin
    key = hashlib.sha256("\0".join([CONVERTER_VERSION, o.manifest_digest, o.name, o.tag, o.original,
                                    options.platform.__str__() if options.platform else ""]).encode()).hexdigest()
    path = bases_dir() / f"{o.manifest_digest.split(':')[-1][:16]}-{key[:16]}.aci"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        convert(opened, path, options)
    return path


def source_digest(text: str, options: ConvertOptions = ConvertOptions()) -> str:
    """The manifest digest SOURCE `text` resolves to (see the module docstring)."""
    source = parse_source(text)
    if source.transport == DOCKER:
        ref = source.reference
        assert ref is not None
        if ref.digest:
            return ref.digest
        with RegistryClient.for_reference(ref, options.registry) as client:
            return client.resolve(ref, options.platform)[0]
    return open_source(source, options).image.manifest_digest


def anchored(text: str, context: Path) -> str:
    """SOURCE `text` with a relative FILE/DIR taken from `context` (the build context)."""
    source = parse_source(text)
    if source.transport == DOCKER or Path(source.path).is_absolute():
        return text
    rest = f":{source.ref}" if source.ref else ""
    return f"{source.transport}:{(context / source.path).absolute()}{rest}"
