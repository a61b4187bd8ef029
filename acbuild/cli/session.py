"""Interactive verbs, as Go acbuild had them: begin, copy, run, set-*, write, end...

Every mutating verb builds one plan instruction (acbuild.plan) and hands it to
Session.apply, the executor `acbuild build` uses too; then it appends the
instruction to the work path's history (acbuild.engine.interactive.history). State lives in
`--work-path DIR` (default: the current directory), under DIR/.acbuild, locked
for the duration of each verb (acbuild.engine.interactive.workpath).

`--modify IMAGE.aci` (global, before the verb) applies one verb to an existing
image instead and rewrites it atomically: manifest-only verbs copy the rootfs
entries through unchanged; copy, run and set-working-directory extract the
image to a temp dir first. The image's old .asc is removed (it no longer
matches); re-sign with `acbuild sign`.

Exit status: 0 ok, 1 failure, 2 not found (no build in progress, no such label,
file or image), 3 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from acbuild.cli.options import output_image
from acbuild.errors import ARGV, AcbuildError, InstructionError, NotFoundError, SourcePos, UsageError
from acbuild.report import QUIET, Reporter

if TYPE_CHECKING:  # imported where used: --help loads this module and needs no plan
    from acbuild import plan as p

EPILOG = """\
exit status: 0 ok, 1 failure, 2 not found (no build in progress, no such label...),
3 usage error. See 'acbuild begin --help' for the work path."""

BEGIN_EPILOG = """\
examples:
  acbuild begin                     # an empty image (scratch)
  acbuild begin ./base.aci          # start from a local image
  acbuild begin ./rootfs            # start from a directory (a rootfs, or manifest + rootfs/)
  acbuild begin example.com/base:1.0 --ca-file ca.pem   # by name: the image store, else fetched

State lives in WORK-PATH/.acbuild (WORK-PATH: --work-path, default the current
directory); every verb locks it while it runs. SOURCE_DATE_EPOCH is read here,
once, and used for the whole session. `acbuild history` prints the session as
an ACIfile that `acbuild build` turns into the same image ID."""


# -- options every verb takes --------------------------------------------------


def add_global_options(parser: argparse.ArgumentParser, *, sub: bool = False, modify: bool = True) -> None:
    """--work-path, --no-history and --modify, before the verb (top level) or after
    it (sub; verbs that refuse --modify do not offer it)."""
    default = argparse.SUPPRESS if sub else None
    parser.add_argument("--work-path", metavar="DIR", default=default,
                        help="where the build state (.acbuild/) lives (default: the current directory)")
    # Go acbuild's flag, which its scripts pass to every verb. acbuild keeps history
    # in the work path, not in the image; it only stops this verb's annotation.
    parser.add_argument("--no-history", action="store_true", default=default,
                        help="record no appc.io/acbuild/command-N annotation for this verb (see begin --record-annotations)")
    if modify:
        parser.add_argument("--modify", metavar="IMAGE.aci", default=default,
                            help="apply this one verb to an existing image and rewrite it atomically")


def verb_parser(sub, name: str, help: str, *, aliases: tuple[str, ...] = (), description: str | None = None,
                epilog: str = EPILOG, verb_path: str | None = None, modify: bool = True) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, aliases=list(aliases), help=help, description=description or help,
                            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_global_options(parser, sub=True, modify=modify)
    # every verb may touch the rootfs (or, with --modify, unpack an image): as a user,
    # in the namespace of its subordinate ids (acbuild.userns)
    parser.set_defaults(verb_path=verb_path or name, rootfs_work=True)
    return parser


def pos_of(args) -> SourcePos:
    return getattr(args, "pos", ARGV)


def work_path(args):
    from acbuild.engine.interactive.workpath import WorkPath

    return WorkPath(Path(getattr(args, "work_path", None) or "."))


def refuse_modify(args, verb: str) -> None:
    if getattr(args, "modify", None):
        raise UsageError(f"--modify cannot be used with {verb}")


# -- one step: an instruction and the directory its COPY sources are relative to --


class Edit(NamedTuple):  # not a dataclass: `acbuild --help` imports this module, and no dataclasses
    instruction: p.Instruction
    context: Path | None = None
    sources: tuple[str, ...] = ()  # COPY: the sources as absolute host paths

    @property
    def touches_rootfs(self) -> bool:
        from acbuild import plan as p

        return isinstance(self.instruction, p.Copy | p.Run | p.WorkDir)


def mutating(make):
    """A verb's run(args): make(args) -> [Edit], then apply them to the session or --modify image."""

    def run(args) -> int:
        try:
            edits = make(args)
        except InstructionError as err:  # a value breaks a rule: the verb names itself
            raise UsageError(f"{args.verb_path}: {err.problem}") from None
        if getattr(args, "modify", None):
            modify_image(Path(args.modify), edits, args)
        else:
            apply_to_session(edits, args)
        return 0

    return run


