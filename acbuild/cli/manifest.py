"""acbuild cat-manifest and patch-manifest: actool's two manifest commands.

patch-manifest takes actool 0.8.11's options and fixes its documented quirks:
- a capabilities retain-set and remove-set together are refused;
- the patched manifest is validated before anything is written;
- the output appears atomically (temp file + fsync + rename), --replace too,
  and nothing is left behind on failure;
- --manifest is refused with *any* other editing option (actool forgot some);
- --exec is split like a shell would (actool splits on single spaces);
- a mount point, port or isolator replaces an existing one of the same name
  instead of adding a duplicate;
- the output keeps the input's compression unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CAT_DESCRIPTION = """\
Print the manifest of IMAGE (an .aci or an image layout directory) exactly as
stored, or with --pretty decoded and indented with 4 spaces (as
`actool cat-manifest --pretty-print` does). Without IMAGE, print the manifest
of the interactive build in progress (see `acbuild begin`)."""

CAT_EPILOG = """\
examples:
  acbuild cat-manifest app.aci
  acbuild cat-manifest --pretty build/layout
  acbuild cat-manifest            # the interactive build in progress"""

PATCH_DESCRIPTION = """\
Copy INPUT.aci to OUTPUT.aci (or rewrite INPUT in place with --replace) with its
manifest patched. Options follow `actool patch-manifest`; unlike actool, the
result is validated before it is written, the output appears atomically, and a
capabilities retain-set cannot be combined with a remove-set.

List syntax (as actool's): several mounts, ports or isolators are separated by
':'; each is NAME followed by ',key=value' pairs:
  --mounts   NAME,path=/abs[,readOnly=true]
  --ports    NAME,protocol=tcp,port=N[,count=N][,socketActivated=true]
  --isolators resource/NAME,request=Q,limit=Q   (resource isolators only)"""

PATCH_EPILOG = """\
examples:
  acbuild patch-manifest --name example.com/app --exec "/bin/app --debug" in.aci out.aci
  acbuild patch-manifest --user 1000 --group 1000 --supplementary-gids 10,20 --replace app.aci
  acbuild patch-manifest --ports http,protocol=tcp,port=8080 --mounts data,path=/data in.aci out.aci
  acbuild patch-manifest --capability CAP_NET_BIND_SERVICE --isolators resource/memory,limit=1G in.aci out.aci
  acbuild patch-manifest --seccomp-mode retain,errno=EPERM --seccomp-set read,write,exit in.aci out.aci
  acbuild patch-manifest --manifest new-manifest.json --replace app.aci"""

EDIT_OPTIONS = ("name", "exec", "user", "group", "supplementary_gids", "capability", "revoke_capability",
                "mounts", "ports", "isolators", "seccomp_mode", "seccomp_set")


