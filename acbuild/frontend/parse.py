"""ACIfile or Dockerfile text -> list of Statements, with Lark.

frontend/source.py first reads what is decided line by line (parser directives,
the escape character, heredoc bodies); the grammar then gives each instruction
its shape. A Statement is that shape as written (keyword, flags, raw words or
command, heredocs, positions); acbuild.frontend.compile gives it meaning. Syntax
errors become ParseError with the file, line, column and a caret excerpt.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

from acbuild.errors import ParseError, SourcePos
from acbuild.frontend.source import Heredoc, split_source
from acbuild.limits import check_acifile_text
from acbuild.records import dataclass, field, replace

# How each instruction is written, for "expected ..." messages.
USAGE = {
    "FROM": "FROM scratch|IMAGE.aci|NAME[:VERSION] [AS STAGE]",
    "COPY": "COPY [--chown=UID:GID] [--chmod=MODE] [--from=STAGE] SRC... DEST",
    "RUN": 'RUN [--network=none|host] [--mount=...] COMMAND  or  RUN ["EXE", "ARG"...]',
    "EXEC": 'EXEC ["EXE", "ARG"...]  or  EXEC COMMAND',
    "EVENT": 'EVENT pre-start|post-stop ["EXE", "ARG"...]',
    "LABEL": "LABEL NAME=VALUE...",
    "ANNOTATION": "ANNOTATION NAME=VALUE...",
    "ENV": "ENV NAME=VALUE...",
    "NAME": "NAME IMAGE-NAME",
    "WORKDIR": "WORKDIR /PATH",
    "USER": "USER NAME|UID",
    "GROUP": "GROUP NAME|GID",
    "SUPPLEMENTARY-GROUPS": "SUPPLEMENTARY-GROUPS GID...",
    "PORT": "PORT NAME PROTOCOL PORT [COUNT] [socket-activated]",
    "MOUNT": "MOUNT NAME /PATH [read-only]",
    "ISOLATOR": "ISOLATOR NAME JSON-VALUE",
    "DEPENDENCY": "DEPENDENCY [--image-id=ID] [--size=BYTES] IMAGE-NAME [LABEL=VALUE...]",
    "PATH-WHITELIST": "PATH-WHITELIST /PATH...",
    "ARG": "ARG NAME[=DEFAULT]",
    "REMOVE": "REMOVE LABEL|ANNOTATION|ENV|PORT|MOUNT|ISOLATOR|DEPENDENCY|EVENT|EXEC NAME",
    "MANIFEST": "MANIFEST JSON-OBJECT",
    "ADD": "ADD [--chown=USER[:GROUP]] [--chmod=MODE] [--checksum=sha256:HEX] SRC... DEST",
    "CMD": 'CMD ["EXE", "ARG"...]  or  CMD COMMAND',
    "ENTRYPOINT": 'ENTRYPOINT ["EXE", "ARG"...]  or  ENTRYPOINT COMMAND',
    "SHELL": 'SHELL ["EXE", "ARG"...]',
    "EXPOSE": "EXPOSE PORT[/PROTOCOL]...",
    "VOLUME": 'VOLUME /PATH...  or  VOLUME ["/PATH"...]',
    "STOPSIGNAL": "STOPSIGNAL SIGNAL",
    "HEALTHCHECK": "HEALTHCHECK [--interval=D ...] CMD COMMAND  or  HEALTHCHECK NONE",
    "ONBUILD": "ONBUILD INSTRUCTION",
    "MAINTAINER": "MAINTAINER NAME",
}


_TOKEN_NAMES = {
    "WORD": "an argument",
    "FLAG": "a --flag",
    "JSON_ARRAY": "a command",
    "REST_OF_LINE": "a command",
    "_NL": "the end of the line",
    "$END": "the end of the file",
    "AS": "AS",
}


@dataclass(frozen=True)
class Word:
    """One raw argument as written (quotes and $VARS still in it)."""

    text: str
    pos: SourcePos


@dataclass(frozen=True)
class Statement:
    keyword: str  # canonical upper-case spelling, e.g. "SUPPLEMENTARY-GROUPS"
    pos: SourcePos
    flags: tuple[Word, ...] = ()
    words: tuple[Word, ...] = ()
    # RUN/EXEC/EVENT/ISOLATOR/MANIFEST: the command or value text, and whether it
    # was written as a JSON array (exec form).
    command: Word | None = None
    json_form: bool = False
    alias: Word | None = None  # FROM ... AS alias
    spelled: str = field(default="", compare=False)  # the keyword as written
    heredocs: tuple[Heredoc, ...] = ()  # RUN/COPY/ADD <<EOF bodies, in the order the line names them
    escape: str = "\\"  # the file's escape character (`# escape=`)


@cache
def _parser(escape: str = "\\"):
    from lark import Lark

    options = dict(parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=False)
    # In the grammar every regex `\\` is the escape character.
    text = _grammar_text() if escape == "\\" else _grammar_text().replace("\\\\", escape)
    try:
        return Lark(text, cache=_grammar_cache_file(escape), **options)
    except OSError:  # an unwritable cache dir only costs the ~30 ms of building the tables
        return Lark(text, **options)


def _grammar_cache_file(escape: str) -> str:
    """Lark's compiled tables, in the user's own cache dir. (Lark's default is a
    predictable name in the shared /tmp, which it unpickles: not for a tool run as root.)"""
    from acbuild.dirs import cache_root

    directory = cache_root()
    directory.mkdir(parents=True, exist_ok=True)
    from lark import __version__ as lark_version

    variant = "" if escape == "\\" else "-backtick"
    return str(directory / f"acifile-grammar-{lark_version}{variant}.lark-cache")


def _grammar_text() -> str:
    # Installed (or editable): the package acbuild.grammar, a directory (importlib.resources
    # would find it too, at 4 ms of imports, each cached build); a bare checkout: <repo>/grammar.
    from importlib.util import find_spec

    try:
        spec = find_spec("acbuild.grammar")
    except ModuleNotFoundError:
        spec = None
    for directory in (spec and spec.submodule_search_locations) or ():
        try:
            return (Path(directory) / "acifile.lark").read_text()
        except FileNotFoundError:
            pass
    return (Path(__file__).resolve().parents[2] / "grammar" / "acifile.lark").read_text()


def parse_acifile_cached(text: str, filename: str = "ACIfile") -> list[Statement]:
    """parse_acifile, through the parse cache: a build file parsed before is read
    back instead (loading Lark and parsing take ~25 ms, a tenth of a cached build)."""
    key = _parse_key(text, filename)
    cached = _cached_parse(filename, key)
    if cached is not None:
        return cached
    statements = parse_acifile(text, filename)
    _store_parse(filename, key, statements)
    return statements


def _parse_key(text: str, filename: str) -> bytes:
    """What a parse depends on: the text and its name (positions carry it), and the
    code: the grammar, this parser's modules and Lark (by file size and mtime, so an
    edited checkout or an upgrade never reads an old parse)."""
    import hashlib
    import sys
    from importlib.util import find_spec

    from acbuild import __version__, errors
    from acbuild.frontend import source

    h = hashlib.sha256(f"{__version__}\0{sys.version}\0{filename}\0".encode("utf-8", "surrogateescape"))
    h.update(text.encode("utf-8", "surrogateescape"))
    h.update(_grammar_text().encode())
    lark = find_spec("lark")
    for module in (__file__, source.__file__, errors.__file__, lark.origin if lark else None):
        if module:
            st = os.stat(module)
            h.update(f"\0{module} {st.st_size} {st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return h.digest()


def _parse_cache_file(filename: str) -> Path:
    """One entry per file name (the next parse of a changed file replaces it), in
    the user's own cache dir, as Lark's tables: it is unpickled."""
    import hashlib

    from acbuild.dirs import cache_root

    name = hashlib.sha256(filename.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_root() / "parse" / f"{name}.pickle"


def _cached_parse(filename: str, key: bytes) -> list[Statement] | None:
    import pickle

    try:
        stored_key, statements = pickle.loads(_parse_cache_file(filename).read_bytes())
    except Exception:  # missing, damaged or from other code: parse again
        return None
    return statements if stored_key == key else None


def _store_parse(filename: str, key: bytes, statements: list[Statement]) -> None:
    import pickle

    from acbuild.atomic import write_atomic

    path = _parse_cache_file(filename)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, pickle.dumps((key, statements), protocol=pickle.HIGHEST_PROTOCOL), mode=0o600)
    except OSError:  # an unwritable cache only costs the next parse
        pass


def parse_acifile(text: str, filename: str = "ACIfile") -> list[Statement]:
    """Parse ACIfile or Dockerfile text. Raises ParseError at the first syntax error."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

    check_acifile_text(text, filename)
    source = split_source(text, filename)
    # Lines as Lark counts them (only "\n" ends one; splitlines() also breaks at
    # \f, \x1c, \u2028..., which put excerpts on the wrong line: IndexError).
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    text = source.text
    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = _parser(source.escape).parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source, lines, filename) from None
    except (UnexpectedCharacters, UnexpectedToken) as err:  # pragma: no cover - subclasses above
        raise _syntax_error(err, source, lines, filename) from None
    place = _Places(source, lines, filename)
    statements = [_statement(node, place, source.escape) for node in tree.children]
    return [replace(st, heredocs=source.heredocs.get(st.pos.line, ())) for st in statements]


