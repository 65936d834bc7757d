"""One process per run directory: an exclusive lock file, released on exit.

A run (new or resumed) holds ``<run dir>/.zsl-run.lock`` for its whole life: an advisory,
exclusive ``flock`` on an open file, which the operating system drops when the process ends
however it ends (``kill -9`` included), so a lock left by a killed process is stale and is
taken over. The file records the holder (process id, host, start time) for the message a
second run gets: :class:`zsl.errors.RunLockedError`, one line. Where ``fcntl`` is missing
(Windows) the file is written but nothing is locked.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from zsl.errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".zsl-run.lock"


class RunLock:
    """Exclusive ownership of ``run_dir`` by this process (a context manager)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        #: the holder a stale lock named (a killed process), when this lock took it over
        self.stale_holder: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming the live holder."""
        for _ in range(100):  # the file may be replaced between open and lock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._try_lock(fd):
                holder = _read_holder(self.path)
                os.close(fd)
                raise RunLockedError(
                    f"run directory {self.path.parent} is in use by {_describe(holder)}; wait "
                    "for it to end, or choose another output_dir"
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and removed it meanwhile: lock the new file
                os.close(fd)
                continue
            previous = _read_holder(self.path)
            self.stale_holder = previous or None
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
            self._fd = fd
            return self
        raise RunLockedError(f"cannot lock the run directory {self.path.parent}")

    @staticmethod
    def _try_lock(fd: int) -> bool:
        if fcntl is None:  # pragma: no cover - Windows: no advisory locks, no guard
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: no one locks a dying file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    since = (
        time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(float(started)))
        if isinstance(started, int | float)
        else ""
    )
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{since}"
