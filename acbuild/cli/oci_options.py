"""Options every command that talks to a registry shares (convert, build's
FROM docker://..., push): --insecure, --ca-file, --creds, --platform."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_registry_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Docker/OCI sources (docker://, FROM docker://...)")
    g.add_argument("--creds", metavar="USER[:PASSWORD]",
                   help="credentials for the registry (default: from $REGISTRY_AUTH_FILE, "
                        "~/.config/containers/auth.json or ~/.docker/config.json, as skopeo reads them)")
    g.add_argument("--ca-file", metavar="PEM", type=Path,
                   help="trust the registry's certificate if it is signed by this CA bundle")
    g.add_argument("--insecure", action="store_true",
                   help="do not check the registry's TLS certificate, and use plain HTTP "
                        "when the registry does not speak TLS (Docker's insecure registry)")
    g.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="the image to pick from a manifest list or OCI index (default: this host's)")


def registry_options(args: argparse.Namespace):
    """The RegistryOptions and Platform (or None) the options give."""
    from acbuild.oci.auth import parse_creds
    from acbuild.oci.manifests import parse_platform
    from acbuild.oci.registry import RegistryOptions

    creds = parse_creds(args.creds) if getattr(args, "creds", None) else None
    options = RegistryOptions(insecure=bool(getattr(args, "insecure", False)),
                              ca_file=getattr(args, "ca_file", None), credentials=creds)
    platform = parse_platform(args.platform) if getattr(args, "platform", None) else None
    return options, platform
