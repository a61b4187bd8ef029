"""Progress of long work (acbuild.report.Meter, engine/progress.py): nothing for work
under a second, plain lines, a tqdm bar on a terminal, JSON events; wired into the
.aci writer and COPY.

The clock is the one thing replaced here (report.time.monotonic by a counter the
test moves): a test must not sleep seconds to see a line, and timings never decide
pass/fail. Writes and copies are real."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from acbuild import report
from acbuild.aci.writer import write_aci
from acbuild.engine.execute.copy import CopyAttrs, copy_into_rootfs
from acbuild.engine.progress import Progress
from acbuild.errors import ARGV


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(report.time, "monotonic", c)
    return c


def test_quick_work_shows_nothing(clock):
    out = io.StringIO()
    with report.Reporter(out).meter("write x.aci", 100) as m:
        m.advance(60)
        clock.now += 0.5
        m.advance(40)
    assert out.getvalue() == ""


def test_plain_lines_every_few_seconds_and_at_the_end(clock):
    out = io.StringIO()
    with report.Reporter(out).meter("write x.aci", 200_000_000) as m:
        for _ in range(10):
            clock.now += 1.0
            m.advance(10_000_000)
    lines = out.getvalue().splitlines()
    # at 1 s (the first), at 6 s (5 s later), then the end
    assert lines == [
        "acbuild: write x.aci: 10.0 MB of 200.0 MB (5%), 10.0 MB/s, ETA 19s",
        "acbuild: write x.aci: 60.0 MB of 200.0 MB (30%), 10.0 MB/s, ETA 14s",
        "acbuild: write x.aci: 100.0 MB in 10.0s (10.0 MB/s)",
    ]


def test_quiet_shows_nothing(clock):
    out = io.StringIO()
    with report.Reporter(out, quiet=True).meter("write x.aci") as m:
        clock.now += 3
        m.advance(1)
    assert out.getvalue() == ""


def test_json_events(clock):
    out = io.StringIO()
    with Progress("json", out).meter("copy to /data/", 300) as m:
        for _ in range(3):
            clock.now += 1.0
            m.advance(100)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["progress", "progress", "progress", "progress-done"]
    assert [e["bytes"] for e in events] == [100, 200, 300, 300]
    assert all(e["total"] == 300 and e["what"] == "copy to /data/" for e in events)
    assert events[-1]["seconds"] == 3.0


def test_tty_draws_a_tqdm_bar(clock):
    out = io.StringIO()
    with Progress("tty", out).meter("write x.aci", 4 << 20) as m:
        clock.now += 1.5
        m.advance(1 << 20)
        bar = m.bar
        clock.now += 1.5
        m.advance(3 << 20)
    assert bar is not None and bar.n == 4 << 20
    text = out.getvalue()
    assert "write x.aci" in text and "100%" in text and "B/s" in text


def test_a_failed_write_closes_the_bar(clock):
    out = io.StringIO()
    with pytest.raises(OSError):
        with Progress("tty", out).meter("write x.aci", 10) as m:
            clock.now += 2
            m.advance(5)
            raise OSError("disk full")
    assert m.bar is not None and m.bar.disable  # tqdm marks a closed bar disabled
    assert "50%" in out.getvalue()


def tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    for i in range(5):
        (root / "d" / f"f{i}").write_bytes(b"x" * 100_000 * (i + 1))
    (root / "link").symlink_to("d/f0")
    return root


def test_writer_and_copy_report_every_byte(tmp_path, monkeypatch):
    """A real write and a real COPY, each shown from its start (SHOW_AFTER 0): the
    last event's bytes are the tree's file bytes, and the total was known up front."""
    monkeypatch.setattr(report, "SHOW_AFTER", 0.0)
    src = tree(tmp_path / "src")
    expected = sum(100_000 * (i + 1) for i in range(5))
    out = io.StringIO()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    copy_into_rootfs(src, (".",), rootfs, "/data/", CopyAttrs(), ARGV, reporter=Progress("json", out))
    manifest = json.dumps({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x"}).encode()
    write_aci(tmp_path / "x.aci", manifest, rootfs, reporter=Progress("json", out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    done = [e for e in events if e["event"] == "progress-done"]
    assert [(e["what"], e["bytes"], e["total"]) for e in done] == [
        ("copy to /data/", expected, expected), ("write x.aci", expected, expected)]