def add_parser(sub: argparse._SubParsersAction) -> None:
    cat = sub.add_parser("cat-manifest", help="print the manifest of an ACI or image layout",
                         description=CAT_DESCRIPTION, epilog=CAT_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    cat.add_argument("image", metavar="IMAGE", nargs="?",
                     help="an .aci file or an image layout directory (default: the interactive build in progress)")
    cat.add_argument("--pretty", "--pretty-print", action="store_true",
                     help="decode and print indented (4 spaces), in canonical field order")
    cat.set_defaults(run=run_cat)

    p = sub.add_parser("patch-manifest", help="copy an ACI with its manifest patched",
                       description=PATCH_DESCRIPTION, epilog=PATCH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT.aci", help="the image to patch")
    p.add_argument("output", metavar="OUTPUT.aci", nargs="?", help="where to write the result (not with --replace)")
    p.add_argument("--manifest", metavar="FILE", help="use this JSON file as the whole new manifest")
    p.add_argument("--name", help="replace the image name")
    p.add_argument("--exec", metavar="CMDLINE", help="replace app.exec (split like a shell; creates the app if missing)")
    p.add_argument("--user", help="replace app.user")
    p.add_argument("--group", help="replace app.group")
    p.add_argument("--supplementary-gids", "--supplementary-groups", dest="supplementary_gids", metavar="GID,...",
                   help="replace app.supplementaryGIDs (comma-separated integers)")
    p.add_argument("--capability", metavar="CAP,...", help="set the capabilities retain-set (os/linux/capabilities-retain-set)")
    p.add_argument("--revoke-capability", metavar="CAP,...", help="set the capabilities remove-set (os/linux/capabilities-remove-set)")
    p.add_argument("--mounts", metavar="SPEC[:SPEC...]", help="add or replace mount points: NAME,path=/abs[,readOnly=true]")
    p.add_argument("--ports", metavar="SPEC[:SPEC...]",
                   help="add or replace ports: NAME,protocol=P,port=N[,count=N][,socketActivated=true]")
    p.add_argument("--isolators", metavar="SPEC[:SPEC...]",
                   help="add or replace resource isolators: resource/NAME,request=Q,limit=Q")
    p.add_argument("--seccomp-mode", metavar="retain|remove[,errno=EXXX]",
                   help="seccomp isolator mode (needs --seccomp-set)")
    p.add_argument("--seccomp-set", metavar="SYSCALL,...", help="syscalls for the seccomp isolator (needs --seccomp-mode)")
    p.add_argument("--replace", action="store_true", help="rewrite INPUT in place (atomically)")
    p.add_argument("--overwrite", action="store_true", help="allow OUTPUT to exist already")
    p.add_argument("--no-compression", action="store_true", help="write an uncompressed tar (same as --compression none)")
    p.add_argument("--compression", choices=("gzip", "xz", "bzip2", "none"),
                   help="compression of the output (default: the input's)")
    p.set_defaults(run=run_patch)


def run_cat(args: argparse.Namespace) -> int:
    if args.image is None:  # interactive form: the build in progress (acbuild.cli.session)
        from acbuild.cli.session import run_cat_current

        return run_cat_current(args)
    from acbuild.aci.archive import read_manifest_bytes

    print_manifest(read_manifest_bytes(args.image), args.pretty)
    return 0


def print_manifest(data: bytes, pretty: bool) -> None:
    """A manifest on stdout, exactly as stored or (pretty) decoded and indented."""
    if pretty:
        from acbuild.aci.manifest import ImageManifest

        data = ImageManifest.from_json(data).to_json(pretty=True)
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")
    out.flush()


def _check_args(args: argparse.Namespace) -> None:
    from acbuild.errors import UsageError

    edits = [o for o in EDIT_OPTIONS if getattr(args, o) is not None]
    if args.replace and (args.output or args.overwrite):
        raise UsageError("patch-manifest: --replace takes one file and no --overwrite")
    if not args.replace and not args.output:
        raise UsageError("patch-manifest: give INPUT.aci and OUTPUT.aci (or use --replace)")
    if args.output:
        from acbuild.aci.writer import check_output_path

        check_output_path(Path(args.output))
    if args.manifest and edits:
        raise UsageError("patch-manifest: --manifest cannot be combined with --" + edits[0].replace("_", "-"))
    if not args.manifest and not edits:
        raise UsageError("patch-manifest: nothing to patch (give --manifest or an editing option)")
    if args.capability is not None and args.revoke_capability is not None:
        raise UsageError("patch-manifest: --capability (retain-set) and --revoke-capability (remove-set) "
                         "cannot be used together; the appc spec forbids mixing them")
    if (args.seccomp_mode is None) != (args.seccomp_set is None):
        raise UsageError("patch-manifest: --seccomp-mode and --seccomp-set go together")
    if args.no_compression and args.compression not in (None, "none"):
        raise UsageError("patch-manifest: --no-compression contradicts --compression " + args.compression)


def _kv_list(spec: str, what: str) -> list[tuple[str, dict[str, str]]]:
    """actool's NAME,key=value,...[:NAME,...] syntax."""
    from acbuild.errors import UsageError

    out = []
    for item in spec.split(":"):
        name, *pairs = item.split(",")
        fields: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"patch-manifest: cannot parse {what} {item!r}: expected key=value, got {pair!r}")
            if key in fields:
                raise UsageError(f"patch-manifest: cannot parse {what} {item!r}: {key} given twice")
            fields[key] = value
        if not name:
            raise UsageError(f"patch-manifest: cannot parse {what} {item!r}: missing name")
        out.append((name, fields))
    return out


def _bool(value: str, where: str) -> bool:
    from acbuild.errors import UsageError

    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise UsageError(f"patch-manifest: {where}: expected true or false, got {value!r}")


def _uint(value: str, where: str) -> int:
    from acbuild.errors import UsageError

    if not value.isdigit():
        raise UsageError(f"patch-manifest: {where}: expected a non-negative integer, got {value!r}")
    return int(value)


def _unknown(fields: dict[str, str], allowed: set[str], where: str) -> None:
    from acbuild.errors import UsageError

    extra = sorted(set(fields) - allowed)
    if extra:
        raise UsageError(f"patch-manifest: {where}: unknown parameter {extra[0]!r} (known: {', '.join(sorted(allowed))})")


def patch(m, args: argparse.Namespace) -> None:
    """Apply the editing options to the ImageManifest `m`."""
    import shlex

    from acbuild.aci import manifest as mf
    from acbuild.aci.types import RESOURCE_ISOLATORS
    from acbuild.errors import UsageError

    if args.name is not None:
        m.name = args.name
    app = m.app
    if args.exec is not None:
        try:
            argv = shlex.split(args.exec)
        except ValueError as e:
            raise UsageError(f"patch-manifest: --exec: {e}") from e
        app = m.ensure_app()
        app.exec = argv
    needs_app = [o for o in EDIT_OPTIONS[2:] if getattr(args, o) is not None]
    if needs_app and app is None:
        raise UsageError("patch-manifest: the manifest has no app; give --exec to create one")
    if args.user is not None:
        app.user = args.user
    if args.group is not None:
        app.group = args.group
    if args.supplementary_gids is not None:
        gids = [g.strip() for g in args.supplementary_gids.split(",") if g.strip()]
        try:
            app.supplementary_gids = [int(g) for g in gids]
        except ValueError as e:
            raise UsageError(f"patch-manifest: --supplementary-gids: {e}") from e
    for opt, name, other in (("capability", "os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"),
                             ("revoke_capability", "os/linux/capabilities-remove-set", "os/linux/capabilities-retain-set")):
        value = getattr(args, opt)
        if value is None:
            continue
        if any(i.name == other for i in app.isolators):
            raise UsageError(f"patch-manifest: the image already has {other}; it cannot be combined with {name}")
        caps = [c.strip() for c in value.split(",") if c.strip()]
        app.set_isolator(mf.Isolator(name, {"set": caps}))
    if args.mounts is not None:
        for name, f in _kv_list(args.mounts, "mount point"):
            _unknown(f, {"path", "readOnly"}, f"mount point {name}")
            app.set_mount_point(mf.MountPoint(name, f.get("path", ""), _bool(f.get("readOnly", "false"), name)))
    if args.ports is not None:
        for name, f in _kv_list(args.ports, "port"):
            _unknown(f, {"protocol", "port", "count", "socketActivated"}, f"port {name}")
            app.set_port(mf.Port(name, f.get("protocol", ""), _uint(f.get("port", "0"), f"port {name}"),
                                 _uint(f.get("count", "1"), f"port {name}") or 1,
                                 _bool(f.get("socketActivated", "false"), name)))
    if args.isolators is not None:
        for name, f in _kv_list(args.isolators, "isolator"):
            if name not in RESOURCE_ISOLATORS:
                raise UsageError(f"patch-manifest: isolator {name} is not supported for patching "
                                 f"(only {', '.join(sorted(RESOURCE_ISOLATORS))})")
            value: dict = {k: v for k, v in f.items() if k != "default"}
            if "default" in f:
                value = {"default": _bool(f["default"], name), **value}
            app.set_isolator(mf.Isolator(name, value))
    if args.seccomp_mode is not None:
        mode, *opts = args.seccomp_mode.split(",")
        if mode not in ("retain", "remove"):
            raise UsageError(f"patch-manifest: --seccomp-mode must be retain or remove, got {mode!r}")
        value = {"set": [s.strip() for s in args.seccomp_set.split(",") if s.strip()]}
        for opt in opts:
            key, _, v = opt.partition("=")
            if key != "errno":
                raise UsageError(f"patch-manifest: --seccomp-mode: unknown option {opt!r} (only errno=EXXX)")
            value["errno"] = v
        for old in ("os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"):
            app.remove_isolator(old)
        app.set_isolator(mf.Isolator(f"os/linux/seccomp-{mode}-set", value))


def run_patch(args: argparse.Namespace) -> int:
    from acbuild.aci.manifest import ImageManifest
    from acbuild.aci.writer import rewrite_aci
    from acbuild.errors import ImageError, ManifestError, NotFoundError, OutputExistsError
    from acbuild.report import Reporter
    from acbuild.trust.sign import drop_stale_signature

    _check_args(args)
    src = Path(args.input)
    if not src.is_file():
        raise NotFoundError(f"{args.input}: no such file")
    out = src if args.replace else Path(args.output)
    if not args.replace and out.exists() and not args.overwrite:
        raise OutputExistsError(out)
    if args.manifest:
        try:
            new = ImageManifest.from_json(Path(args.manifest).read_bytes())
        except OSError as e:
            raise NotFoundError(f"read {args.manifest}: {e.strerror}") from e
    else:
        from acbuild.aci.archive import read_manifest_bytes

        new = ImageManifest.from_json(read_manifest_bytes(args.input))
        patch(new, args)
    problems = new.problems(strict=True)
    if problems:
        raise ManifestError("patch-manifest: the patched manifest is invalid, nothing written:\n  "
                            + "\n  ".join(problems), problems)
    compression = "none" if args.no_compression else args.compression
    try:
        drop_stale_signature(out, reporter=Reporter())  # the old image's .asc must not sign the new one
        image_id = rewrite_aci(src, out, new.to_json(), compression)
    except OSError as e:
        raise ImageError(f"write {out}: {e}") from e
    print(image_id)
    sys.stdout.flush()
    return 0
