"""`acbuild discover`: appc meta discovery, as `actool discover` prints it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  acbuild discover example.com/app                 # version latest, the host's os and arch
  acbuild discover example.com/app:1.0,channel=beta --json
  acbuild discover localhost/app:1.0 --port 8443 --ca-file ca.pem
  acbuild discover localhost/app --insecure --port 8080     # plain HTTP allowed

output: one "ACI: URL, ASC: URL" line per image template that matched, in page order,
then one "Keys: URL" line per public key URL. --json prints
{"ACIEndpoints": [{"ACI": ..., "ASC": ...}], "PublicKeys": [...], "Attempts": [...]}.
Exit status 2 when no image template is found (the pages tried are listed).
"""


def add_parser(sub) -> None:
    from acbuild.cli.options import DISCOVERY_HELP, add_discovery_options

    p = sub.add_parser("discover", help="find an image's download URLs and keys by name (appc discovery)",
                       description="Find the .aci, .asc and public key URLs of image names with appc meta "
                                   "discovery (?ac-discovery=1 on the name, then each parent path).",
                       epilog=EPILOG + "\n" + DISCOVERY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME[:VERSION][,LABEL=VALUE...]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_discovery_options(p)
    p.add_argument("--config", type=Path, metavar="FILE", help="acbuild.toml to read")
    p.set_defaults(run=run)


def run(args) -> int:
    from acbuild.cli.options import discovery_from_args
    from acbuild.config import load_config
    from acbuild.net.discovery import AppRequest, discover

    options = discovery_from_args(args, load_config(args.config))
    apps = [AppRequest.parse(name).with_host_defaults() for name in args.names]  # all checked before any request
    for app in apps:
        found = discover(app, options)
        if args.json:
            print(json.dumps(found.as_json(), indent=4))
        found.require_endpoints()
        if args.json:
            continue
        for endpoint in found.endpoints:
            print(f"ACI: {endpoint.aci}, ASC: {endpoint.asc}")
        for key in found.keys:
            print(f"Keys: {key}")
        if not found.keys:
            print(f"acbuild: no public keys found for {app.name} (acbuild trust needs a key file)", file=sys.stderr)
    return 0
