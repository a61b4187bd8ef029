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

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from acbuild.errors import UsageError

IGNORE_FILE = ".acbuildignore"


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern
    exception: bool


def _translate(pattern: str) -> re.Pattern:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # "**/" : zero or more whole directories
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[^", i) else i + 1)
            if end < 0:
                raise ValueError(f"unclosed [ in {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


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
            pattern = posixpath.normpath(line.lstrip("/")) if line.lstrip("/") else "."
            try:
                regex = _translate(pattern)
            except (ValueError, re.error) as err:
                raise UsageError(f"{source}:{number}: bad pattern {raw.strip()!r}: {err}") from err
            self.rules.append(_Rule(pattern, regex, exception))
        self._exceptions = [r for r in self.rules if r.exception]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for rule in self.rules:
            if any(rule.regex.match(p) for p in prefixes):
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
    return all(_translate(pat[n]).match(parts[n]) for n in range(len(parts)))


def ignore_file(context: Path, build_file: Path | None = None) -> Path | None:
    """Which ignore file holds: the context's .acbuildignore, else <build file
    name>.dockerignore beside the build file, else the context's .dockerignore
    (BuildKit's order after ours), or None."""
    candidates = [context / IGNORE_FILE]
    if build_file is not None:
        candidates.append(build_file.parent / f"{build_file.name}.dockerignore")
    candidates.append(context / ".dockerignore")
    return next((c for c in candidates if c.is_file()), None)


def load_ignore(context: Path, build_file: Path | None = None) -> IgnoreRules | None:
    """The rules of the ignore file (ignore_file), or None when there is none (or it is empty)."""
    path = ignore_file(context, build_file)
    if path is None:
        return None
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"read {path}: {err}") from err
    rules = IgnoreRules(text.splitlines(), str(path))
    return rules or None