def _options(args, source_date_epoch: int, *, images: bool = True):
    """The engine's options for a verb; base and dependency verification follow
    acbuild.toml and the trust flags, as in `acbuild build`. images=False: the verb
    only edits the manifest, so it reads no image, no acbuild.toml and no keys
    (a metadata verb's start-up: tests/test_startup_imports.py)."""
    from acbuild.engine.session import BuildOptions

    if not images:
        return BuildOptions(source_date_epoch=source_date_epoch, debug=bool(getattr(args, "debug", False)), reporter=QUIET)
    from acbuild.cli.options import LazyFetcher, trust_settings
    from acbuild.config import load_config

    config = load_config(getattr(args, "config", None))
    trust = trust_settings(args, config)
    return BuildOptions(source_date_epoch=source_date_epoch, debug=bool(getattr(args, "debug", False)), reporter=QUIET,
                        fetcher=LazyFetcher(args, config), **trust)


def apply_to_session(edits: list[Edit], args) -> None:
    from acbuild.records import replace

    from acbuild.engine.interactive import history
    from acbuild.engine.session import Session

    wp = work_path(args)
    with wp.locked():
        state = wp.read_state()
        images = any(step.touches_rootfs for step in edits)
        session = Session.open(wp.currentaci, _options(args, state.source_date_epoch, images=images))
        for step in edits:
            context = step.context or Path(state.begin_cwd or ".")
            session.options = replace(session.options, context=context, ignore=wp.skips_state(context))
            session.apply(step.instruction)
            session.save()
            manifest_after = None if step.touches_rootfs else session.manifest.to_json()
            wp.append_history(history.step_record(step.instruction, step.context, step.sources, manifest_after))
        if state.record_annotations and not getattr(args, "no_history", False):
            note = command_annotation(session.manifest, args)
            session.apply(note)
            session.save()
            wp.append_history(history.step_record(note, None))


def command_annotation(manifest, args) -> p.Annotation:
    """Go acbuild's history annotation: appc.io/acbuild/command-N = the command."""
    from acbuild import plan as p

    import json
    import re

    numbers = [int(m.group(1)) for a in manifest.annotations if (m := re.fullmatch(r"appc\.io/acbuild/command-(\d+)", a.name))]
    words = getattr(args, "words", None) or sys.argv[1:]
    path = args.verb_path.split()
    rest = words[_verb_end(words, path):]
    command = " ".join(["acbuild", *path, *(json.dumps(w) for w in rest)])
    return p.Annotation(items=((f"appc.io/acbuild/command-{max(numbers, default=0) + 1}", command),), pos=pos_of(args))


def _verb_end(words: list[str], path: list[str]) -> int:
    """Index just past the verb's own names (aliases included) in the typed words."""
    seen, i = 0, 0
    while i < len(words) and seen < len(path):
        if words[i] in ("--work-path", "--modify"):
            i += 2
            continue
        if not words[i].startswith("-"):
            seen += 1
        i += 1
    return i


def modify_image(image: Path, edits: list[Edit], args) -> None:
    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.engine.interactive.modify import modify_image as modify
    from acbuild.trust.sign import signature_path

    if modify(image, [(s.instruction, s.context) for s in edits], _options(args, source_date_epoch_from_env())):
        print(f"acbuild: removed {signature_path(image)}: it signed the old image (re-sign with acbuild sign)",
              file=sys.stderr)


