"""Where `-o` sends an OCI image: skopeo's transport syntax, `oci:DIR[:TAG]`,
`oci-archive:FILE[:TAG]` and `docker-archive:FILE[:NAME:TAG]`. Apart from the exporter
(oci.export): every build reads its -o through this, and the exporter's imports cost a
cached build 5 ms."""

from __future__ import annotations

import re
from pathlib import Path

from acbuild.errors import UsageError
from acbuild.records import dataclass

ARCHIVE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
_OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}")  # an org.opencontainers.image.ref.name


def is_docker_tag(text: str) -> bool:
    """Is `text` a Docker reference NAME:TAG (what docker-archive's RepoTags hold)?"""
    from acbuild.oci.reference import parse_reference

    try:
        ref = parse_reference(text)
    except UsageError:
        return False
    return ref.digest is None and text.endswith(f":{ref.tag}")


@dataclass(frozen=True)
class Destination:
    """Where an OCI image goes: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or
    `docker-archive:FILE[:NAME:TAG]` (skopeo's transport syntax)."""

    transport: str
    path: Path
    ref: str = ""

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_destination(text: str) -> Destination:
    """`transport:PATH[:REF]`; PATH ends at its first colon, as in skopeo."""
    transport, colon, rest = text.partition(":")
    if not colon or transport not in ARCHIVE_TRANSPORTS:
        raise UsageError(f"{text}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]")
    path, _, ref = rest.partition(":")
    if not path:
        raise UsageError(f"{text}: no path after {transport}:")
    if ref and transport == "docker-archive" and not is_docker_tag(ref):
        raise UsageError(f"{text}: {ref!r} is not a Docker reference NAME:TAG")
    if ref and transport != "docker-archive" and not _OCI_TAG.fullmatch(ref):
        raise UsageError(f"{text}: {ref!r} is not a valid tag")
    return Destination(transport, Path(path), ref)


def is_destination(text: str) -> bool:
    return text.partition(":")[0] in ARCHIVE_TRANSPORTS and ":" in text
