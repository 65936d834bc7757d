"""The selection stage of the protocol: fit every grid point on the val protocol (on each
class-wise fold with ``model.search.folds``, :mod:`zsl.run.folds`) and choose the point, its
epoch count and its calibration gamma on validation classes (:mod:`zsl.run.selection`).

:func:`select_on_validation` reuses the grid points recorded in ``trials/`` (an interrupted
run's), fits the others -- stacked or shared where the model allows, one by one otherwise --
and writes ``selection.json``. The test split is never read here.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger

from zsl import dist
from zsl.reporting import tracking
from zsl.run.callbacks import SelectionLogger
from zsl.run.fitting import Session
from zsl.run.folds import FoldPlan, average_histories, plan_folds
from zsl.run.progress import GridProgress
from zsl.run.selection import (
    Selection,
    Trial,
    ValFit,
    choose,
    make_trial,
    selection_warnings,
)
from zsl.run.stacked import can_stack, shared_groups
from zsl.run.store import TRIALS_DIR, load_trial, save_trial

__all__ = ["select_on_validation"]


def select_on_validation(session: Session, logger: Logger) -> Selection:
    """Fit every grid point on the val protocol (points recorded in ``trials/`` are reused)
    and choose the point, its epoch count and its gamma on validation classes; with
    ``model.search.folds`` (:mod:`zsl.run.folds`) on each class-wise fold, choosing on the
    folds' averaged validation histories."""
    spec, run_dir = session.spec, session.run_dir
    select = spec.selection
    points = spec.model.grid_points(select.grid)
    metric = spec.model.search.metric
    plan = plan_folds(spec.model.search.folds, session.data("val"))
    _announce(session, len(points), plan)
    grid_keys = list(spec.model.search.grid) if select.grid else []
    if plan.folds == 1:
        progress = GridProgress(len(points), grid_keys, metric)
        trials = _fit_points(session, logger, points, run_dir / TRIALS_DIR, progress)
    else:
        per_fold = []
        for fold in range(plan.folds):
            if dist.is_global_zero():
                print(f"fold {fold + 1}/{plan.folds}", flush=True)
            progress = GridProgress(len(points), grid_keys, metric)
            view = session.for_fold(plan.folds, fold)
            folder = run_dir / TRIALS_DIR / f"fold{fold}"
            per_fold.append(_fit_points(view, False, points, folder, progress))
            if fold == 0:
                session.selection_session = view  # its sizes carry the epochs to trainval
        trials = [
            make_trial(
                params,
                ValFit(
                    average_histories([fold_trials[i].history for fold_trials in per_fold]),
                    sum(fold_trials[i].seconds for fold_trials in per_fold),
                ),
                metric,
                select.select_epochs,
            )
            for i, params in enumerate(points)
        ]
    selection = choose(trials, metric)
    selection.folds = plan.folds
    selection.warnings = selection_warnings(selection, spec.model.name)
    for text in selection.warnings:  # one plain line each (also in selection.json)
        if dist.is_global_zero():
            print(f"warning: {text}", file=sys.stderr, flush=True)
    _record(session, selection, logger)
    return selection


def _fit_points(
    session: Session,
    logger: Logger | bool,
    points: list[dict[str, Any]],
    trials_dir: Path,
    progress: GridProgress,
) -> list[Trial]:
    """Every grid point's validated :class:`Trial` on ``session``'s val protocol: recorded
    ones from ``trials_dir``, the others fitted (stacked or shared where the model allows)
    and recorded there."""
    spec = session.spec
    select, metric = spec.selection, spec.model.search.metric
    trials: list[Trial] = []
    recorded = [load_trial(trials_dir, index, params) for index, params in enumerate(points)]
    pending = [index for index, trial in enumerate(recorded) if trial is None]
    joint_logger = logger if isinstance(logger, Logger) else None
    stacked: dict[int, ValFit] = {}
    if select.stack_grid and can_stack(session.model_cls, len(pending), spec.trainer):
        for index in pending:
            progress.started(index, points[index])
        stacked = session.fit_stacked(pending, points, joint_logger)
    elif select.stack_grid:
        for group in shared_groups(session.model_cls, pending, points, spec.trainer):
            for index in group:
                progress.started(index, points[index])
            stacked.update(session.fit_shared(group, points, joint_logger))
    joint: dict[int, Trial] = {}  # recorded as soon as their joint fit ends
    for index, fitted_jointly in stacked.items():
        joint[index] = make_trial(points[index], fitted_jointly, metric, select.select_epochs)
        if dist.is_global_zero():  # DDP: one writer
            save_trial(trials_dir, index, joint[index])
    for index, params in enumerate(points):
        trial = recorded[index]
        fitted: ValFit | None = stacked.get(index)
        if trial is not None and dist.is_global_zero():
            print(f"grid point {index}: already validated ({trials_dir}/{index}.json), skipped")
        if trial is None and fitted is not None:
            trial = joint[index]
        if trial is None:
            progress.started(index, params)
            # with a single point the val fit is the run itself in the val protocol: log it
            single = spec.data.protocol == "val" and len(points) == 1
            log = logger if single else False
            extra = [SelectionLogger(joint_logger, index)] if joint_logger is not None else []
            fitted = session.fit_validation(index, params, log, *extra)
            trial = make_trial(params, fitted, metric, select.select_epochs)
            if dist.is_global_zero():  # DDP: one writer
                save_trial(trials_dir, index, trial)
        progress.finished(index, params, trial.metrics[metric], trial.seconds, fitted is None)
        trials.append(trial)
    return trials


def _announce(session: Session, n_points: int, plan: FoldPlan) -> None:
    """Say what selection is about to do, what the val protocol removed and, when the
    files' validation split is small, how selection copes (:func:`zsl.run.folds.plan_folds`)."""
    spec = session.spec
    removed = dict(session.data("val").removed_test_images)
    note = ""
    if removed:
        note = "; test images removed from the val protocol: " + ", ".join(
            f"{n} from {key}" for key, n in removed.items()
        )
    if dist.is_global_zero():
        print(
            f"selection: {n_points} grid point(s) of {spec.model.name} on {spec.data.name} "
            f"validation classes{note}",
            flush=True,
        )
        if plan.note:
            print(plan.note, flush=True)


def _record(session: Session, selection: Selection, logger: Logger) -> None:
    """``selection.json``, the validation table and the chosen checkpoint in the logger."""
    run_dir, best = session.run_dir, selection.best
    if best.checkpoint is not None:
        tracking.log_checkpoint(
            logger,
            run_dir / best.checkpoint,
            ["val-best"],
            {"params": best.params, "epochs": best.epochs, "validation": best.metrics},
        )
    cols, rows = selection.rows()
    tracking.log_table(logger, "selection/validation", cols, rows)
    record = {
        "metric": selection.metric,
        "folds": selection.folds,
        "best": asdict(best),
        "warnings": selection.warnings,
        "removed_test_images": dict(session.data("val").removed_test_images),
        "trials": [asdict(t) for t in selection.trials],
    }
    dist.write_text(run_dir / "selection.json", json.dumps(record, indent=2, default=float))
