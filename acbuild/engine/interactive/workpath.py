"""The state of an interactive build: DIR/.acbuild/ under `--work-path DIR`.

Layout (Go acbuild's names where it had them):

    DIR/.acbuild/lock        flock'ed for the duration of every verb
    DIR/.acbuild/currentaci/ the Session work dir: `manifest` + `rootfs/`
    DIR/.acbuild/state.json  settings fixed at `begin` (SOURCE_DATE_EPOCH, cwd...)
    DIR/.acbuild/history     one JSON object per line: the FROM, then one per
                             mutating verb (its ACIfile line and what a rebuild needs)

Contract:
- Locking: `locked()` takes an exclusive, non-blocking flock on `lock` and holds
  it until the block ends; a second verb on the same work path fails at once
  with "another acbuild is working here (DIR)". The kernel drops the lock when
  the process dies, so a crash never leaves a stale lock. The lock file is
  never removed except by `end` (which removes the whole state dir while
  holding it); whoever locks next re-checks that a build is still there.
- Atomicity: the manifest and state.json are replaced atomically (temp + fsync +
  rename); a history line is appended with one write() after the verb
  succeeded. A failed COPY or RUN may leave the rootfs half-changed (as Go
  acbuild did); the manifest and history then still describe the last good step.
- Clean-up: `end` removes DIR/.acbuild; a failed `begin` removes what it made.
  Nothing else deletes state.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acbuild.atomic import write_atomic
from acbuild.dirs import private_dir
from acbuild.errors import AcbuildError, NotFoundError
from acbuild.records import dataclass

STATE_DIR = ".acbuild"
NO_BUILD = "no build in progress here; run acbuild begin"
IN_PROGRESS = "a build is already in progress here; run acbuild end first"


@dataclass(frozen=True)
class SessionState:
    """Settings fixed by `begin` and used by every later verb."""

    source_date_epoch: int = 0
    begin_cwd: str = ""  # where `begin` ran: the default history context
    record_annotations: bool = False  # Go acbuild's appc.io/acbuild/command-N


class WorkPath:
    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.state_dir = self.root / STATE_DIR
        self.lock_path = self.state_dir / "lock"
        self.currentaci = self.state_dir / "currentaci"
        self.history_path = self.state_dir / "history"
        self.state_path = self.state_dir / "state.json"

    def in_progress(self) -> bool:
        return (self.currentaci / "manifest").is_file()

    @contextmanager
    def locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the work path's lock. Without `create`, a missing state dir is
        "no build in progress" (and nothing is created)."""
        if create:
            try:
                private_dir(self.state_dir)  # it holds the image's rootfs, setuid binaries and all
            except OSError as e:
                raise AcbuildError(f"create {self.state_dir}: {e.strerror}") from e
        elif not self.state_dir.is_dir():
            raise NotFoundError(NO_BUILD)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            raise NotFoundError(NO_BUILD) from None  # `end` removed it meanwhile
        except OSError as e:
            raise AcbuildError(f"open {self.lock_path}: {e.strerror}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AcbuildError(f"another acbuild is working here ({self.root})") from None
            yield
        finally:
            os.close(fd)

    # -- state.json --------------------------------------------------------------

    def write_state(self, state: SessionState) -> None:
        _write_atomic(self.state_path, json.dumps(state.__dict__, sort_keys=True).encode() + b"\n")

    def read_state(self) -> SessionState:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return SessionState()
        except (OSError, ValueError) as e:
            raise AcbuildError(f"read {self.state_path}: {e}") from e
        return SessionState(**{k: v for k, v in data.items() if k in SessionState.__dataclass_fields__})

    # -- history -------------------------------------------------------------------

    def append_history(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_history(self) -> list[dict]:
        try:
            text = self.history_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise AcbuildError(f"{self.history_path} is damaged: {e}") from e

    def skips_state(self, context: Path):
        """An `ignore(relpath)` for COPY from `context`: never copy the state dir."""
        state = str(self.state_dir)

        def ignore(rel: str) -> bool:
            path = os.path.normpath(os.path.join(context, rel))
            return path == state or path.startswith(state + os.sep)

        return ignore


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise AcbuildError(f"write {path}: {e.strerror}") from e
