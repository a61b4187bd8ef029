"""Command-line entry point: argument parsing, and the one place where errors
become exit codes.

Each command lives in its own module under acbuild.cli with two functions:
`add_parser(subparsers)` registers it (and calls `set_defaults(run=run)`), and
`run(args) -> int | None` does the work. Command modules import heavy libraries
(lark, yaml, gnupg, pyroute2) inside `run`, never at module level, so that
`acbuild --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys

from acbuild import __version__
from acbuild.errors import EXIT_FAILURE, EXIT_USAGE, AcbuildError, UsageError

# Module names under acbuild.cli, in the order --help lists them.
COMMANDS = [
    "build",
    "plan",
    "pack",
    "convert",
    "validate",
    "manifest",
    "image_id",
    "push",
    "signing",
    "discover",
    "serve",
    "cache",
    "launch",
    "fetch",
    "image",
    "session",
    "metadata",
    "script",
    "unshare",
]

# Which module defines each command: `acbuild CMD ...` imports and builds only that
# module's parsers (start-up matters for interactive verbs); --help builds all.
# tests/test_cli.py checks this table against what the modules register.
COMMAND_MODULES = {
    "build": "build", "plan": "plan", "pack": "pack", "convert": "convert", "validate": "validate",
    "cat-manifest": "manifest", "patch-manifest": "manifest", "image-id": "image_id", "push": "push",
    "sign": "signing", "trust": "signing", "verify": "signing", "cache": "cache",
    "launch": "launch", "script": "script", "discover": "discover", "serve": "serve", "fetch": "fetch",
    "image": "image", "unshare": "unshare",
    **dict.fromkeys(
        ["begin", "copy", "copy-to-dir", "run", "set-exec", "set-event-handler", "set-name", "set-user",
         "set-group", "set-working-directory", "set-wd", "set-working-dir", "set-supp-groups",
         "set-supplementary-groups", "replace-manifest", "write", "end", "history"],
        "session",
    ),
    **dict.fromkeys(["label", "annotation", "environment", "env", "isolator", "mount", "port", "dependency", "dep"],
                    "metadata"),
}
GLOBAL_OPTIONS_WITH_VALUE = {"--work-path", "--modify", "--max-image-size"}

EPILOG = """\
exit status:
  0  success
  1  failure (build step failed, invalid image, bad signature...)
  2  not found (no such file, image, label or build in progress)
  3  usage error (bad arguments)

Run 'acbuild COMMAND --help' for a command's options."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error raises UsageError (exit 3) instead of exiting 2."""

    def _get_formatter(self):
        # argparse makes a formatter for every argument it adds (to check its metavar),
        # and each asks the terminal for its width: ask once.
        return self.formatter_class(prog=self.prog, width=_help_width())

    def error(self, message: str):  # type: ignore[override]
        # "acbuild: build: unrecognized arguments: x" - the program name is added once, by main().
        command = self.prog.removeprefix("acbuild").strip()
        raise UsageError(f"{command}: {message}" if command else message)


@functools.cache
def _help_width() -> int:
    import shutil

    return shutil.get_terminal_size().columns - 2  # what argparse.HelpFormatter computes


def _untranslated_argparse() -> None:
    """argparse passes each of its own words ("usage: ", "show this help message and
    exit", ...) through gettext, which looks for a translation file on every call: a
    few stat() calls each, 200 calls for --help, a third of its time. acbuild's
    messages are English and Python ships no argparse catalogue, so the lookup
    always ends in the English text; skip it."""
    argparse._ = lambda message: message  # type: ignore[attr-defined]
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


def build_parser(command: str | None = None) -> ArgumentParser:
    """The parser; with a known `command`, only the module that defines it is loaded."""
    _untranslated_argparse()
    parser = ArgumentParser(
        prog="acbuild",
        description="Build, sign, verify and ship App Container Images (appc .aci).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"acbuild {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks and what the sandbox does")
    parser.add_argument("--max-image-size", metavar="SIZE",
                        help="refuse to read an image that holds more than SIZE uncompressed (e.g. 512M, 32G; "
                             "default: $ACBUILD_MAX_IMAGE_SIZE, else max-image-size in acbuild.toml, else 16G)")
    importlib.import_module("acbuild.cli.session").add_global_options(parser)  # --work-path, --modify
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=ArgumentParser)
    for name in [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMANDS:
        importlib.import_module(f"acbuild.cli.{name}").add_parser(sub)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command word in argv, skipping global options (and their values)."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_OPTIONS_WITH_VALUE:
            next(words, None)
        elif word == "--" or not word.startswith("-"):
            return None if word == "--" else word
    return None


def _enter_user_namespace(args) -> None:
    """Commands that make image trees work, run as a user, in the namespace of the
    user's subordinate ids (before anything starts a thread: unshare needs one)."""
    from acbuild import userns

    userns.set_squash_owners(getattr(args, "squash_owners", False))
    for notice in (userns.enter_for_rootfs_work(), userns.squash_notice()):
        if notice:
            print(f"acbuild: {notice}", file=sys.stderr)


def _settle_temp_dir() -> None:
    """Python finds its temp dir by creating and removing a probe file there (named by 8
    random letters); a Ctrl-C between the two would leave it behind. Let that happen
    once, now, with the signals held."""
    import signal
    import tempfile

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        tempfile.gettempdir()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _report_squashed() -> None:
    from acbuild import userns

    report = userns.squashed_report()
    if report:
        print(f"acbuild: {report}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # the fast path: no command modules to import
        print(f"acbuild {__version__}")
        return 0
    debug = "--debug" in argv or bool(os.environ.get("ACBUILD_DEBUG"))
    _signals_as_interrupt()
    try:
        parser = build_parser(command_of(argv))
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if getattr(args, "rootfs_work", False):
            _enter_user_namespace(args)
            _settle_temp_dir()
        if args.max_image_size:
            from acbuild import limits

            limits.set_max_image_size(limits.parse_size(args.max_image_size, "--max-image-size"))
        code = args.run(args) or 0
        if getattr(args, "rootfs_work", False):
            _report_squashed()
        return code
    except AcbuildError as err:
        if debug:
            import traceback

            traceback.print_exc()
        print(_format(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("acbuild: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except Exception as err:  # a bug, not the user's mistake: one line, the traceback on request
        if debug:
            import traceback

            traceback.print_exc()
        print(f"acbuild: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


class _Terminated(KeyboardInterrupt):
    """KeyboardInterrupt raised for SIGTERM. A subclass because CPython marks the process to
    die by SIGINT at exit when a plain KeyboardInterrupt passes through an import, even
    one caught later: main's exit status (130) must stand."""


def _signals_as_interrupt() -> None:
    """SIGTERM (kill, systemd, CI timeouts) unwinds like Ctrl-C: temp outputs, work dirs
    and sandboxes are removed on the way out, by the same `finally` blocks. Both are
    held back while the signal lands in the import machinery: there an exception may
    be raised in a module lock's weakref callback, where Python only prints it
    ("Exception ignored in ...") and goes on; it is delivered 5 ms later instead."""
    import signal

    def interrupt(sig, frame):
        if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            signal.signal(signal.SIGALRM, lambda _alarm, later: interrupt(sig, later))
            signal.setitimer(signal.ITIMER_REAL, 0.005)
            return
        raise _Terminated if sig == signal.SIGTERM else KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread (main() called from a thread): leave it
        pass


def _format(err: AcbuildError) -> str:
    # Positioned errors already start with FILE:LINE:COL; the rest get our name.
    text = err.render()
    if err.pos is not None and err.pos.line:
        return text
    return f"acbuild: {text}"
