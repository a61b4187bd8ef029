"""Look things up in the image's own files, the way a process inside it would see them:
paths (symlinks resolved with the rootfs as "/", by engine.paths), users and groups
(the rootfs's /etc/passwd and /etc/group, never the host's).

Runs in the parent before the sandbox forks; stdlib only, so the sandbox stays light.
"""

from __future__ import annotations

from pathlib import Path

from acbuild.engine.execute.paths import resolve_in_root
from acbuild.errors import BuildError


def in_image(rootfs: Path, path: str) -> str:
    """`path` inside the image with every symlink resolved as if `rootfs` were "/"
    ("/etc/resolv.conf" may come back as "/run/systemd/resolve/stub-resolv.conf")."""
    rel = resolve_in_root(rootfs, path).relative_to(rootfs).as_posix()
    return "/" if rel == "." else "/" + rel


def _entries(rootfs: Path, db: str) -> list[list[str]]:
    """The colon-separated lines of /etc/`db` in the image ([] if it has none)."""
    try:
        text = resolve_in_root(rootfs, f"/etc/{db}").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise BuildError(f"read /etc/{db} in the image: {e.strerror}") from e
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    """(uid, primary gid) of a user name or number; a number not in passwd has gid 0."""
    for fields in _entries(rootfs, "passwd"):
        if len(fields) >= 4 and (fields[0] == user or (user.isdigit() and fields[2] == user)):
            try:
                return int(fields[2]), int(fields[3])
            except ValueError:
                continue
    if user.isdigit():
        return int(user), 0
    raise BuildError(f"user {user!r} is not in the image's /etc/passwd")


def resolve_group(rootfs: Path, group: str) -> int:
    """The gid of a group name or number."""
    if group.isdigit():
        return int(group)
    for fields in _entries(rootfs, "group"):
        if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
            return int(fields[2])
    raise BuildError(f"group {group!r} is not in the image's /etc/group")