def _pos(filename: str, lines: list[str], line: int, column: int) -> SourcePos:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return SourcePos(filename, line, column, text)


class _Places:
    """Token positions in the joined text -> the file's own lines and columns."""

    def __init__(self, source, lines: list[str], filename: str):
        self.source, self.lines, self.filename = source, lines, filename

    def __call__(self, line: int, column: int) -> SourcePos:
        return _pos(self.filename, self.lines, *self.source.place(line, column))


def _statement(node, place: _Places, escape: str) -> Statement:
    from lark import Token

    keyword_token = node.children[0]
    keyword = node.data.rstrip("_").upper().replace("_", "-")
    if keyword == "SUPP-GROUPS":
        keyword = "SUPPLEMENTARY-GROUPS"
    pos = place(keyword_token.line, keyword_token.column)

    def word(tok: Token) -> Word:
        return Word(str(tok), place(tok.line, tok.column))

    flags, words, command, alias, json_form = [], [], None, None, False
    after_as = False
    for tok in node.children[1:]:
        kind = tok.type
        if kind == "FLAG":
            flags.append(word(tok))
        elif kind == "AS":
            after_as = True
        elif kind == "WORD":
            if after_as:
                alias = word(tok)
            elif tok == "--" and flags and not words:
                pass  # `--` ends the flags (BuildKit's extractBuilderFlags)
            else:
                words.append(word(tok))
        elif kind in ("JSON_ARRAY", "REST_OF_LINE"):
            text = str(tok).rstrip()
            if flags and re.match(r"--(\s|$)", text):
                text = text[2:].lstrip()
            command = Word(text, place(tok.line, tok.column))
            json_form = kind == "JSON_ARRAY"
    return Statement(
        keyword=keyword,
        pos=pos,
        flags=tuple(flags),
        words=tuple(words),
        command=command,
        json_form=json_form,
        alias=alias,
        spelled=str(keyword_token),
        escape=escape,
    )


