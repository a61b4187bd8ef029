"""Docker's word processing: quotes, escapes and $VARIABLE expansion.

A port of BuildKit's frontend/dockerfile/shell/lex.go (Apache-2.0), the rules
`docker build` applies to the words of ADD, COPY, ENV, EXPOSE, FROM, LABEL,
STOPSIGNAL, USER, VOLUME, WORKDIR, ARG and the flags: 'single quotes' are
literal, "double quotes" expand $VARS and honour the escape token before
" $ and itself, the escape token (\\ or `) makes the next character literal,
and ${VAR:-word} ${VAR-word} ${VAR:+word} ${VAR+word} ${VAR:?msg} ${VAR?msg}
${VAR#pat} ${VAR##pat} ${VAR%pat} ${VAR%%pat} ${VAR/pat/repl} ${VAR//pat/repl}
work as in sh. An unset variable expands to nothing. Errors are ExpandError
with the message BuildKit gives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from acbuild.limits import MAX_EXPANDED_WORD
from acbuild.records import dataclass, field

_SPECIAL = set("@*#?-$!0")


class ExpandError(Exception):
    """A word cannot be expanded (bad substitution, ${VAR?} unset, open quote)."""


@dataclass
class Expansion:
    """The result of expanding one word: the text, the words it splits into
    (for instructions that take a list), and the variable names it looked up."""

    text: str
    words: list[str]
    used: set[str] = field(default_factory=set)


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> Expansion:
    return _Lexer(word, env, escape).run()


class _Words:
    """Splits the expanded text at unquoted blanks (ProcessWords)."""

    def __init__(self):
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.buf:
                self.words.append("".join(self.buf))
                self.buf, self.in_word = [], False
        else:
            self.raw(ch)

    def raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def string(self, text: str) -> None:
        for ch in text:
            self.char(ch)

    def done(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf, self.in_word = [], False
        return self.words


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str):
        self.text, self.env, self.escape = text, env, escape
        self.i = 0
        self.used: set[str] = set()
        self.grown = 0  # characters substituted so far: a doubling chain of ARGs stops early

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.i += 1 if ch else 0
        return ch

    def run(self) -> Expansion:
        text, words = self.until("", raw_escapes=False)
        return Expansion(text, words, self.used)

    def until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(out), words.done()
            if ch == "$":
                value = self.dollar()
                out.append(value)
                words.string(value)
            elif ch == "'":
                value = self.single_quote()
                out.append(value)
                words.raw(value)
            elif ch == '"':
                value = self.double_quote()
                out.append(value)
                words.raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if raw_escapes:
                        words.raw(ch)
                        out.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.raw(ch)
                else:
                    words.char(ch)
                out.append(ch)
        if stop:
            raise ExpandError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.done()

    def single_quote(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.next()
            if not ch:
                raise ExpandError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        self.next()
        out = []
        while True:
            ch = self.peek()
            if not ch:
                raise ExpandError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start = self.i
        ch = self.peek()
        if ch.isdigit():
            while self.peek().isdigit():
                self.next()
            return self.text[start:self.i]
        if ch and ch in _SPECIAL:
            return self.next()
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.next()
        return self.text[start:self.i]

    def lookup(self, name: str) -> str | None:
        if name in self.env:
            self.used.add(name)
            self.grown += len(self.env[name])
            if self.grown + len(self.text) > MAX_EXPANDED_WORD:
                raise ExpandError(f"variable substitution makes a word of more than {MAX_EXPANDED_WORD} characters")
            return self.env[name]
        return None

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            return self.lookup(name) or ""
        self.next()
        if not self.peek():
            raise ExpandError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ExpandError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if op == "}":
            return self.lookup(name) or ""
        null_is_unset = False
        if op == ":":
            null_is_unset = True
            op = self.next()
            if op in ("#", "%"):
                raise ExpandError(f"unsupported modifier (:{op}) in substitution")
        if op in ("-", "+", "?", "#", "%"):
            try:
                word, _ = self.until("}", raw_escapes=op in "#%")
            except ExpandError:
                if self.i >= len(self.text):
                    raise ExpandError("syntax error: missing '}'") from None
                raise
            value = self.lookup(name)
            unset = value is None or (null_is_unset and value == "")
            if op == "-":
                return word if unset else value
            if op == "+":
                return "" if unset else word
            if op == "?":
                if value is None:
                    raise ExpandError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise ExpandError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            greedy = word.startswith(op)
            pattern = word[1:] if greedy else word
            return _trim_suffix(pattern, value or "", greedy) if op == "%" else _trim_prefix(pattern, value or "", greedy)
        if op == "/" and not null_is_unset:
            replace_all = self.peek() == "/"
            if replace_all:
                self.next()
            try:
                pattern, _ = self.until("/", raw_escapes=True)
                replacement, _ = self.until("}", raw_escapes=True)
            except ExpandError:
                raise ExpandError("syntax error: missing '}'") from None
            value = self.lookup(name) or ""
            regex = _pattern_regex(pattern, greedy=True, anchored=False)
            return regex.sub(lambda _m: replacement, value, count=0 if replace_all else 1)
        raise ExpandError(f"unsupported modifier ({':' if null_is_unset else ''}{op}) in substitution")


def _pattern_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern:
    """A shell wildcard pattern (* and ?, backslash escapes) as a regex."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue
            if i >= len(pattern) or pattern[i] not in "*?\\":
                raise ExpandError(f"invalid pattern ({pattern}) in substitution: invalid escape")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(pattern, greedy, anchored=True).match(value)
    return value[m.end():] if m else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # The shortest (or longest) match at the end: reverse both, match at the start.
    reversed_pattern = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            reversed_pattern.insert(0, pattern[i:i + 2])
            i += 2
        else:
            reversed_pattern.insert(0, pattern[i])
            i += 1
    return _trim_prefix("".join(reversed_pattern), value[::-1], greedy)[::-1]
