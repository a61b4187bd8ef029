"""acbuild script FILE: Go acbuild's script DSL, run in this process.

One verb per line, as typed after `acbuild` (`begin`, `copy a b`, `run -- cmd`,
`write out.aci`, `end`); `#` starts a comment outside quotes; words are split
like a shell's (quotes and backslashes); a line ending in `\\` continues on the
next. Scripts start with `#!/usr/bin/env acbuild-script` to run directly.

Differences from Go acbuild, on purpose:
- Lines go through the same parser and Session as the command line, in this
  process (Go re-executed itself once per line).
- `end` is allowed (Go refused it): it ends the build; the build left open at
  the end of the script is ended anyway, as in Go.
- `run` and `set-exec` take their command with or without `--`.
Like Go: the script builds in a private temporary work path (a nested
`script` line shares it), paths are relative to the current directory, and a
failing line ends the build and stops the script. Errors name FILE:LINE.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from acbuild.cli.session import refuse_modify, verb_parser
from acbuild.errors import AcbuildError, NotFoundError, SourcePos, UsageError
from acbuild.temps import locked_temp_dir, remove_locked_dir

MAX_NESTING = 8


def add_parser(sub) -> None:
    s = verb_parser(sub, "script", "run an acbuild script (one verb per line)",
                    description=__doc__.split("\n\n", 1)[1], epilog="example:\n  acbuild script build-hello.acb", modify=False)
    s.add_argument("file", metavar="SCRIPT")
    s.set_defaults(run=run_script)


def logical_lines(text: str, path: str = "") -> list[tuple[int, str]]:
    """(first line number, text) with backslash-newline continuations joined. A
    script whose last line continues is refused, as Go acbuild did ("ended with an
    escape"): dropping the backslash would run a line the author did not finish."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line
            pending = None
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = (number, line[:-1].rstrip())
            continue
        out.append((number, line))
    if pending is not None:
        lines = text.splitlines()
        raise UsageError("the script ended with an escape: its last line ends in \\ and continues nothing",
                         SourcePos(path, len(lines), len(lines[-1].rstrip()), lines[-1]))
    return out


def run_script(args) -> int:
    from acbuild.cli import build_parser

    refuse_modify(args, "script")
    from acbuild import limits

    path = Path(args.file)
    try:
        text = limits.read_regular_file(path, "script", limits.MAX_ACIFILE_BYTES, error=AcbuildError).decode()
    except FileNotFoundError:
        raise NotFoundError(f"script: {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise AcbuildError(f"script: read {path}: {e}") from e
    limits.check_acifile_text(text, str(path))
    depth = getattr(args, "script_depth", 0)
    if depth >= MAX_NESTING:
        raise UsageError(f"script: {path}: scripts nested more than {MAX_NESTING} deep")
    nested = depth > 0
    work, lock = (Path(args.work_path), None) if nested else locked_temp_dir("acbuild-script-")
    parser = build_parser()
    try:
        for number, line in logical_lines(text, str(path)):
            pos = SourcePos(str(path), number, 1, line)
            try:
                run_line(parser, line, pos, work, args, depth)
            except AcbuildError as err:
                if err.pos is None or not err.pos.line:
                    err.pos = pos
                raise
    finally:
        if not nested:
            remove_locked_dir(work, lock)
    return 0


def run_line(parser, line: str, pos: SourcePos, work: Path, args, depth: int) -> None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise UsageError(f"cannot split the line: {e}") from None
    if not words:
        return
    words[0] = words[0].lower()
    ns = parser.parse_args(words)
    if not hasattr(ns, "run"):
        raise UsageError(f'"{words[0]}" is not a verb')
    if getattr(ns, "modify", None):
        raise UsageError("--modify cannot be used in a script")
    ns.pos, ns.words, ns.work_path = pos, words, str(work)
    ns.debug = ns.debug or getattr(args, "debug", False)
    ns.script_depth = depth + 1
    ns.run(ns)


def script_main() -> int:
    """The `acbuild-script` command, for `#!/usr/bin/env acbuild-script` scripts."""
    from acbuild.cli import main

    if len(sys.argv) < 2:
        print("usage: acbuild-script SCRIPT", file=sys.stderr)
        return 3
    return main(["script", *sys.argv[1:]])
