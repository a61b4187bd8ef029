"""Where the layers below the CLI send what the user should read (notices,
warnings, verified signers) instead of printing it themselves, so one place
decides the form: plain lines on stderr by default, JSON events under
`--progress json` (engine/progress.py extends this), nothing when quiet.

Long work (writing an image, a COPY) reports its bytes
through `meter()`: nothing for work done within a second, then a line every few
seconds (bytes, rate, ETA when the total is known) and one at the end; a terminal
gets a bar and JSON a `progress` event instead (engine/progress.py).

Contract: every method writes whole lines to the reporter's stream and flushes;
nothing here raises for a closed or broken stream's sake."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SHOW_AFTER = 1.0  # seconds: quicker work shows no progress at all


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

    # -- progress of long work --------------------------------------------------------

    progress_interval = 5.0  # seconds between plain progress lines
    wants_total = False  # plain lines do without an ETA rather than walk a tree twice

    def meter(self, what: str, total: int | None = None) -> Meter:
        """A Meter for `what` (e.g. "write out.aci"), `total` bytes if known."""
        return Meter(self, what, total)

    def progress(self, meter: Meter, final: bool) -> None:
        """Show `meter` (called at most every progress_interval, and once at the end
        of work that lasted over SHOW_AFTER)."""
        if not self.quiet:
            print(f"acbuild: {meter.describe(final)}", file=self.stream, flush=True)


class Meter:
    """Bytes done of one piece of work; `advance(n)` as they are done, `close()`
    (or leave the `with` block) at the end. Cheap per call: one clock read."""

    def __init__(self, reporter: Reporter, what: str, total: int | None):
        self.reporter, self.what, self.total = reporter, what, total
        self.done = 0
        self.started = time.monotonic()
        self._next = self.started + SHOW_AFTER
        self.shown = False
        self.bar = None  # the terminal's bar (engine/progress.py), once shown

    def advance(self, n: int) -> None:
        self.done += n
        if n and time.monotonic() >= self._next:
            self.shown = True
            self.reporter.progress(self, final=False)
            self._next = time.monotonic() + self.reporter.progress_interval

    def close(self) -> None:
        if self.shown or self.seconds >= SHOW_AFTER:
            self.shown = True
            self.reporter.progress(self, final=True)
            self._next = float("inf")

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def describe(self, final: bool) -> str:
        """`write out.aci: 120.0 MB of 200.0 MB (60%), 50.1 MB/s, ETA 2s`, or at the end
        `write out.aci: 200.0 MB in 4.0s (50.0 MB/s)`."""
        secs = max(self.seconds, 1e-9)
        rate = self.done / secs
        if final:
            return f"{self.what}: {_mb(self.done)} in {secs:.1f}s ({_mb(rate)}/s)"
        text = f"{self.what}: {_mb(self.done)}"
        if self.total:
            text += f" of {_mb(self.total)} ({min(100, 100 * self.done // self.total)}%)"
        text += f", {_mb(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {(self.total - self.done) / rate:.0f}s"
        return text

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.bar is not None:  # a failed write: leave no half-drawn bar
            self.bar.close()


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


QUIET = Reporter(quiet=True)
