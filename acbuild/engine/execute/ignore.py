""".acbuildignore: context paths that COPY never sees, with Dockerfile's .dockerignore rules.

- One pattern per line; blank lines and lines starting with `#` are skipped; leading
  and trailing whitespace is trimmed; a leading `/` is dropped (paths are relative to
  the context root) and the pattern is normalised (`a/./b/../c` -> `a/c`).
- `*` matches any run of characters except `/`, `?` one character except `/`,
  `[a-z]` a class; `**` matches any number of directories (including none).
- A pattern that matches a directory excludes everything below it.
- A line starting with `!` is an exception: it re-includes what it matches. The last
  matching line wins, so `*.md` then `!README.md` keeps README.md.
- An excluded directory is still entered when an exception could match something
  inside it (`build/` then `!build/keep.txt`): only the exceptions' files come back.

The ACIfile and .acbuildignore may be listed too; they are then not COPYable.
Contract: pure (no I/O after loading), deterministic.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from acbuild import limits
from acbuild.engine.execute.ignore_glob import Glob
from acbuild.errors import UsageError
from acbuild.records import dataclass

IGNORE_FILE = ".acbuildignore"


@dataclass(frozen=True)
class _Rule:
    pattern: str
    glob: Glob
    exception: bool


class IgnoreRules:
    """callable(relpath) -> True when the context path is excluded."""

    def __init__(self, lines: list[str], source: str = IGNORE_FILE):
        self.rules: list[_Rule] = []
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
            if len(line) > limits.MAX_IGNORE_PATTERN:
                raise UsageError(f"{source}:{number}: pattern of {len(line)} characters "
                                 f"(at most {limits.MAX_IGNORE_PATTERN})")
            pattern = posixpath.normpath(line.lstrip("/")) if line.lstrip("/") else "."
            try:
                glob = Glob(pattern)
            except ValueError as err:
                raise UsageError(f"{source}:{number}: bad pattern {raw.strip()!r}: {err}") from err
            self.rules.append(_Rule(pattern, glob, exception))
        self._exceptions = [r for r in self.rules if r.exception]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _excluded(self, rel: str) -> bool:
        excluded = False
        for rule in self.rules:
            if rule.glob.match_prefix(rel):  # the path or a directory above it
                excluded = not rule.exception
        return excluded

    def __call__(self, rel: str) -> bool:
        rel = posixpath.normpath(rel)
        if rel == ".":
            return False
        if not self._excluded(rel):
            return False
        # Keep walking into an excluded directory when an exception may match below it.
        return not any(_may_match_below(r.pattern, rel) for r in self._exceptions)

    def digest_text(self) -> str:
        """The rules in canonical form (part of COPY cache keys)."""
        return "\n".join(("!" if r.exception else "") + r.pattern for r in self.rules)


def _may_match_below(pattern: str, directory: str) -> bool:
    """Could `pattern` match some path strictly inside `directory`?"""
    if "**" in pattern:
        return True
    pat = pattern.split("/")
    parts = directory.split("/")
    if len(pat) <= len(parts):
        return False
    return all(Glob(pat[n]).fullmatch(parts[n]) for n in range(len(parts)))


def ignore_file(context: Path, build_file: Path | None = None) -> Path | None:
    """Which ignore file holds: the context's .acbuildignore, else <build file
    name>.dockerignore beside the build file, else the context's .dockerignore
    (BuildKit's order after ours), or None."""
    candidates = [context / IGNORE_FILE]
    if build_file is not None:
        candidates.append(build_file.parent / f"{build_file.name}.dockerignore")
    candidates.append(context / ".dockerignore")
    return next((c for c in candidates if os.path.lexists(c)), None)  # a FIFO is chosen, then refused


def load_ignore(context: Path, build_file: Path | None = None) -> IgnoreRules | None:
    """The rules of the ignore file (ignore_file), or None when there is none (or it is empty)."""
    path = ignore_file(context, build_file)
    if path is None:
        return None
    try:
        text = limits.read_regular_file(path, IGNORE_FILE, limits.MAX_IGNORE_BYTES).decode()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        raise UsageError(f"read {path}: {err}") from err
    rules = IgnoreRules(text.splitlines(), str(path))
    return rules or None
