"""`acbuild serve`: an image repository over a directory, live or as static files."""

from __future__ import annotations

import argparse
from pathlib import Path

from acbuild.errors import UsageError

EPILOG = """\
examples:
  acbuild serve ./images                                   # http://127.0.0.1:8080/
  acbuild serve ./images --port 8443 --tls-cert cert.pem --tls-key key.pem --keys pubkeys.asc
  acbuild discover localhost/app --port 8443 --ca-file ca.pem   # ... from another shell
  acbuild serve --export ./images ./site --base-url https://example.com --keys pubkeys.asc

what is served (read-only; nothing outside DIR, no hidden files, no symlinks out of DIR):
  /NAME-VERSION-OS-ARCH.aci, .aci.asc   every image in DIR (and below) by its manifest;
                                        the newest of each name also as VERSION "latest"
  /PATH?ac-discovery=1                  discovery pages for each image name HOST/PATH
                                        and its parent paths
  /  /index.json                        the image list: IDs, labels, sizes, URLs
  /pubkeys.gpg                          the --keys FILE, announced on every page

DIR is rescanned on each request, so a newly written image is served at once.
--export writes the same tree to OUT (discovery pages as OUT/PATH/index.html); nginx
serves it with two lines:  root OUT;  try_files $uri $uri/index.html =404;"""


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a directory of images (discovery, images, signatures, keys)",
                       description="Serve the .aci images in DIR as an appc image repository over HTTP(S), "
                                   "or write it as static files (--export DIR OUT).",
                       usage="acbuild serve DIR [options]\n       acbuild serve --export DIR OUT [options]",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, metavar="DIR", help="directory of .aci files (and their .asc)")
    p.add_argument("out", type=Path, metavar="OUT", nargs="?", help="with --export: where to write the files")
    p.add_argument("--export", action="store_true", help="write the repository as static files to OUT")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="N", help="port to listen on (default 8080, 8443 with TLS; 0: any)")
    p.add_argument("--tls-cert", type=Path, metavar="CERT", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, metavar="KEY", help="the certificate's private key (PEM)")
    p.add_argument("--keys", type=Path, metavar="FILE", help="public keys to serve as /pubkeys.gpg")
    p.add_argument("--base-url", metavar="URL",
                   help="the URL clients reach the repository at, for the pages' templates "
                        "(default: the request's; with --export: https://HOST of the image names)")
    p.set_defaults(run=run)


def run(args) -> int:
    from acbuild.serve.repository import Scanner

    if args.export != (args.out is not None):
        raise UsageError("serve: OUT is only for --export, and --export needs OUT" if args.out
                         else "serve --export: give DIR and OUT")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("serve: --tls-cert and --tls-key go together")
    if args.base_url is not None and not args.base_url.startswith(("https://", "http://")):
        raise UsageError(f"serve: --base-url {args.base_url!r} must start with https:// or http://")
    if args.keys is not None and not args.keys.is_file():
        raise UsageError(f"serve: --keys {args.keys}: no such file")
    if not args.dir.is_dir():
        raise UsageError(f"serve: {args.dir}: not a directory")
    scanner = Scanner(args.dir, args.keys)
    if args.export:
        return _export(args, scanner)
    if args.port is not None and not 0 <= args.port < 65536:
        raise UsageError(f"serve: --port {args.port}: not a port (0-65535)")
    from acbuild.serve.server import RepositoryServer, serve_forever, tls_context

    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    port = args.port if args.port is not None else (8443 if tls else 8080)
    server = RepositoryServer(scanner, args.address, port, tls, args.base_url)
    serve_forever(server, scanner.scan())
    return 0


def _export(args, scanner) -> int:
    import sys

    from acbuild.serve.export import default_base_url, export

    for flag in ("tls_cert", "address", "port"):
        if getattr(args, flag) not in (None, "127.0.0.1"):
            raise UsageError(f"serve --export: --{flag.replace('_', '-')} is for a live server")
    repo = scanner.scan()
    for problem in repo.problems:
        print(f"acbuild serve: warning: {problem}", file=sys.stderr)
    base = (args.base_url or default_base_url(repo)).rstrip("/")
    count = export(repo, args.out, base)
    n = len(repo.images)
    print(f"exported {n} image{'' if n == 1 else 's'} ({count} files) to {args.out} for {base}/")
    return 0