# -- begin / write / end / history / cat-manifest ----------------------------------


def run_begin(args) -> int:
    from acbuild.records import replace

    from acbuild import plan as p
    from acbuild.aci.writer import source_date_epoch_from_env
    from acbuild.engine.interactive import history
    from acbuild.files import remove_tree
    from acbuild.engine.session import Session
    from acbuild.engine.interactive.workpath import IN_PROGRESS, SessionState

    refuse_modify(args, "begin")
    start = args.start or "scratch"
    base = start
    if start != "scratch":
        if os.path.exists(start):
            base = os.path.abspath(start)
        elif start.startswith((".", "/")) or start.endswith(".aci"):
            raise NotFoundError(f"begin: {start}: no such file or directory")
    wp = work_path(args)
    sde = source_date_epoch_from_env()
    with wp.locked(create=True):
        if wp.in_progress():
            raise AcbuildError(IN_PROGRESS)
        try:
            remove_tree(wp.currentaci)
            wp.history_path.unlink(missing_ok=True)
            state = SessionState(source_date_epoch=sde, begin_cwd=os.getcwd(), record_annotations=args.record_annotations)
            wp.write_state(state)
            options = replace(_options(args, sde), context=Path.cwd())
            Session.begin(wp.currentaci, p.From(base=base, pos=pos_of(args)), options)
            wp.append_history(history.begin_record(base))
        except BaseException:
            remove_tree(wp.currentaci)
            wp.history_path.unlink(missing_ok=True)
            wp.state_path.unlink(missing_ok=True)
            raise
    return 0


def run_write(args) -> int:
    from acbuild.records import replace

    from acbuild.engine.session import Session
    from acbuild.trust.sign import SigningOptions

    refuse_modify(args, "write")
    if (args.key or args.gpg_home or args.passphrase_file) and not args.sign:
        raise UsageError("write: --key, --gpg-home and --passphrase-file go with --sign")
    signing = None
    if args.sign:
        from acbuild.cli.options import read_passphrase

        passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
        signing = SigningOptions(key=args.key, gpg_home=args.gpg_home, passphrase=passphrase)
    wp = work_path(args)
    with wp.locked():
        state = wp.read_state()
        session = Session.open(wp.currentaci, _options(args, state.source_date_epoch))
        session.options = replace(session.options, reporter=Reporter())
        image_id = session.write(Path(args.out), compression=args.compression, overwrite=args.overwrite,
                                 signing=signing)
    print(image_id)
    return 0


def run_end(args) -> int:
    from acbuild.files import remove_tree
    from acbuild.engine.interactive.workpath import NO_BUILD

    refuse_modify(args, "end")
    wp = work_path(args)
    with wp.locked():
        if not wp.in_progress():
            raise NotFoundError(NO_BUILD)
        remove_tree(wp.state_dir)
    return 0


def run_history(args) -> int:
    from acbuild.engine.interactive import history
    from acbuild.engine.interactive.workpath import NO_BUILD

    refuse_modify(args, "history")
    wp = work_path(args)
    with wp.locked():
        if not wp.in_progress():
            raise NotFoundError(NO_BUILD)
        state = wp.read_state()
        text = history.render(wp.read_history(), state.begin_cwd or os.getcwd(), wp.root)
    sys.stdout.write(text)
    return 0


def run_cat_current(args) -> int:
    """`cat-manifest` without IMAGE: the build in progress (or the --modify image)."""
    from acbuild.aci.manifest import ImageManifest
    from acbuild.engine.interactive.workpath import NO_BUILD

    if getattr(args, "modify", None):
        from acbuild.aci.archive import read_manifest_bytes

        data = read_manifest_bytes(args.modify)
    else:
        wp = work_path(args)
        with wp.locked():
            if not wp.in_progress():
                raise NotFoundError(NO_BUILD)
            data = (wp.currentaci / "manifest").read_bytes()
    if args.pretty:
        data = ImageManifest.from_json(data).to_json(pretty=True)
    sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
    sys.stdout.flush()
    return 0


