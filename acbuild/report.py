"""Where the layers below the CLI send what the user should read (notices,
warnings, verified signers) instead of printing it themselves, so one place
decides the form: plain lines on stderr by default, JSON events under
`--progress json` (engine/progress.py extends this), nothing when quiet.

Contract: every method writes whole lines to the reporter's stream and flushes;
nothing here raises for a closed or broken stream's sake."""

from __future__ import annotations

import sys
from typing import TextIO


class Reporter:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False):
        self._stream = stream
        self.quiet = quiet

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up late: tests and callers may swap sys.stderr

    def emit(self, kind: str, text: str) -> None:
        """One message of `kind` (info, note, warning, alert) in this reporter's form."""
        if self.quiet and kind in ("info", "note"):
            return
        prefix = {"info": "", "note": "acbuild: ", "warning": "acbuild: warning: ", "alert": "acbuild: WARNING: "}
        print(prefix[kind] + text, file=self.stream, flush=True)

    def info(self, text: str) -> None:
        """A result line the user asked for by running the command (a verified signer)."""
        self.emit("info", text)

    def note(self, text: str) -> None:
        """Something worth knowing that changes nothing (a fallback taken)."""
        self.emit("note", text)

    def warning(self, text: str) -> None:
        """Something probably wrong that did not stop the command."""
        self.emit("warning", text)

    def alert(self, text: str) -> None:
        """A safety check skipped on request: printed even when quiet, every time."""
        self.emit("alert", text)


QUIET = Reporter(quiet=True)
