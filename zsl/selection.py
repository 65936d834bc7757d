"""Model selection on validation classes: grid points x epochs, then the calibration gamma.

Every point of ``model.search.grid`` is fitted with the ``val`` protocol; the validation
history (one entry per epoch, or one for closed-form models) picks the epoch count, the
best point wins on ``model.search.metric``, and the gamma chosen on validation at that point
is the one the final test evaluation uses. The test split is never read here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class Trial:
    """One validated grid point."""

    params: dict[str, Any]
    epochs: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Selection:
    best: Trial
    trials: list[Trial]
    metric: str

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


def grid_points(model_cfg: DictConfig, use_grid: bool = True) -> list[dict[str, Any]]:
    """Full parameter dicts for every point of the search grid (just ``params`` if there is
    no grid or ``use_grid`` is False)."""
    base: dict[str, Any] = OmegaConf.to_container(model_cfg.params, resolve=True)  # type: ignore
    search = model_cfg.get("search")
    grid = dict(search.get("grid") or {}) if (search is not None and use_grid) else {}
    if not grid:
        return [base]
    keys = list(grid)
    values = [list(grid[k]) for k in keys]
    return [{**base, **dict(zip(keys, combo))} for combo in itertools.product(*values)]


def best_epoch(history: list[dict[str, float]], metric: str) -> dict[str, float]:
    """The first epoch with the highest validation ``metric``."""
    if not history:
        raise RuntimeError("no validation results were recorded during the val-protocol fit")
    return max(history, key=lambda h: (h[metric], -h["epoch"]))


def select(
    model_cfg: DictConfig,
    fit_val: Callable[[dict[str, Any]], tuple[list[dict[str, float]], float]],
    select_epochs: bool = True,
    use_grid: bool = True,
) -> Selection:
    """Run ``fit_val(params) -> (history, seconds)`` for every grid point and pick the best."""
    search = model_cfg.get("search")
    metric = str(search.get("metric", "zsl_t1")) if search is not None else "zsl_t1"
    trials = []
    for params in grid_points(model_cfg, use_grid):
        history, seconds = fit_val(params)
        chosen = best_epoch(history, metric) if select_epochs else history[-1]
        metrics = {k: v for k, v in chosen.items() if k != "epoch"}
        trials.append(Trial(params, int(chosen["epoch"]), metrics, history, seconds))
    best = max(trials, key=lambda t: t.metrics[metric])
    return Selection(best, trials, metric)
