"""The line structure of an ACIfile or Dockerfile, before the grammar sees it.

BuildKit's parser (frontend/dockerfile/parser/parser.go) decides three things
line by line that a context-free grammar cannot: parser directives at the top
(`# syntax=`, `# escape=`, `# check=`), which character escapes and continues
lines, and heredoc bodies (`RUN <<EOF` ... `EOF`), whose end depends on a word
of an earlier line. This module does those three and hands the grammar the
same text with directive and heredoc lines blanked, so every line number the
grammar reports is still the file's own.
"""

from __future__ import annotations

import re

from acbuild.errors import ParseError, SourcePos
from acbuild.records import dataclass, field

DIRECTIVES = ("syntax", "escape", "check")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# A word that starts a heredoc: optional fd, <<, optional - (strip tabs), the delimiter.
_HEREDOC = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$")
# Instructions whose shell-form arguments may hold heredocs (BuildKit's list).
_HEREDOC_KEYWORDS = {"run", "copy", "add"}


@dataclass(frozen=True)
class Heredoc:
    name: str  # the delimiter, quotes removed
    content: str  # every line up to the delimiter, newlines kept
    expand: bool  # False when the delimiter was quoted: no $VAR expansion
    chomp: bool  # <<-: leading tabs are stripped from the content
    fd: int | None = None  # 3<<EOF: the file descriptor it is for

    def text(self) -> str:
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass
class Source:
    """What the grammar parses, and how to find the file's own places in it.

    `text` has one line per line of the file: each instruction is on its first
    line with its continuations joined as BuildKit joins them (the escape at the
    end of a line removed, comment and empty lines inside dropped); the other lines
    of the instruction, directives and heredoc bodies are blank. `pieces` maps a
    joined line back: line -> [(offset in the joined line, file line, file column)]."""

    text: str
    escape: str = "\\"
    directives: dict[str, str] = field(default_factory=dict)
    heredocs: dict[int, tuple[Heredoc, ...]] = field(default_factory=dict)  # line of the instruction -> its heredocs
    pieces: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)

    def place(self, line: int, column: int) -> tuple[int, int]:
        """The file's (line, column) of a (line, column) in `text` (1-based)."""
        where = (line, column)
        for offset, file_line, file_column in self.pieces.get(line, ()):
            if column - 1 >= offset:
                where = (file_line, column - 1 - offset + file_column)
        return where


def split_source(text: str, filename: str) -> Source:
    text = text.removeprefix("\ufeff")
    # Only "\n" ends a line, as for Lark (splitlines() also breaks at \f, \x85, \u2028...).
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    source = Source(text="")
    out = list(lines)
    i = _directives(lines, source, filename)
    cont = _continuation(source.escape)
    while i < len(lines):
        first = lines[i].strip()
        if not first or first.startswith("#"):
            i += 1
            continue
        start = i
        parts: list[str] = []
        pieces = []
        line = lines[i].rstrip("\r\n")
        while True:
            joined, continued = _trim_continuation(line, cont)
            pieces.append((sum(map(len, parts)), i + 1, 1))
            parts.append(joined)
            out[i] = _blank(lines[i])
            i += 1
            if not continued:
                break
            # Comment and empty lines inside a continuation are dropped (BuildKit).
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                out[i] = _blank(lines[i])
                i += 1
            if i >= len(lines):
                break
            line = lines[i].rstrip("\r\n")
        logical = "".join(parts)
        out[start] = logical + "\n"
        if len(pieces) > 1:
            source.pieces[start + 1] = pieces
        docs = _heredoc_words(logical) if _may_hold_heredocs(logical) else []
        found = []
        for fd, chomp, name, expand in docs:
            body, terminated = [], False
            while i < len(lines):
                candidate = lines[i].rstrip("\r\n")
                out[i] = _blank(lines[i])
                i += 1
                if (candidate.lstrip("\t") if chomp else candidate) == name:
                    terminated = True
                    break
                body.append(lines[i - 1])
            if not terminated:
                line_text = lines[start].rstrip("\r\n")
                raise ParseError(f'unterminated heredoc "{name}" (no line "{name}" after it)', SourcePos(filename, start + 1, 1, line_text))
            found.append(Heredoc(name=name, content="".join(body), expand=expand, chomp=chomp, fd=fd))
        if found:
            source.heredocs[start + 1] = tuple(found)
    source.text = "".join(out)
    return source


def _blank(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def _directives(lines: list[str], source: Source, filename: str) -> int:
    """Read the parser directives at the top; returns the first line after them.
    As in BuildKit, they end at the first line that is not one (an empty line,
    another comment, an instruction); an unknown key also ends them."""
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m or m.group(1).lower() not in DIRECTIVES:
            return i
        key, value = m.group(1).lower(), m.group(2)
        pos = SourcePos(filename, i + 1, 1, line.rstrip("\r\n"))
        if key in source.directives:
            raise ParseError(f"only one {key} parser directive can be used", pos)
        if key == "escape":
            if value not in ("\\", "`"):
                raise ParseError(f"invalid escape token '{value}' does not match ` or \\", pos)
            source.escape = value
        source.directives[key] = value
    return len(lines)


def _continuation(escape: str) -> re.Pattern:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def _trim_continuation(line: str, cont: re.Pattern) -> tuple[str, bool]:
    if cont.search(line):
        return cont.sub(r"\1", line, count=1), True
    return line, False


def _may_hold_heredocs(logical: str) -> bool:
    words = logical.split(None, 2)
    if not words or "<<" not in logical:
        return False
    keyword, rest = words[0].lower(), logical.split(None, 1)[1] if len(words) > 1 else ""
    if keyword == "onbuild" and len(words) > 1:
        keyword, rest = words[1].lower(), words[2] if len(words) > 2 else ""
    if keyword not in _HEREDOC_KEYWORDS:
        return False
    # The exec (JSON) form never holds heredocs.
    return not _is_json_array(rest)


def _is_json_array(text: str) -> bool:
    import json

    text = text.lstrip()
    if not text.startswith("["):
        return False
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


def _heredoc_words(logical: str) -> list[tuple[int | None, bool, str, bool]]:
    """(fd, chomp, delimiter, expand) of every word of the line that opens a heredoc."""
    found = []
    for word in _raw_words(logical):
        m = _HEREDOC.match(word)
        if not m or not m.group(3):
            continue
        rest = m.group(3)
        name = re.sub(r"""\\(.)|["']""", lambda q: q.group(1) or "", rest)
        if not name or any(c.isspace() for c in name):
            continue
        quoted = any(c in rest for c in "\"'")
        found.append((int(m.group(1)) if m.group(1) else None, m.group(2) == "-", name, not quoted))
    return found


def _raw_words(line: str) -> list[str]:
    """Split at blanks outside quotes, keeping quotes; `<<  EOF` stays one word."""
    words, buf, quote, i = [], [], "", 0
    while i < len(line):
        c = line[i]
        if quote:
            buf.append(c)
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
            buf.append(c)
        elif c == "\\" and i + 1 < len(line):
            buf.append(line[i:i + 2])
            i += 1
        elif c.isspace():
            if buf and "".join(buf).endswith("<<") or (buf and re.fullmatch(r"\d*<<-?", "".join(buf))):
                pass  # whitespace between << and the delimiter belongs to the word
            elif buf:
                words.append("".join(buf))
                buf = []
        else:
            buf.append(c)
        i += 1
    if buf:
        words.append("".join(buf))
    return words
