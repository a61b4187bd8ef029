"""Options that several commands share, each defined once: the ACIfile and its
build args (build, plan), signing (build, write), verification of images that
are used (build, begin, launch, fetch), discovery and download (discover, fetch,
trust, build, begin, launch), the image store (fetch, image, build, begin, launch),
with acbuild.toml's defaults, the sandbox's limits (build, launch), and registries
(convert, push, build's FROM docker://... and OCI outputs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from acbuild.errors import UsageError


BUILD_FILES = ("ACIfile", "Dockerfile", "Containerfile")


def add_acifile_options(parser) -> None:
    parser.add_argument("-f", "--file", type=Path, default=None, metavar="FILE",
                        help="the ACIfile or Dockerfile (default: ACIfile, else Dockerfile, else Containerfile, "
                             "in --context or the current directory)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE", help="set an ARG (repeatable)")
    parser.add_argument("-t", "--tag", metavar="NAME[:TAG]",
                        help="the image name, and TAG as its version label (as docker build -t); NAME and a version "
                             "label set in the file win. For an OCI output whose -o gives no :TAG, also its reference "
                             "(ref.name TAG, default latest; docker-archive NAME:TAG)")
    parser.add_argument("--strict", action="store_true", help="a --build-arg that no ARG declares is an error, not a warning")


def build_file(args) -> Path:
    """-f, else the first of ACIfile, Dockerfile, Containerfile in the context."""
    if args.file is not None:
        return args.file
    where = getattr(args, "context", None) or Path(".")
    for name in BUILD_FILES:
        if os.path.isfile(where / name):  # never raises: an unreadable dir is reported when the file is read
            return where / name
    return where / BUILD_FILES[0]  # "cannot read ./ACIfile" names what was looked for first


def parse_build_args(values: list[str]) -> dict[str, str]:
    args = {}
    for value in values:
        name, eq, val = value.partition("=")
        if not eq or not name:
            raise UsageError(f'--build-arg "{value}": expected NAME=VALUE')
        args[name] = val
    return args


def compile_from_args(args):
    """(the build file, its plan), with -t applied; an unused --build-arg is a
    warning, as Docker's "build-args were not consumed" (an error with --strict)."""
    import sys

    from acbuild.frontend.compile import compile_file

    path = build_file(args)
    context = getattr(args, "context", None) or path.parent
    plan = compile_file(path, parse_build_args(args.build_arg), target=getattr(args, "target", None), tag=args.tag,
                        base_info=lambda base: base_info(context, base), platforms=build_platforms(args))
    for name in plan.unused_build_args:
        message = f'--build-arg "{name}": no ARG in {path} declares it (not consumed)'
        if args.strict:
            raise UsageError(message)
        print(f"acbuild: warning: {message}", file=sys.stderr)
    return path, plan


def build_platforms(args):
    """This machine's platform and the target's (--platform, default this machine's),
    for the automatic platform ARGs and the check that a RUN can run here."""
    from acbuild.frontend.dockerfile import Platforms
    from acbuild.oci.manifests import host_platform, parse_platform

    build = str(host_platform())
    target = str(parse_platform(args.platform)) if getattr(args, "platform", None) else build
    return Platforms(build=build, target=target)


