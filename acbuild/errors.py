"""The exception tree. Every message is the user message; the CLI turns these
into exit codes in one place (acbuild.cli.main). Nothing here imports the rest
of acbuild."""

from __future__ import annotations

import copy
import os


class SourcePos:
    """Where an instruction or argument came from: an ACIfile place or argv.
    Immutable. A plain class rather than a dataclass: this module is imported by
    every command, `acbuild --help` included, and `dataclasses` costs ~10 ms to import."""

    __slots__ = ("file", "line", "column", "text")

    # text: the whole source line, for the caret excerpt (empty for argv).
    def __init__(self, file: str = "<argv>", line: int = 0, column: int = 0, text: str = ""):
        for name, value in zip(self.__slots__, (file, line, column, text)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"SourcePos is immutable (use .replace({name}=...))")

    def _key(self) -> tuple:
        return (self.file, self.line, self.column, self.text)

    def __eq__(self, other) -> bool:
        return self._key() == other._key() if isinstance(other, SourcePos) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "SourcePos(file={!r}, line={!r}, column={!r}, text={!r})".format(*self._key())

    def __reduce__(self):
        return SourcePos, self._key()

    def replace(self, **changes) -> SourcePos:
        return SourcePos(**{**dict(zip(self.__slots__, self._key())), **changes})

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file

    def excerpt(self) -> str:
        """The offending line and a caret under the column, or "" without one."""
        if not self.text or not self.line:
            return ""
        line = self.text.expandtabs(1)
        caret = " " * max(self.column - 1, 0) + "^"
        return f"    {line}\n    {caret}"


ARGV = SourcePos()

# Exit codes, as Go acbuild documented them.
EXIT_FAILURE = 1
EXIT_NOT_FOUND = 2
EXIT_USAGE = 3


class AcbuildError(Exception):
    """A failure to report to the user without a traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, pos: SourcePos | None = None, *, path: str | os.PathLike | None = None):
        # With `path`, the message reads "PATH: message"; `detail` is the message alone,
        # so a caller that worked on a private copy can name the user's file instead.
        self.detail = message
        self.path = None if path is None else str(path)
        self.message = message if path is None else f"{self.path}: {message}"
        self.pos = pos
        super().__init__(self.message)

    def at_path(self, path: str | os.PathLike) -> AcbuildError:
        """The same error, naming `path` as the file it is about."""
        if self.path is None:
            return self
        clone = copy.copy(self)
        AcbuildError.__init__(clone, self.detail, self.pos, path=path)
        return clone

    def __str__(self) -> str:
        if self.pos is not None and (self.pos.line or self.pos.file != "<argv>"):
            return f"{self.pos}: {self.message}"
        return self.message

    def render(self) -> str:
        """The message, plus the caret excerpt when the position has one."""
        text = str(self)
        excerpt = self.pos.excerpt() if self.pos else ""
        return f"{text}\n{excerpt}" if excerpt else text


class UsageError(AcbuildError):
    """Bad command-line input."""

    exit_code = EXIT_USAGE


class NotFoundError(AcbuildError):
    """A named thing (file, label, build in progress) does not exist."""

    exit_code = EXIT_NOT_FOUND


class ParseError(AcbuildError):
    """The ACIfile does not follow the grammar."""


class PlanError(AcbuildError):
    """The ACIfile parses but says something invalid (bad name, duplicate label)."""


class InstructionError(PlanError):
    """One instruction's value breaks a rule (acbuild.plan checks it where it is made).
    `keyword` and `problem` are kept apart so an interactive verb can name itself."""

    def __init__(self, keyword: str, problem: str, pos: SourcePos | None = None):
        super().__init__(f"{keyword}: {problem}", pos)
        self.keyword = keyword
        self.problem = problem


class ManifestError(AcbuildError):
    """An image or pod manifest breaks the appc schema. `problems` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None, pos: SourcePos | None = None, *,
                 path: str | os.PathLike | None = None):
        super().__init__(message, pos, path=path)
        self.problems = problems or [message]


class ImageError(AcbuildError):
    """An .aci or image layout cannot be read or written."""


class BuildError(AcbuildError):
    """A build step failed (COPY source missing, RUN exited non-zero...)."""


class SignatureError(AcbuildError):
    """Signing or verification failed, or a signer is not trusted."""


class OutputExistsError(AcbuildError):
    """The output file is there already and --overwrite was not given."""

    def __init__(self, path: str | os.PathLike, pos: SourcePos | None = None):
        super().__init__("exists (use --overwrite)", pos, path=path)