def _syntax_error(err, source, lines: list[str], filename: str) -> ParseError:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    line, column = max(err.line, 1), max(err.column, 1)
    pos = _pos(filename, lines, *source.place(line, column))
    joined = source.text.split("\n")
    source_line = joined[line - 1] if 0 < line <= len(joined) else ""
    first = source_line.split(None, 1)[0] if source_line.strip() else ""
    keyword = _keyword_of(first)
    at_line_start = not source_line[: column - 1].strip()

    if at_line_start and keyword is None:
        bad = first or "?"
        if isinstance(err, UnexpectedCharacters) and not first[:1].isalpha():
            return ParseError(f"unexpected character {source_line[column - 1]!r}", pos)
        return ParseError(f'unknown instruction "{bad}"', pos)
    if keyword is None:
        return ParseError("syntax error", pos)
    usage = USAGE[keyword]
    if isinstance(err, UnexpectedToken):
        got = "end of line" if err.token.type in ("_NL", "$END") else repr(str(err.token))
        expected = sorted({_TOKEN_NAMES.get(e, e) for e in err.expected if not e.isupper() or e in _TOKEN_NAMES})
        if err.token.type == "REST_OF_LINE" and ('"' in err.token or "'" in err.token):
            return ParseError(f"{keyword}: unterminated quote; usage: {usage}", pos)
        if err.token.type in ("_NL", "$END"):
            message = f"{keyword}: missing arguments"
        else:
            message = f"{keyword}: unexpected {got}"
        if expected:
            message += f" (expected {' or '.join(expected)})"
        return ParseError(f"{message}; usage: {usage}", pos)
    return ParseError(f"{keyword}: unexpected character {source_line[column - 1:column]!r}; usage: {usage}", pos)


def _keyword_of(word: str) -> str | None:
    upper = word.upper()
    return upper if upper in USAGE else None