def base_info(context: Path, base: str):
    """FROM IMAGE.aci|DIR, read at plan time: (its environment, its ONBUILD triggers,
    its SHELL or ()), so that $PATH in an ENV sees the image's value, the triggers run
    and shell forms use its SHELL, as in Docker. None when it is not a local image
    (the build reports that, with its position)."""
    import json

    from acbuild.aci.archive import read_manifest_bytes
    from acbuild.aci.manifest import ImageManifest
    from acbuild.errors import AcbuildError

    path = Path(base) if Path(base).is_absolute() else context / base
    if not (path.is_file() or (path / "manifest").is_file()):
        return None
    try:
        manifest = ImageManifest.from_json(read_manifest_bytes(path))
    except AcbuildError:
        return None
    env = {e.name: e.value for e in manifest.app.environment} if manifest.app else {}
    notes = {a.name: a.value for a in manifest.annotations}
    def strings(name: str) -> list[str]:  # a JSON list of strings, else none
        try:
            value = json.loads(notes.get(name, "[]"))
        except ValueError:
            return []
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    return env, strings("appc.io/docker/onbuild"), tuple(strings("appc.io/docker/shell"))


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = value[-1:] if value[-1:] in units and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(suffix)])
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a size (like 500M or 10G)') from None
    if number < 0:
        raise argparse.ArgumentTypeError(f'"{text}" is negative')
    return int(number * units[suffix])


def add_sandbox_options(parser, *, setuid: bool = False) -> None:
    from acbuild.limits import DEFAULT_TMPFS_SIZE

    group = parser.add_argument_group("sandbox")
    group.add_argument("--tmpfs-size", type=parse_size, default=DEFAULT_TMPFS_SIZE, metavar="SIZE",
                       help=f"size limit of each of /tmp, /run and /dev/shm (default: {DEFAULT_TMPFS_SIZE >> 20}M)")
    add_owner_options(group)
    if setuid:
        group.add_argument("--allow-setuid", action="store_true",
                           help="let the image's setuid binaries work, as Docker does (default: the rootfs is "
                                "mounted nosuid and the app runs with no_new_privs)")


def add_owner_options(parser) -> None:
    """--squash-owners, and the mark that the command makes image trees: run as a
    user, it first enters the user namespace of the user's subordinate ids
    (acbuild.userns, called by cli.main)."""
    parser.add_argument("--squash-owners", action="store_true",
                        help="rootless: give files whose owner this user cannot keep (no range in /etc/subuid, "
                             "or an id beyond it) owner 0 instead of failing")
    parser.set_defaults(rootfs_work=True)


def output_image(value: str) -> Path:
    """argparse type of an OUT.aci argument: checked before anything is built."""
    import argparse

    from acbuild.aci.writer import check_output_path

    try:
        check_output_path(value)
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.message) from None
    return Path(value)


def add_signing_options(parser) -> None:
    group = parser.add_argument_group("signing")
    group.add_argument("--sign", action="store_true", help="write OUT.aci.asc, a detached armored signature over OUT.aci")
    group.add_argument("--key", metavar="KEYID", help="signing key (default: acbuild.toml signing-key, else gpg's default)")
    group.add_argument("--gpg-home", type=Path, metavar="DIR", help="GnuPG home (default: acbuild.toml gpg-home, else $GNUPGHOME)")
    group.add_argument("--passphrase-file", type=Path, metavar="FILE", help="read the key's passphrase from FILE")


def add_trust_options(parser, what: str = "base images", require_option: bool = True) -> None:
    """The verification flags; `what` names the images they apply to in --help
    (build and begin verify base images, launch the image it runs). fetch leaves out
    --require-signatures: an image by name always needs a signature."""
    group = parser.add_argument_group(f"verification of {what}")
    group.add_argument("--insecure-skip-verify", action="store_true", help=f"do not verify the signatures of {what} (printed loudly)")
    if require_option:
        group.add_argument("--require-signatures", action="store_true", default=None, help=f"refuse {what} without a trusted signature")
    group.add_argument("--trust-dir", type=Path, metavar="DIR", help="trust store root (default: $ACBUILD_TRUST_DIR, else system + user)")
    group.add_argument("--config", type=Path, metavar="FILE", help="acbuild.toml to read (default: $XDG_CONFIG_HOME/acbuild/acbuild.toml)")


def signing_from_args(args, config):
    """SigningOptions for --sign (None without it), with acbuild.toml defaults."""
    if not getattr(args, "sign", False):
        return None
    from acbuild.trust.sign import SigningOptions

    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    return SigningOptions(key=args.key or config.signing_key, gpg_home=args.gpg_home or config.gpg_home, passphrase=passphrase)