# -- rootfs verbs and the set-* verbs -------------------------------------------------


def copy_steps(sources: list[str], dest: str, pos: SourcePos) -> list[Edit]:
    """Host paths -> one COPY whose context is the current directory when it holds
    every source, else the deepest directory holding them all."""
    from acbuild import plan as p

    absolute = tuple(os.path.abspath(s) for s in sources)
    for given, path in zip(sources, absolute):
        if not os.path.lexists(path):
            raise NotFoundError(f"copy: {given}: no such file or directory")
    cwd = os.getcwd()
    if all(a == cwd or a.startswith(cwd.rstrip("/") + "/") for a in absolute):
        context = cwd
    else:
        context = os.path.commonpath([os.path.dirname(a) for a in absolute])
    relative = tuple(os.path.relpath(a, context) for a in absolute)
    copy = p.Copy(sources=relative, dest=dest, pos=pos)
    return [Edit(copy, Path(context), absolute)]


def make_copy(args) -> list[Edit]:
    if not args.dest:
        raise UsageError("copy: empty destination")
    return copy_steps([args.src], args.dest, pos_of(args))


def make_copy_to_dir(args) -> list[Edit]:
    """Each source lands inside DIR under its own name (a directory too, as in Go acbuild)."""
    if len(args.paths) < 2:
        raise UsageError("copy-to-dir: give one or more sources and the directory: copy-to-dir SRC... DIR")
    *sources, directory = args.paths
    directory = directory.rstrip("/") + "/"
    files = [s for s in sources if not os.path.isdir(s)]
    dirs = [s for s in sources if os.path.isdir(s)]
    edits = copy_steps(files, directory, pos_of(args)) if files else []
    for d in dirs:  # COPY copies a directory's contents, so name the target
        edits += copy_steps([d], directory + os.path.basename(os.path.abspath(d)), pos_of(args))
    return edits


def command_words(words: list[str], verb: str) -> tuple[str, ...]:
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError(f"{verb}: missing command (usage: acbuild {verb} -- CMD [ARG...])")
    return tuple(words)


def make_run(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Run(argv=command_words(args.command, "run"), network=args.network or "", pos=pos_of(args)))]


def make_set_exec(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Exec(argv=command_words(args.command, "set-exec"), pos=pos_of(args)))]


def make_set_event_handler(args) -> list[Edit]:
    from acbuild import plan as p

    argv = command_words(args.command, f"set-event-handler {args.event}")
    return [Edit(p.EventHandler(event=args.event, argv=argv, pos=pos_of(args)))]


def make_set_name(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.SetName(name=args.name, pos=pos_of(args)))]


def make_set_user(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.User(user=args.user, pos=pos_of(args)))]


def make_set_group(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.Group(group=args.group, pos=pos_of(args)))]


def make_set_supp_groups(args) -> list[Edit]:
    from acbuild import plan as p

    bad = [g for g in args.gids if not g.isdigit()]
    if bad:
        raise UsageError(f'set-supp-groups: "{bad[0]}" is not a group id (a whole number)')
    return [Edit(p.SupplementaryGroups(gids=tuple(int(g) for g in args.gids), pos=pos_of(args)))]


def make_set_working_directory(args) -> list[Edit]:
    from acbuild import plan as p

    return [Edit(p.WorkDir(path=args.path, pos=pos_of(args)))]


def make_replace_manifest(args) -> list[Edit]:
    from acbuild import plan as p

    from acbuild.aci.manifest import ImageManifest

    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        raise NotFoundError(f"replace-manifest: read {args.file}: {e.strerror}") from e
    manifest = ImageManifest.from_json(data)
    problems = manifest.problems(strict=True)
    if problems:
        raise AcbuildError(f"replace-manifest: {args.file}: {problems[0]}")
    return [Edit(p.ReplaceManifest(manifest_json=manifest.to_json().decode(), pos=pos_of(args)))]


# -- the parsers -------------------------------------------------------------------------


