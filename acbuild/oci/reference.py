"""Image references as Docker spells them, and the transports acbuild reads.

`parse_reference("busybox")` normalises as Docker's distribution/reference
does: no domain means Docker Hub (`docker.io`), a one-component Hub name gets
`library/`, no tag and no digest means `:latest`. A first component is a
domain when it holds a `.` or a `:` or is `localhost`. Names must be lowercase.

`parse_source("oci:DIR:REF")` splits a SOURCE argument into its transport and
the rest (skopeo's transport names): docker://REF, docker-archive:FILE,
oci:DIR[:REF], oci-archive:FILE[:REF]. Errors are UsageError naming the argument.
"""

from __future__ import annotations

import re

from acbuild.errors import UsageError
from acbuild.records import dataclass

DOCKER_HUB = "docker.io"
# Where Docker Hub's API answers (the name `docker.io` is only a spelling).
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                     r"(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A normalised `registry/repository[:tag][@digest]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """host[:port] to talk HTTP to."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """`[REGISTRY/]NAME[:TAG][@DIGEST]`, normalised (see the module docstring)."""
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise UsageError(f"{text}: bad digest {digest!r} (want sha256:<64 hex> or sha512:<128 hex>)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise UsageError(f"{text}: bad tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
        if not _DOMAIN.match(registry):
            raise UsageError(f"{text}: bad registry {registry!r}")
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPOSITORY.match(repository):
        hint = " (names must be lowercase)" if repository.lower() != repository else ""
        raise UsageError(f"{text}: bad repository name {repository!r}{hint}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


# ---------------------------------------------------------------- transports

DOCKER = "docker"
DOCKER_ARCHIVE = "docker-archive"
OCI = "oci"
OCI_ARCHIVE = "oci-archive"
TRANSPORTS = (DOCKER, DOCKER_ARCHIVE, OCI, OCI_ARCHIVE)


@dataclass(frozen=True)
class Source:
    """A SOURCE argument: for docker, `reference`; for the others a `path` and
    an optional `ref` (OCI: the `org.opencontainers.image.ref.name` to pick;
    docker-archive: the RepoTag to pick)."""

    transport: str
    text: str
    path: str = ""
    ref: str = ""
    reference: Reference | None = None

    def __str__(self) -> str:
        return self.text


def is_source(text: str) -> bool:
    """Does `text` name one of the transports (so it is not an appc image name)?"""
    return text.startswith("docker://") or text.split(":", 1)[0] in (DOCKER_ARCHIVE, OCI, OCI_ARCHIVE) and ":" in text


def parse_source(text: str) -> Source:
    """docker://REF, docker-archive:FILE[:REF], oci:DIR[:REF] or oci-archive:FILE[:REF]."""
    if text.startswith("docker://"):
        return Source(DOCKER, text, reference=parse_reference(text[len("docker://"):]))
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS or transport == DOCKER:
        raise UsageError(f"{text}: unknown image source (want docker://REF, docker-archive:FILE, "
                         "oci:DIR[:REF] or oci-archive:FILE[:REF])")
    path, _, ref = rest.partition(":")
    if not path:
        raise UsageError(f"{text}: no path after {transport}:")
    return Source(transport, text, path=path, ref=ref)
