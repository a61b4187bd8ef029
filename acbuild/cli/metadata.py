"""Interactive manifest verbs with add and remove (alias rm), as Go acbuild had them:
label, annotation, environment (env), isolator, mount, port, dependency (dep).

Each builds one plan instruction (LABEL, ..., or REMOVE KIND NAME), which checks
its own values as it does for the ACIfile compiler, and runs it through
session_verbs.mutating (the build in progress, or --modify IMAGE). Removing
what is not there is "not found" (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acbuild.cli.session import Edit, mutating, pos_of, verb_parser
from acbuild.errors import NotFoundError, UsageError


def _remove(what: str):
    def make(args) -> list[Edit]:
        from acbuild import plan as p

        return [Edit(p.Remove(what=what, name=args.name, pos=pos_of(args)))]

    return make


def make_label(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Label(items=((args.name, args.value),), pos=pos_of(args)))]


def make_annotation(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Annotation(items=((args.name, args.value),), pos=pos_of(args)))]


def make_env(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Env(items=((args.name, args.value),), pos=pos_of(args)))]


def make_isolator(args) -> list[Edit]:
    from acbuild import plan as p

    verb = f'isolator add "{args.name}"'
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as e:
        raise NotFoundError(f"{verb}: read {args.file}: {e.strerror}") from e
    from acbuild.limits import check_json_depth

    check_json_depth(text, f"{verb}: {args.file}", error=UsageError)
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{verb}: {args.file} is not JSON ({e})") from None
    value_json = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return [Edit(p.Isolator(name=args.name, value_json=value_json, pos=pos_of(args)))]


def make_mount(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.MountPoint(name=args.name, path=args.path, read_only=args.read_only, pos=pos_of(args)))]


def make_port(args) -> list[Edit]:
    from acbuild import plan as p

    if not args.port.isdigit():
        raise UsageError(f'port add: the port must be a whole number, not "{args.port}"')
    return [Edit(p.Port(name=args.name, protocol=args.protocol, port=int(args.port), count=args.count,
                        socket_activated=args.socket_activated, pos=pos_of(args)))]


def make_dependency(args) -> list[Edit]:
    from acbuild import plan as p

    labels = []
    for item in args.label:
        name, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f'dependency add: --label "{item}": expected NAME=VALUE')
        labels.append((name, value))
    return [Edit(p.Dependency(image_name=args.name, image_id=args.image_id or "", labels=tuple(labels),
                              size=args.size, pos=pos_of(args)))]


def add_parser(sub) -> None:
    # (verb, aliases, REMOVE kind, help, add-arguments, make-add, remove's NAME meaning)
    groups = (
        ("label", (), "LABEL", "manage labels", _args_name_value, make_label),
        ("annotation", (), "ANNOTATION", "manage annotations", _args_name_value, make_annotation),
        ("environment", ("env",), "ENV", "manage environment variables", _args_name_value, make_env),
        ("isolator", (), "ISOLATOR", "manage isolators", _args_isolator, make_isolator),
        ("mount", (), "MOUNT", "manage mount points", _args_mount, make_mount),
        ("port", (), "PORT", "manage ports", _args_port, make_port),
        ("dependency", ("dep",), "DEPENDENCY", "manage dependencies", _args_dependency, make_dependency),
    )
    for verb, aliases, kind, what, add_args, make in groups:
        group = sub.add_parser(verb, aliases=list(aliases), help=what, description=what)
        actions = group.add_subparsers(title="actions", metavar="add|remove", dest="action", required=True,
                                       parser_class=type(group))
        add = verb_parser(actions, "add", f"{verb} add", verb_path=f"{verb} add")
        add_args(add)
        add.set_defaults(run=mutating(make))
        rm = verb_parser(actions, "remove", f"{verb} remove", aliases=("rm",), verb_path=f"{verb} remove")
        rm.add_argument("name", metavar="NAME")
        rm.set_defaults(run=mutating(_remove(kind)))


def _args_name_value(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("value", metavar="VALUE")


def _args_isolator(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="e.g. resource/memory")
    parser.add_argument("file", metavar="FILE|-", help="the isolator's JSON value (- reads stdin)")


def _args_mount(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("--read-only", action="store_true")


def _args_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("protocol", metavar="PROTOCOL")
    parser.add_argument("port", metavar="PORT")
    parser.add_argument("--count", type=int, default=1, help="a range: PORT to PORT+COUNT-1")
    parser.add_argument("--socket-activated", action="store_true")


def _args_dependency(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="IMAGE-NAME")
    parser.add_argument("--image-id", metavar="ID")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--size", type=int, default=0, metavar="BYTES")