def add_parser(sub) -> None:
    from acbuild.cli.options import add_discovery_options, add_owner_options, add_store_options, add_trust_options

    b = verb_parser(sub, "begin", "start a new interactive build", epilog=BEGIN_EPILOG, modify=False)
    b.add_argument("start", nargs="?", metavar="scratch|IMAGE.aci|DIR|NAME",
                   help="what to start from (default: scratch); a NAME[:VERSION][,LABEL=VALUE...] comes from the "
                        "image store, else is discovered and fetched")
    b.add_argument("--record-annotations", action="store_true",
                   help="also record each verb as an appc.io/acbuild/command-N annotation, as Go acbuild did "
                        "(off by default: it changes the image ID)")
    add_trust_options(b)
    add_store_options(b)
    add_discovery_options(b)
    add_owner_options(b)
    b.set_defaults(run=run_begin)

    c = verb_parser(sub, "copy", "copy a host file or directory into the image")
    c.add_argument("src", metavar="SRC", help="a host path (relative to the current directory, or absolute)")
    c.add_argument("dest", metavar="DEST", help="the path in the image")
    add_owner_options(c)
    c.set_defaults(run=mutating(make_copy))

    c = verb_parser(sub, "copy-to-dir", "copy host files or directories into a directory of the image")
    c.add_argument("paths", nargs="+", metavar="SRC... DIR")
    add_owner_options(c)
    c.set_defaults(run=mutating(make_copy_to_dir))

    r = verb_parser(sub, "run", "run a command in the image (acbuild run -- CMD [ARG...])")
    r.add_argument("--network", choices=("none", "host"), help="network for the command (default: none, loopback only)")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    add_owner_options(r)
    r.set_defaults(run=mutating(make_run))

    e = verb_parser(sub, "set-exec", "set the command the image runs (acbuild set-exec -- CMD [ARG...])")
    e.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    e.set_defaults(run=mutating(make_set_exec))

    h = verb_parser(sub, "set-event-handler", "set a pre-start or post-stop command")
    h.add_argument("event", choices=("pre-start", "post-stop"))
    h.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    h.set_defaults(run=mutating(make_set_event_handler))

    for name, dest, aliases, make, what in (
        ("set-name", "name", (), make_set_name, "set the image name"),
        ("set-user", "user", (), make_set_user, "set the user the app runs as (name or uid)"),
        ("set-group", "group", (), make_set_group, "set the group the app runs as (name or gid)"),
        ("set-working-directory", "path", ("set-wd", "set-working-dir"), make_set_working_directory,
         "set the app's working directory (created in the image)"),
    ):
        s = verb_parser(sub, name, what, aliases=aliases)
        s.add_argument(dest, metavar=dest.upper())
        s.set_defaults(run=mutating(make))

    g = verb_parser(sub, "set-supp-groups", "set the app's supplementary group ids", aliases=("set-supplementary-groups",))
    g.add_argument("gids", nargs="+", metavar="GID")
    g.set_defaults(run=mutating(make_set_supp_groups))

    m = verb_parser(sub, "replace-manifest", "replace the whole manifest with a JSON file (- for stdin)")
    m.add_argument("file", metavar="FILE")
    m.set_defaults(run=mutating(make_replace_manifest))

    w = verb_parser(sub, "write", "write the image being built to OUT.aci and print its image ID", modify=False)
    w.add_argument("out", metavar="OUT.aci", type=output_image)
    w.add_argument("--overwrite", action="store_true", help="replace OUT.aci if it exists")
    w.add_argument("--sign", action="store_true", help="also write OUT.aci.asc (a detached signature)")
    w.add_argument("--key", help="signing key (default: gpg's)")
    w.add_argument("--gpg-home", type=Path, metavar="DIR", help="GnuPG home (default: GNUPGHOME)")
    w.add_argument("--passphrase-file", type=Path, metavar="FILE", help="read the key's passphrase from FILE")
    w.add_argument("--compression", choices=("gzip", "xz", "bzip2", "none"), default="gzip", help="default: gzip")
    w.set_defaults(run=run_write)

    verb_parser(sub, "end", "end the build and remove its state", modify=False).set_defaults(run=run_end)
    verb_parser(sub, "history", "print the build so far as an ACIfile", modify=False).set_defaults(run=run_history)
