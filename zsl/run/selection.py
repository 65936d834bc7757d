"""Model selection on validation classes: grid points x epochs, then the calibration gamma.

Every point of ``model.search.grid`` is fitted with the ``val`` protocol; the validation
history (one entry per epoch, or one for closed-form models) picks the epoch count, the
best point wins on ``model.search.metric``, and the gamma chosen on validation at that point
is the one the final test evaluation uses. The test split is never read here.

Pure functions: the engine (:mod:`zsl.run.protocol`) fits the points and hands their
validation histories here; the run store (:mod:`zsl.run.store`) records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from zsl.run.spec import TRANSFER_RULES, ModelSpec


@dataclass
class Trial:
    """One validated grid point."""

    params: dict[str, Any]
    epochs: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    #: checkpoint of the chosen epoch (the fit's best.ckpt by the validation metric; its
    #: last.ckpt when epochs are not selected), relative to the run directory
    checkpoint: str | None = None
    #: the chosen epoch is the last one of several: the curve may still be rising
    epoch_cap: bool = False
    #: every epoch tied on the metric: the first epoch was chosen by the tie rule alone
    flat: bool = False


@dataclass
class ValFit:
    """What one val-protocol fit hands to selection."""

    history: list[dict[str, float]]
    seconds: float
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None


@dataclass
class Selection:
    best: Trial
    trials: list[Trial]
    metric: str
    warnings: list[str] = field(default_factory=list)
    #: class-wise validation folds averaged (1: the files' validation split)
    folds: int = 1

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        keys = sorted({k for t in self.trials for k in t.params})
        cols = [*keys, "epochs", "zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal", "gamma"]
        rows = [
            [t.params[k] for k in keys]
            + [t.epochs]
            + [
                t.metrics[c]
                for c in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal", "gamma")
            ]
            for t in self.trials
        ]
        return cols, rows


def grid_points(model: ModelSpec, use_grid: bool = True) -> list[dict[str, Any]]:
    """Full parameter dicts for every point of the search grid (just ``params`` if there is
    no grid or ``use_grid`` is False): :meth:`zsl.run.spec.ModelSpec.grid_points`."""
    return model.grid_points(use_grid)


def best_epoch(history: list[dict[str, float]], metric: str) -> dict[str, float]:
    """The first epoch with the highest validation ``metric``."""
    if not history:
        raise RuntimeError("no validation results were recorded during the val-protocol fit")
    return max(history, key=lambda h: (h[metric], -h["epoch"]))


def improves(value: float, best: float | None) -> bool:
    """``value`` is a new best of a validation history: strictly above every earlier epoch's
    (ties keep the first epoch, as :func:`best_epoch` does)."""
    return best is None or value > best


def patience_spent(wait: int, patience: int | None) -> bool:
    """A point ``wait`` validation epochs past its best has stopped under ``patience``."""
    return patience is not None and wait >= patience


def first_validated_epoch(validate_from: float, max_epochs: int) -> int:
    """The first epoch (1-based) a validation fit of ``max_epochs`` evaluates under
    ``model.search.validate_from``: ``ceil(validate_from * max_epochs)``, at least 1 and at
    most ``max_epochs`` (the last epoch is always evaluated)."""
    if not 0.0 <= validate_from < 1.0:
        raise ValueError(f"validate_from must be in [0, 1), got {validate_from!r}")
    return min(max(1, math.ceil(validate_from * max_epochs)), max(1, max_epochs))


def transfer_epochs(epochs: int, val_batches: int, trainval_batches: int, rule: str) -> int:
    """Epochs of the final trainval fit for ``epochs`` selected on the val protocol.

    ``epochs``: the same count. ``steps``: the count with about the same number of training
    batches (``epochs * val_batches / trainval_batches``, rounded, at least 1) -- trainval is
    larger than the val protocol's training set (CUB: 150 vs 100 classes), so the same epoch
    count means more updates there."""
    if rule not in TRANSFER_RULES:
        raise ValueError(f"unknown epoch transfer rule {rule!r}; use one of {TRANSFER_RULES}")
    if rule == "epochs":
        return epochs
    if val_batches < 1 or trainval_batches < 1:
        raise ValueError(
            f"batches per epoch must be >= 1, got val {val_batches}, trainval {trainval_batches}"
        )
    return max(1, round(epochs * val_batches / trainval_batches))


def make_trial(
    params: dict[str, Any],
    fit: ValFit,
    metric: str,
    select_epochs: bool = True,
) -> Trial:
    """The record of one validated grid point: its epoch chosen on ``metric`` (or the last
    epoch when epochs are not selected), the metrics there and the matching checkpoint."""
    chosen = best_epoch(fit.history, metric) if select_epochs else fit.history[-1]
    metrics = {k: v for k, v in chosen.items() if k != "epoch"}
    checkpoint = fit.best_checkpoint
    if not select_epochs and fit.last_checkpoint is not None:
        checkpoint = fit.last_checkpoint
    epochs = int(chosen["epoch"])
    values = [h[metric] for h in fit.history]
    several = len(values) > 1
    return Trial(
        params,
        epochs,
        metrics,
        fit.history,
        fit.seconds,
        checkpoint,
        epoch_cap=select_epochs and several and epochs == int(fit.history[-1]["epoch"]),
        flat=several and max(values) == min(values),
    )


def selection_warnings(selection: Selection, model: str) -> list[str]:
    """Plain-language warnings about a selection that a reader of the results must see: the
    chosen epoch is the budget's last (the curve may still rise), a flat validation signal
    (the tie rule chose), or every grid point tied."""
    best, metric = selection.best, selection.metric
    out = []
    if best.epoch_cap:
        out.append(
            f"{model}: the selected epoch is the last of the budget ({best.epochs}); validation "
            f"{metric} may still be rising: raise model.max_epochs"
        )
    if best.flat:
        out.append(
            f"{model}: flat validation signal, all {len(best.history)} epochs tie on {metric} "
            f"({best.metrics[metric]:.2f}); the first epoch was chosen by the tie rule"
        )
    values = {t.metrics[metric] for t in selection.trials}
    if len(selection.trials) > 1 and len(values) == 1:
        out.append(
            f"{model}: all {len(selection.trials)} grid points tie on validation {metric}; the "
            "first point was chosen by the tie rule"
        )
    return out


def choose(trials: list[Trial], metric: str) -> Selection:
    """The best trial on the validation ``metric`` (the first one on ties)."""
    if not trials:
        raise ValueError("no grid point was validated")
    best = max(trials, key=lambda t: t.metrics[metric])
    return Selection(best, trials, metric)
