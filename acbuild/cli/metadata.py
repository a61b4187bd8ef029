"""Interactive manifest verbs with add and remove (alias rm), as Go acbuild had them:
label, annotation, environment (env), isolator, mount, port, dependency (dep).

Each builds one plan instruction (LABEL, ..., or REMOVE KIND NAME) checked with
the same appc rules the ACIfile compiler uses, and runs it through
session_verbs.mutating (the build in progress, or --modify IMAGE). Removing
what is not there is "not found" (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acbuild import plan as p
from acbuild.cli.session import Edit, mutating, pos_of, verb_parser
from acbuild.errors import NotFoundError, UsageError


def _check(problem: str | None, verb: str) -> None:
    if problem:
        raise UsageError(f"{verb}: {problem}")


def _remove(what: str):
    def make(args) -> list[Edit]:
        return [Edit(p.Remove(what=what, name=args.name, pos=pos_of(args)))]

    return make


def make_label(args) -> list[Edit]:
    from acbuild.aci.types import acidentifier_problem

    _check(acidentifier_problem(args.name), f'label add "{args.name}"')
    if args.name == "name":
        raise UsageError('label add: a label cannot be called "name" (use set-name)')
    return [Edit(p.Label(items=((args.name, args.value),), pos=pos_of(args)))]


def make_annotation(args) -> list[Edit]:
    from acbuild.aci import types as t

    verb = f'annotation add "{args.name}"'
    _check(t.acidentifier_problem(args.name), verb)
    if args.name == "created":
        _check(t.date_problem(args.value), verb)
    if args.name in ("homepage", "documentation"):
        _check(t.url_problem(args.value), verb)
    return [Edit(p.Annotation(items=((args.name, args.value),), pos=pos_of(args)))]


def make_env(args) -> list[Edit]:
    from acbuild.aci.types import env_name_problem

    _check(env_name_problem(args.name), f'environment add "{args.name}"')
    return [Edit(p.Env(items=((args.name, args.value),), pos=pos_of(args)))]


def make_isolator(args) -> list[Edit]:
    from acbuild.aci import types as t

    verb = f'isolator add "{args.name}"'
    _check(t.acidentifier_problem(args.name), verb)
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
    _check(t.isolator_problem(args.name, value), verb)
    value_json = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return [Edit(p.Isolator(name=args.name, value_json=value_json, pos=pos_of(args)))]


def make_mount(args) -> list[Edit]:
    from acbuild.aci.types import acname_problem

    _check(acname_problem(args.name), f'mount add "{args.name}"')
    if not args.path.startswith("/"):
        raise UsageError(f'mount add: the path must be absolute, not "{args.path}"')
    return [Edit(p.MountPoint(name=args.name, path=args.path, read_only=args.read_only, pos=pos_of(args)))]


def make_port(args) -> list[Edit]:
    from acbuild.aci.types import acname_problem

    _check(acname_problem(args.name), f'port add "{args.name}"')
    if not args.protocol:
        raise UsageError("port add: empty protocol")
    if not args.port.isdigit() or not 1 <= int(args.port) <= 65535:
        raise UsageError(f'port add: the port must be a number from 1 to 65535, not "{args.port}"')
    port = int(args.port)
    if not 1 <= args.count or port + args.count > 65536:
        raise UsageError(f"port add: --count {args.count} does not fit: ports {port} to {port + args.count - 1}")
    return [Edit(p.Port(name=args.name, protocol=args.protocol, port=port, count=args.count,
                        socket_activated=args.socket_activated, pos=pos_of(args)))]


def make_dependency(args) -> list[Edit]:
    from acbuild.aci import types as t

    verb = f'dependency add "{args.name}"'
    _check(t.acidentifier_problem(args.name), verb)
    if args.image_id:
        _check(t.image_id_problem(args.image_id), verb)
    labels = []
    for item in args.label:
        name, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f'{verb}: --label "{item}": expected NAME=VALUE')
        _check(t.acidentifier_problem(name), f"{verb}: --label")
        labels.append((name, value))
    if args.size < 0:
        raise UsageError(f"{verb}: --size must not be negative")
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
