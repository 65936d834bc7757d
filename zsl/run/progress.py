"""Run-level progress: one line per grid point, readable in a terminal and in a log file.

``point 3/25 feature_reg=1 semantic_reg=0.1 · val zsl_t1 41.2 · best 43.0 · elapsed 1:12 ·
ETA 4:30``: a line when a point ends (and when it starts, if points take over 10 s), with no
ETA once no fit is left, flushed at once so a job's log (SLURM, nohup) shows them as they
happen. Lightning's own per-fit banners and tips are not shown (:func:`quiet_lightning`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from zsl import dist

#: Lightning's loggers of its informational per-fit lines (GPU/TPU available, tips, "stopped")
_LIGHTNING_INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.trainer.connectors.checkpoint_connector",
)


def quiet_lightning() -> None:
    """Hide Lightning's informational lines from now on (warnings still show)."""
    for name in _LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def clock(seconds: float) -> str:
    """``75.2 -> '1:15'``, ``3725 -> '1:02:05'``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(params: dict[str, Any], keys: list[str]) -> str:
    """The grid's own keys of a point, ``a=1 b.c=0.1`` (nested keys dotted)."""
    out = []
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(out)


class GridProgress:
    """Progress of a selection over ``n`` grid points (rank zero prints)."""

    def __init__(self, n: int, keys: list[str], metric: str) -> None:
        self.n, self.keys, self.metric = n, keys, metric
        self.start = time.perf_counter()
        self.fitted: list[float] = []  # seconds of the points fitted in this process
        self.best: float | None = None
        self.begun: set[int] = set()  # points whose fit started (a stacked grid: all at once)
        self.done: set[int] = set()  # points reported by finished()

    def _print(self, text: str) -> None:
        if dist.is_global_zero():
            print(text, flush=True)

    def started(self, index: int, params: dict[str, Any]) -> None:
        """A start line for the first point and for points that take a while (> 10 s)."""
        self.begun.add(index)
        if self.fitted and sum(self.fitted) / len(self.fitted) < 10.0:
            return
        what = describe(params, self.keys) if self.keys else "the configured parameters"
        self._print(f"point {index + 1}/{self.n} {what} · fitting")

    def finished(
        self, index: int, params: dict[str, Any], value: float, seconds: float, reused: bool
    ) -> None:
        """The point's line; its ETA covers the points whose fit has not started yet, and is
        left out once none is left (the last point, every point of a stacked grid: they were
        fitted together before the first line) or while no fit has been timed."""
        self.best = value if self.best is None else max(self.best, value)
        if not reused:
            self.fitted.append(seconds)
        self.done.add(index)
        elapsed = time.perf_counter() - self.start
        left = self.n - len(self.begun | self.done)
        eta = ""
        if left > 0 and self.fitted:
            eta = f" · ETA {clock(left * sum(self.fitted) / len(self.fitted))}"
        what = describe(params, self.keys) if self.keys else "the configured parameters"
        self._print(
            f"point {index + 1}/{self.n} {what} · val {self.metric} {value:.1f} · best "
            f"{self.best:.1f} · elapsed {clock(elapsed)}{eta}" + (" (recorded)" if reused else "")
        )
