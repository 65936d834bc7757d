"""The protocol as a library: select on validation classes, refit on trainval, test once.

:func:`run_protocol` is the engine behind ``python train.py``: for every point of the model's
search grid it fits the ``val`` protocol and records the validation history per epoch
(:mod:`zsl.run.selection` picks the point, the epoch count and the calibration gamma; the
fits themselves are :class:`zsl.run.fitting.Session`'s); with
``data.protocol=test`` it then refits on ``trainval`` and evaluates the test split exactly
once. It writes ``config.yaml``, ``selection.json``, ``metrics.json``, checkpoints and plots
into the run directory and returns a :class:`RunResult`. SIGTERM stops it with
:class:`zsl.run.store.TrainingInterrupted`, whose message says how to resume.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger

from zsl import dist
from zsl.data.types import ClassSpace, ProtocolName
from zsl.evaluation import Evaluation
from zsl.heap import retain_freed_memory
from zsl.reporting import tracking
from zsl.reporting.provenance import provenance
from zsl.reporting.report import write_reports
from zsl.run.config import to_container
from zsl.run.fitting import Session
from zsl.run.selection import (
    Selection,
    transfer_epochs,
)
from zsl.run.spec import RunSpec
from zsl.run.store import (
    CHECKPOINT_DIR,
    TrainingInterrupted,
    interrupt_guard,
)
from zsl.run.validation import select_on_validation

#: the run's config with the selected values filled in (see :func:`selected_config`)
SELECTED_CONFIG = "config_selected.yaml"
#: the scalar results reported for every run
REPORT_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")


@dataclass
class RunResult:
    """What a run produced: the reported metrics (``metrics.json``), the selection and, for
    the test protocol, the single test evaluation."""

    metrics: dict[str, Any]
    selection: Selection
    evaluation: Evaluation | None = None
    files: list[Path] = field(default_factory=list)


def refit_and_test(
    session: Session, selection: Selection, logger: Logger
) -> tuple[Evaluation, int, dict[str, Any], list[Path]]:
    """The final trainval fit with the selected point and the single test evaluation;
    returns it, the number of epochs trained, the parameters of that fit (the selected ones,
    with an epoch-counted schedule rescaled under ``search.transfer: steps``) and the report
    files written."""
    spec, run_dir, best = session.spec, session.run_dir, selection.best
    final_epochs, params = best.epochs, dict(best.params)
    rule = spec.model.search.transfer
    if rule != "epochs" and not session.model_cls.closed_form:  # only steps needs the sizes
        batches = (
            len(session.selection_session.datamodule("val").train_dataloader()),
            len(session.datamodule("test").train_dataloader()),
        )
        final_epochs = transfer_epochs(best.epochs, *batches, rule)
        params = session.model_cls.steps_transfer_params(params, batches[0] / batches[1])
    evaluation = session.fit_final(params, final_epochs, best.metrics["gamma"], logger)
    tracking.log_checkpoint(
        logger,
        run_dir / "model.ckpt",
        ["final"],
        {"params": best.params, "epochs": best.epochs, "test": dict(evaluation.metrics)},
    )
    space = session.class_space("test")
    title = f"{spec.model.name} on {spec.data.name} (test protocol)"
    reports = write_reports(evaluation, space, run_dir, logger, "test", title)
    return evaluation, final_epochs, params, reports


def per_class_record(evaluation: Evaluation, space: ClassSpace) -> dict[str, dict[str, Any]]:
    """Per-class test accuracy in percent, each class marked seen or unseen (classes of the
    protocol only; ``null`` for a class without test images)."""
    seen = set(space.seen_ids.tolist())
    out: dict[str, dict[str, Any]] = {}
    cal = evaluation.per_class_cal
    for c in sorted([*space.seen_ids.tolist(), *space.unseen_ids.tolist()]):
        acc = float(evaluation.per_class[c])
        out[space.class_names[c]] = {
            "split": "seen" if c in seen else "unseen",
            "accuracy": None if math.isnan(acc) else 100.0 * acc,
        }
        if cal is not None:
            value = float(cal[c])
            out[space.class_names[c]]["accuracy_calibrated"] = (
                None if math.isnan(value) else 100.0 * value
            )
    return out


def run_protocol(spec: RunSpec, run_dir: Path) -> RunResult:
    """Select on validation classes, then (test protocol) refit and test once.

    With ``spec.resume`` set (by :func:`zsl.run.store.resume_config`) the run continues in
    ``run_dir``: recorded grid points are skipped and interrupted fits resume from their
    ``last.ckpt``."""
    start = time.perf_counter(), time.process_time()
    retain_freed_memory()  # steps reuse freed buffers instead of faulting in fresh pages
    if spec.resume:
        if dist.is_global_zero():
            print(f"resuming the run in {run_dir} with its config.yaml")
        # our own checkpoint and CSV log folders are expected to hold files now
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    else:
        dist.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(spec.config))  # rank zero
    logger: Logger | None = None
    try:
        with interrupt_guard():
            config = to_container(spec.config)
            logger = tracking.make_logger(spec.logger, run_dir, config, bool(spec.resume))
            result = _stages(Session(spec, run_dir), logger, start)
    except TrainingInterrupted as err:
        if logger is not None:
            tracking.finish(logger, exit_code=1)
        raise TrainingInterrupted(
            f"{err}. Finished grid points and the last epoch-end checkpoint are saved in "
            f"{run_dir}; continue with: python train.py resume={run_dir}",
            err.signum,
        ) from None
    return result


def check_data_first(session: Session) -> list[str]:
    """Load and check every split the run will use before its first fit (a broken test split
    stops the run at once, not after the whole selection); returns the names of the classes
    of the semantics that have no image in the protocol that is reported (warned about: they
    are neither trained on nor evaluated)."""
    protocol: ProtocolName = "test" if session.spec.data.protocol == "test" else "val"
    session.datamodule("val")
    dm = session.datamodule(protocol)
    if protocol == "val":  # the other classes are the test protocol's: expected
        return []
    assert dm.split is not None
    used = np.union1d(dm.split.seen_classes, dm.split.unseen_classes)
    names = dm.class_space.class_names
    idle = [names[c] for c in np.setdiff1d(np.arange(len(names)), used)]
    if idle and dist.is_global_zero():
        shown = ", ".join(idle[:10]) + (f" and {len(idle) - 10} more" if len(idle) > 10 else "")
        print(
            f"warning: {len(idle)} class(es) have no image in trainval_loc or test_unseen_loc "
            f"and are left out of training and evaluation: {shown}",
            file=sys.stderr,
            flush=True,
        )
    return idle


def _stages(session: Session, logger: Logger, start: tuple[float, float]) -> RunResult:
    """Selection, the final fit and test, ``metrics.json`` and the W&B summary."""
    spec, run_dir = session.spec, session.run_dir
    idle = check_data_first(session)
    selection = select_on_validation(session, logger)
    best = selection.best
    evaluation: Evaluation | None = None
    reports: list[Path] = []
    final_epochs = best.epochs
    if spec.data.protocol == "val":
        metrics: dict[str, Any] = dict(best.metrics)
    else:
        evaluation, final_epochs, final_params, reports = refit_and_test(session, selection, logger)
        metrics = dict(evaluation.metrics)
        if final_params != best.params:  # an epoch-counted schedule kept its updates
            metrics["final_params"] = final_params
    metrics.update(
        seed=spec.seed,
        protocol=spec.data.protocol,
        dataset=spec.data.name,
        model=spec.model.name,
        selected_params=best.params,
        selected_epochs=best.epochs,
        final_epochs=final_epochs,
        selection_metric=selection.metric,
        selection_folds=selection.folds,
        selection_warnings=selection.warnings,
        val_removed_test_images=dict(session.data("val").removed_test_images),
        synthetic_features=session.data("val").synthetic_features,
        fixed_params=list(spec.selection.fixed),
        classes_without_images=idle,
        wall_time_s=time.perf_counter() - start[0],
        # CPU seconds of every thread of this process during the run (not start-up, imports)
        cpu_time_s=time.process_time() - start[1],
    )
    if session.data_choices:  # of the final fit (val protocol: of the last validation fit)
        metrics["data_choices"] = session.data_choices
    if evaluation is not None:
        metrics["per_class_accuracy"] = per_class_record(evaluation, session.class_space("test"))
    metrics["provenance"] = provenance(spec.seed)
    dist.write_text(run_dir / SELECTED_CONFIG, selected_config(spec, best.params, final_epochs))
    dist.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    summary_keys = (*REPORT_KEYS, "ausuc", "gamma", "wall_time_s", "cpu_time_s")
    tracking.log_summary(logger, {f"final/{k}": v for k, v in metrics.items() if k in summary_keys})
    files = [run_dir / "config.yaml", run_dir / SELECTED_CONFIG, run_dir / "metrics.json"]
    files.append(run_dir / "selection.json")
    plots = sorted(run_dir.glob("*_projection.png"))
    tracking.attach_files(logger, [*files, *reports, *plots])
    tracking.finish(logger)
    if not spec.keep_checkpoints and dist.is_global_zero():
        tidy_checkpoints(run_dir, best.checkpoint)
    return RunResult(metrics, selection, evaluation, [*files, *reports, *plots])


def selected_config(spec: RunSpec, params: dict[str, Any], epochs: int) -> str:
    """``config_selected.yaml``: the run's config with what selection chose filled in, the
    model's parameters and the epochs of the final fit (``config.yaml`` keeps the composed
    one, with the search grid)."""
    chosen = OmegaConf.create(to_container(spec.config))
    OmegaConf.update(chosen, "model.params", params, merge=False)
    OmegaConf.update(chosen, "trainer.max_epochs", int(epochs))
    OmegaConf.update(chosen, "selection.grid", False)
    OmegaConf.update(chosen, "selection.select_epochs", False)
    head = (
        "# The settings that ran in the final fit: model.params as selected on validation\n"
        "# classes (metrics.json's final_params, where search.transfer: steps rescaled an\n"
        "# epoch-counted schedule), trainer.max_epochs as trained (config.yaml holds the\n"
        "# composed config).\n"
    )
    return head + OmegaConf.to_yaml(chosen)


def tidy_checkpoints(run_dir: Path, keep: str | None) -> None:
    """After a finished run, remove the checkpoints only resume needed: every grid point's and
    the final fit's, keeping ``model.ckpt`` and the selected point's ``keep`` (the validation
    best that ``selection.json`` and the logger name). ``keep_checkpoints=true`` skips this."""
    folder = run_dir / CHECKPOINT_DIR
    kept = (run_dir / keep).resolve() if keep else None
    for path in sorted(folder.rglob("*.ckpt")) if folder.is_dir() else []:
        if path.resolve() != kept:
            path.unlink(missing_ok=True)
    for path in sorted(folder.rglob("*"), reverse=True) if folder.is_dir() else []:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
