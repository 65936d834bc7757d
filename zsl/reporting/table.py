"""The table a run prints at its end.

It reads the selection through the small structural types :class:`ChosenPoint` and
:class:`SelectionSummary` (what :class:`zsl.run.selection.Selection` provides), so reporting
does not depend on the engine that made it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from zsl import dist


class ChosenPoint(Protocol):
    """The selected grid point: its parameters and epoch count."""

    @property
    def params(self) -> Mapping[str, Any]: ...

    @property
    def epochs(self) -> int: ...


class SelectionSummary(Protocol):
    """What the table shows of a model selection: the best point and the metric it won on."""

    @property
    def best(self) -> ChosenPoint: ...

    @property
    def metric(self) -> str: ...


def print_table(metrics: Mapping[str, Any], selection: SelectionSummary) -> None:
    """A small human-readable summary of the final numbers (printed by rank zero only),
    naming the model, the dataset and the protocol."""
    if not dist.is_global_zero():
        return
    best = selection.best
    split = "validation classes" if metrics["protocol"] == "val" else "test split"
    print(
        f"\n{metrics['model']} on {metrics['dataset']} ({split}, protocol "
        f"{metrics['protocol']}); selected {best.params} "
        f"epochs={best.epochs} by val {selection.metric}"
    )
    if metrics["final_epochs"] != best.epochs:
        print(f"trainval fit: {metrics['final_epochs']} epochs (the same number of updates)")
    print(f"{'':14}{'ZSL T1':>8}{'u':>8}{'s':>8}{'H':>8}")
    print(
        f"{'uncalibrated':14}{metrics['zsl_t1']:8.2f}{metrics['gzsl_u']:8.2f}"
        f"{metrics['gzsl_s']:8.2f}{metrics['gzsl_h']:8.2f}"
    )
    if math.isnan(metrics["gamma"]):
        print(f"{'calibrated':14}  (no validation-chosen gamma: not reported)")
    else:
        print(
            f"{'calibrated':14}{'':8}{metrics['gzsl_u_cal']:8.2f}{metrics['gzsl_s_cal']:8.2f}"
            f"{metrics['gzsl_h_cal']:8.2f}   (gamma={metrics['gamma']:.4g}, chosen on validation)"
        )
    print(f"wall time {metrics['wall_time_s']:.1f} s")
