"""Build progress on stderr: one line per step, or one JSON event per line.

- plain: `[3/7] COPY . /app` when a step starts, `[3/7] COPY . /app  (cached)` for a
  cache hit. A RUN's own output follows its line.
- tty: the same lines, and for each step that ran, its time when it ends
  (`[3/7] done in 1.25s`); the default when stderr is a terminal.
- json: `{"event": "step", "number": 3, "total": 7, "stage": "0", "instruction": "...",
  "position": "ACIfile:7:1", "cached": false}` at the start of a step, `{"event":
  "step-done", "number": 3, "seconds": 1.25, ...}` when it ends, `{"event": "image",
  "id": ..., "output": ...}` at the end. One object per line, keys sorted.
- quiet: nothing.

Long work (Reporter.meter: the image write, a COPY; downloads keep their own bar,
fetch/download.py) that lasts over a second shows, in tty mode, a tqdm bar (bytes,
rate, ETA when the total is known); in json, `{"event": "progress", "what": "write out.aci", "bytes": N,
"total": N or null, "seconds": S}` every half second and a `progress-done` event at
the end; in plain, a line every 5 seconds and one at the end (acbuild.report).
tqdm rather than rich: one small module, imported only once a bar is due (~15 ms,
never for work under a second, so start-up does not pay it).

Contract: writes only to the given stream, flushes every line.
"""

from __future__ import annotations

import json
from typing import TextIO

from acbuild.report import Meter, Reporter


class Progress(Reporter):
    """The build's reporter: step lines or events, and the notes and warnings the
    engine and trust layers send (as `note`/`warning`/`alert`/`info` events in json)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        super().__init__(stream, quiet=mode == "quiet")
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "plain"
        self.mode = mode
        self.progress_interval = {"tty": 0.1, "json": 0.5}.get(mode, Reporter.progress_interval)
        self.wants_total = mode in ("tty", "json")  # a bar's ETA, an event's total

    def progress(self, meter: Meter, final: bool) -> None:
        if self.mode == "json":
            self._event(event="progress-done" if final else "progress", what=meter.what, bytes=meter.done,
                        total=meter.total, seconds=round(meter.seconds, 3))
        elif self.mode == "tty":
            if meter.bar is None:
                from tqdm import tqdm

                # initial: the rate counts from when the bar appears, not from zero bytes
                meter.bar = tqdm(total=meter.total, initial=meter.done, desc=meter.what, unit="B", unit_scale=True,
                                 file=self.stream, mininterval=0.1, dynamic_ncols=True)
            meter.bar.update(meter.done - meter.bar.n)
            if final:
                meter.bar.close()
        else:
            super().progress(meter, final)

    def _emit(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def emit(self, kind: str, text: str) -> None:
        if self.mode == "json":
            self._event(event=kind, message=text)
        else:
            super().emit(kind, text)

    def _event(self, **fields) -> None:
        self._emit(json.dumps(fields, sort_keys=True))

    def step(self, number: int, total: int, stage: str, instruction: str, position: str, cached: bool) -> None:
        if self.mode == "json":
            self._event(event="step", number=number, total=total, stage=stage, instruction=instruction,
                        position=position, cached=cached)
        elif self.mode in ("plain", "tty"):
            self._emit(f"[{number}/{total}] {instruction}" + ("  (cached)" if cached else ""))

    def step_done(self, number: int, total: int, seconds: float) -> None:
        if self.mode == "json":
            self._event(event="step-done", number=number, total=total, seconds=round(seconds, 3))
        elif self.mode == "tty":
            self._emit(f"[{number}/{total}] done in {seconds:.2f}s")

    def image(self, image_id: str, output: str, cached: bool) -> None:
        if self.mode == "json":
            self._event(event="image", id=image_id, output=output, cached=cached)