def trust_settings(args, config) -> dict:
    """BuildOptions fields for base verification, from flags (for commands that
    have them: build, launch, begin) and acbuild.toml."""
    from acbuild.dirs import default_trust_dirs

    require = getattr(args, "require_signatures", None)
    dirs = default_trust_dirs(getattr(args, "trust_dir", None), config.trust_dirs)
    return {
        "insecure_skip_verify": getattr(args, "insecure_skip_verify", False),
        "require_signatures": config.require_signatures if require is None else require,
        "trust_dirs": tuple(dirs),
    }


def read_passphrase(path: Path) -> str:
    """The first line of `path`, without its line ending."""
    from acbuild.files import read_user_text

    text = read_user_text(path, "passphrase file")
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------- discovery and fetch

DISCOVERY_HELP = """\
discovery: names are looked up over HTTPS (appc meta discovery); --insecure also skips
certificate checks and falls back to plain HTTP. The CA bundle is --ca-file, else
[discovery] ca-file in acbuild.toml, else SSL_CERT_FILE, else the system's. HTTPS_PROXY
and NO_PROXY are honoured."""


def add_discovery_options(parser: argparse.ArgumentParser) -> None:
    """--insecure, --port, --ca-file, --timeout: the same on every command that
    discovers or downloads (discover, fetch, trust, build, begin, launch)."""
    group = parser.add_argument_group("discovery and download")
    group.add_argument("--insecure", action="store_true",
                       help="do not check TLS certificates; try plain http:// when https:// fails")
    group.add_argument("--port", type=_port, metavar="N", dest="discovery_port",
                       help="port to append to the host when discovering (tests, private networks)")
    group.add_argument("--ca-file", type=Path, metavar="FILE",
                       help="PEM bundle of the CAs to trust (default: SSL_CERT_FILE, else the system's)")
    group.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                       help="give up on a connection that is silent this long (default 30)")


