"""acbuild unshare: run a command in the user namespace rootless builds use."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Run COMMAND (default: $SHELL, else /bin/sh) as root of the user namespace that
rootless acbuild works in: container id 0 is you, 1..N your range in /etc/subuid
and /etc/subgid (through newuidmap/newgidmap). Files acbuild made there (the step
cache, a session's rootfs) are owned by your subordinate ids on the host, which
you cannot remove or change outside; here you can. As root it runs COMMAND as is;
without subordinate ids it refuses (there is nothing to enter)."""

EPILOG = """\
examples:
  acbuild unshare -- cat /proc/self/uid_map     # the mapping in effect
  acbuild unshare -- rm -rf ~/.cache/acbuild    # remove what a rootless build left
  acbuild unshare                               # a shell in the namespace"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unshare", help="run a command in the user namespace of rootless builds",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    p.set_defaults(run=run, rootfs_work=True)


def run(args: argparse.Namespace) -> int:
    from acbuild import userns
    from acbuild.errors import NotFoundError, UsageError

    if userns.id_space() is userns.IdSpace.SINGLE:
        raise UsageError(f"unshare: no user namespace to enter: {userns.why_not_mapped()}")

    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        argv = [os.environ.get("SHELL") or "/bin/sh"]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise NotFoundError(f"unshare: {argv[0]}: command not found") from None
    except OSError as e:
        raise UsageError(f"unshare: {argv[0]}: {e.strerror}") from None