def discovery_from_args(args: argparse.Namespace, config=None):
    """The DiscoveryOptions the flags (then acbuild.toml's [discovery]) ask for."""
    from acbuild.net.discovery import DiscoveryOptions
    from acbuild.net.http import HttpOptions

    from acbuild.config import DiscoveryConfig

    settings = config.discovery if config is not None else DiscoveryConfig()
    insecure = bool(args.insecure) or settings.insecure
    if insecure and not args.insecure:
        print(f"acbuild: warning: insecure discovery and downloads (insecure = true in {config.source})",
              file=sys.stderr)
    http = HttpOptions(ca_file=args.ca_file or settings.ca_file, insecure=insecure,
                       timeout=args.timeout or settings.timeout or HttpOptions.timeout)
    port = args.discovery_port if args.discovery_port is not None else settings.port
    return DiscoveryOptions(http, port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (1-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (seconds, more than 0)")
    return value


# ---------------------------------------------------------------- registries (Docker/OCI sources)


def add_registry_options(p, tls: bool = True, *, platform: bool = True) -> None:
    """--creds and --platform; with `tls` also --insecure and --ca-file, which mean
    the same as discovery's (a command that has add_discovery_options passes
    tls=False and registries use those). `platform=False` for commands that only
    write to registries (push)."""
    g = p.add_argument_group("Docker/OCI registries (docker:// sources and destinations, FROM docker://...)")
    g.add_argument("--creds", metavar="USER[:PASSWORD]",
                   help="credentials for the registry (default: from $REGISTRY_AUTH_FILE, "
                        "~/.config/containers/auth.json or ~/.docker/config.json, as skopeo reads them)")
    if tls:
        g.add_argument("--ca-file", metavar="PEM", type=Path,
                       help="trust the registry's certificate if it is signed by this CA bundle")
        g.add_argument("--insecure", action="store_true",
                       help="do not check the registry's TLS certificate, and use plain HTTP "
                            "when the registry does not speak TLS (Docker's insecure registry)")
    if platform:
        g.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                       help="the image to pick from a manifest list or OCI index (default: this host's)")


def registry_options(args):
    """The RegistryOptions and Platform (or None) the options give."""
    from acbuild.oci.auth import RegistryOptions, parse_creds

    creds = parse_creds(args.creds) if getattr(args, "creds", None) else None
    options = RegistryOptions(insecure=bool(getattr(args, "insecure", False)),
                              ca_file=getattr(args, "ca_file", None), credentials=creds)
    platform = None
    if getattr(args, "platform", None):
        from acbuild.oci.manifests import parse_platform

        platform = parse_platform(args.platform)
    return options, platform


def add_store_dir_option(parser) -> None:
    parser.add_argument("--store-dir", type=Path, metavar="DIR",
                        help="the image store (default: $ACBUILD_STORE_DIR, else $XDG_DATA_HOME/acbuild/images)")


def add_store_options(parser, pull_default: str = "missing") -> None:
    """The image store and fetching of images by name (build, begin, launch, fetch)."""
    from acbuild.fetch import PULL_POLICIES

    group = parser.add_argument_group("images by name (the image store)")
    add_store_dir_option(group)
    group.add_argument("--pull", choices=PULL_POLICIES, default=pull_default,
                       help=f"missing: ask discovery only when the store has no match; always: ask every time "
                            f"(an unchanged image is not downloaded again); never: the store only (default: {pull_default})")


def store_dir_from_args(args, config=None) -> Path:
    from acbuild.config import load_config
    from acbuild.dirs import store_root

    if getattr(args, "store_dir", None):
        return args.store_dir
    if os.environ.get("ACBUILD_STORE_DIR"):
        return store_root()
    config = config or load_config(getattr(args, "config", None))
    return config.store_dir or store_root()


def fetcher_from_args(args, config=None, *, reporter=None):
    """The Fetcher (acbuild.fetch) that a command's store, discovery and trust flags describe."""
    from acbuild.config import load_config
    from acbuild.fetch.fetcher import FetchOptions, Fetcher
    from acbuild.limits import max_image_size
    from acbuild.report import Reporter

    config = config or load_config(getattr(args, "config", None))
    trust = trust_settings(args, config)
    # docker:// images: --creds and --platform where the command has them (TLS from discovery's flags).
    registry, platform = registry_options(args) if hasattr(args, "creds") else (None, None)
    return Fetcher(FetchOptions(
        store_dir=store_dir_from_args(args, config).absolute(),
        trust_dirs=trust["trust_dirs"],
        insecure_skip_verify=trust["insecure_skip_verify"],
        pull=getattr(args, "pull", "missing"),
        max_size=max_image_size(),  # acbuild --max-image-size: what one image may hold caps its download
        discovery=discovery_from_args(_discovery_defaults(args), config),
        reporter=reporter or Reporter(),
        registry=registry,
        platform=platform,
    ))


def _discovery_defaults(args) -> argparse.Namespace:
    """`args`, with the discovery flags' defaults where the command has none (the
    interactive verbs that may render a dependency by name: acbuild.toml decides)."""
    defaults = {"insecure": False, "discovery_port": None, "ca_file": None, "timeout": None}
    return argparse.Namespace(**{**defaults, **vars(args)})


class LazyFetcher:
    """fetcher_from_args, built on first use: verbs that never fetch (most interactive
    ones) and builds whose every step is cached do not pay for the network modules'
    imports."""

    def __init__(self, args, config=None, *, reporter=None):
        self._args, self._config, self._reporter, self._fetcher = args, config, reporter, None

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy, pickle and friends probe for these: not a reason to fetch
            raise AttributeError(name)
        if self._fetcher is None:
            self._fetcher = fetcher_from_args(self._args, self._config, reporter=self._reporter)
        return getattr(self._fetcher, name)
