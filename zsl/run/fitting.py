"""How one fit of a run is made: the run's data, loaded once per protocol, and its fits.

:class:`Session` holds a run's datamodules and fits its grid points on the ``val`` protocol
(one by one, stacked, or sharing one generator fit, :mod:`zsl.run.stacked`) and the final
``trainval`` fit with its single test evaluation. Every fit writes only the checkpoints the
run can need (:class:`zsl.run.callbacks.FitCheckpoints`), resumes from the ``last.ckpt`` an
interrupted fit left (:func:`fit`, after :func:`check_resumable`), and turns a SIGTERM into
:class:`zsl.run.store.TrainingInterrupted` (:func:`interruptible`). The protocol's order of
stages is :mod:`zsl.run.protocol`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zsl import dist
from zsl.data.datamodule import ZSLDataModule
from zsl.data.types import ClassSpace, ProtocolName, ZSLData
from zsl.errors import CheckpointError
from zsl.evaluation import Evaluation
from zsl.models.base import ZSLModule
from zsl.models.checkpoint import load_checkpoint
from zsl.run.builders import load_data, make_datamodule, make_model, make_trainer
from zsl.run.callbacks import (
    BEST,
    LAST,
    EarlyStop,
    EvaluationRecorder,
    FitCheckpoints,
    ProjectionPlot,
    RngState,
    ValidationStart,
)
from zsl.run.folds import fold_data
from zsl.run.selection import ValFit, first_validated_epoch
from zsl.run.spec import RunSpec
from zsl.run.stacked import GridStack, SharedFit, StackRecorder
from zsl.run.store import (
    CHECKPOINT_DIR,
    ResumeError,
    TrainingInterrupted,
    received_signal,
    resume_path,
    signal_name,
)

__all__ = ["Session", "check_resumable", "fit", "interruptible"]


class Session:
    """One run's data (loaded once per protocol) and the fits made on it."""

    def __init__(self, spec: RunSpec, run_dir: Path) -> None:
        self.spec, self.run_dir = spec, run_dir
        self.model_cls = spec.model.cls
        self._data: dict[str, ZSLData] = {}
        self._spaces: dict[str, ClassSpace] = {}
        self._dms: dict[str, ZSLDataModule] = {}
        #: what the model of the last fit decided from its data (ZSLModule.data_choices)
        self.data_choices: dict[str, Any] = {}
        #: where this session's validation fits keep their checkpoints
        self.val_checkpoints = run_dir / CHECKPOINT_DIR
        #: the session whose val protocol selection trained on (a fold's with folds)
        self.selection_session: Session = self

    def for_fold(self, folds: int, fold: int) -> Session:
        """A session whose val protocol is fold ``fold`` of ``folds``
        (:func:`zsl.run.folds.fold_data`), sharing this one's loaded data otherwise; its
        validation fits keep their checkpoints in ``checkpoints/fold<fold>/``."""
        view = Session(self.spec, self.run_dir)
        view._data = dict(self._data)
        view._data["val"] = fold_data(self.data("val"), folds, fold, self.spec.data.split_seed)
        view.val_checkpoints = self.val_checkpoints / f"fold{fold}"
        return view

    @property
    def checkpoint_interval(self) -> float:
        """Seconds between ``last.ckpt`` writes within a fit (``trainer.checkpoint_interval_s``)."""
        return float(self.spec.trainer.checkpoint_interval_s)

    def data(self, protocol: ProtocolName) -> ZSLData:
        if protocol not in self._data:
            self._data[protocol] = load_data(self.spec, protocol)
        return self._data[protocol]

    def datamodule(self, protocol: ProtocolName) -> ZSLDataModule:
        """The set-up datamodule of ``protocol``, built once per run: every grid point fits on
        the same split and preprocessed tensors (a datamodule holds no state of a fit)."""
        if protocol not in self._dms:
            self._dms[protocol] = make_datamodule(self.spec, protocol, self.data(protocol))
            self._spaces[protocol] = self._dms[protocol].class_space
        return self._dms[protocol]

    def class_space(self, protocol: ProtocolName) -> ClassSpace:
        """The protocol's classes (from the last datamodule built, else a new one)."""
        if protocol not in self._spaces:
            self.datamodule(protocol)
        return self._spaces[protocol]

    def fit_validation(
        self,
        index: int,
        params: dict[str, Any],
        logger: Logger | bool,
        *extra: Callback,
    ) -> ValFit:
        """Fit grid point ``index`` on the val protocol, validating every epoch; a
        ``last.ckpt`` left by an interrupted fit is resumed from."""
        t0 = time.perf_counter()
        directory = self.val_checkpoints / f"val-{index}"
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        dm = self.datamodule("val")
        model = make_model(self.spec, dm, params)
        recorder = EvaluationRecorder()
        keep_last = not self.model_cls.closed_form  # one epoch: nothing to resume
        callbacks: list[Callback] = [recorder, RngState(), *extra]
        metric, patience = self.spec.model.search.metric, self.spec.model.search.patience
        if patience is not None:
            callbacks.append(EarlyStop(metric, patience))
        callbacks.append(FitCheckpoints(directory, metric, keep_last, self.checkpoint_interval))
        trainer = self._validation_trainer(logger, callbacks)
        fit(trainer, model, dm, directory, f"the validation fit {directory.name}")
        self.data_choices = model.data_choices()
        best, last = directory / BEST, directory / LAST
        return ValFit(
            recorder.history,
            time.perf_counter() - t0,
            str(best.relative_to(self.run_dir)) if best.is_file() else None,
            str(last.relative_to(self.run_dir)) if last.is_file() else None,
        )

    def _validation_trainer(self, logger: Logger | bool, callbacks: list[Callback]) -> pl.Trainer:
        """A trainer for a fit on the val protocol: the configured epochs, each validated from
        the first of ``model.search.validate_from`` on."""
        max_epochs = int(self.spec.trainer.max_epochs)
        start = first_validated_epoch(self.spec.model.search.validate_from, max_epochs)
        if start > 1:  # first: a skipped pass's RNG draw precedes the epoch-end checkpoint
            callbacks = [ValidationStart(start), *callbacks]
        return make_trainer(
            self.spec.trainer,
            self.model_cls,
            max_epochs,
            logger,
            validate=True,
            callbacks=callbacks,
            root_dir=self.run_dir,
        )

    def fit_stacked(
        self, indices: list[int], points: list[dict[str, Any]], logger: Logger | None
    ) -> dict[int, ValFit]:
        """Fit grid points ``indices`` together on the val protocol (:mod:`zsl.run.stacked`):
        the same histories as separate fits; each point gets its own ``best.ckpt``. A
        ``last.ckpt`` left by an interrupted stacked fit is resumed from."""
        t0 = time.perf_counter()
        dm = self.datamodule("val")
        models = []
        for index in indices:  # each point starts where its own fit would have
            pl.seed_everything(self.spec.seed, workers=True, verbose=False)
            models.append(make_model(self.spec, dm, points[index]))
        recorder = StackRecorder(*self._point_records(indices, logger))
        stack = GridStack(models, recorder.active)
        return self._fit_jointly(stack, recorder, indices, "stacked", t0)

    def fit_shared(
        self, indices: list[int], points: list[dict[str, Any]], logger: Logger | None
    ) -> dict[int, ValFit]:
        """Fit grid points ``indices``, which train identically, once on the val protocol
        (:class:`zsl.run.stacked.SharedFit`): the first point's fit, every point evaluated its
        own way at every epoch; each point gets its own history and ``best.ckpt``. A
        ``last.ckpt`` left by an interrupted shared fit is resumed from."""
        t0 = time.perf_counter()
        dm = self.datamodule("val")
        views = [make_model(self.spec, dm, points[index]) for index in indices[1:]]
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        host = make_model(self.spec, dm, points[indices[0]])  # as its own fit would start
        recorder = SharedFit(views, *self._point_records(indices, logger))
        return self._fit_jointly(host, recorder, indices, "shared", t0)

    def _point_records(
        self, indices: list[int], logger: Logger | None
    ) -> tuple[str, list[Path], list[int], Logger | None, int | None]:
        """What a :class:`StackRecorder` of points ``indices`` records, where, and the
        patience that stops each point."""
        checkpoints = self.val_checkpoints
        folders = [checkpoints / f"val-{i}" for i in indices]
        search = self.spec.model.search
        return search.metric, folders, indices, logger, search.patience

    def _fit_jointly(
        self,
        module: pl.LightningModule,
        recorder: StackRecorder,
        indices: list[int],
        kind: str,
        t0: float,
    ) -> dict[int, ValFit]:
        """One fit of ``module`` serving grid points ``indices`` (validated every epoch, the
        fit's ``last.ckpt`` in ``val-<i>-<j>...``); every point's history from ``recorder``."""
        checkpoints = self.val_checkpoints
        directory = checkpoints / ("val-" + "-".join(map(str, indices)))
        saver = FitCheckpoints(directory, None, True, self.checkpoint_interval, recorder.flush)
        trainer = self._validation_trainer(False, [recorder, RngState(), saver])
        points_text = ", ".join(str(i) for i in indices)
        what = f"the {kind} validation fit of grid points {points_text}"
        fit(trainer, module, self.datamodule("val"), directory, what)
        if isinstance(module, ZSLModule):
            self.data_choices = module.data_choices()
        seconds = (time.perf_counter() - t0) / len(indices)
        out = {}
        for g, index in enumerate(indices):
            best = checkpoints / f"val-{index}" / BEST
            relative = str(best.relative_to(self.run_dir)) if best.is_file() else None
            out[index] = ValFit(recorder.histories[g], seconds, relative, relative)
        return out

    def fit_final(
        self, params: dict[str, Any], epochs: int, gamma: float, logger: Logger | bool
    ) -> Evaluation:
        """Refit on trainval for ``epochs`` and evaluate the test split once with ``gamma``
        (chosen on validation); saves ``model.ckpt``."""
        directory = self.run_dir / CHECKPOINT_DIR / "final"
        pl.seed_everything(self.spec.seed, workers=True, verbose=False)
        dm = self.datamodule("test")
        model = make_model(self.spec, dm, params)
        model.gamma.fill_(gamma)
        recorder = EvaluationRecorder()
        callbacks: list[Callback] = [recorder, RngState()]
        if not self.model_cls.closed_form:
            callbacks.append(FitCheckpoints(directory, None, True, self.checkpoint_interval))
        if self.model_cls.uses_unseen_semantics and self.model_cls.generates_features:
            names = self.data("test").class_names
            callbacks.append(ProjectionPlot(self.run_dir, dm.evaluation_examples(), names))
        trainer = make_trainer(
            self.spec.trainer,
            self.model_cls,
            epochs,
            logger,
            validate=False,
            callbacks=callbacks,
            root_dir=self.run_dir,
        )
        fit(trainer, model, dm, directory, "the final trainval fit")
        self.data_choices = model.data_choices()
        interruptible(
            trainer, lambda: trainer.test(model, dm, verbose=False), "the test evaluation"
        )
        trainer.save_checkpoint(self.run_dir / "model.ckpt")
        assert recorder.test is not None
        return recorder.test


def fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    dm: ZSLDataModule,
    checkpoint_dir: Path | None,
    what: str,
) -> None:
    """``trainer.fit``, resumed from ``checkpoint_dir/last.ckpt`` when an interrupted fit left
    one; a SIGTERM becomes :class:`TrainingInterrupted` naming where it stopped."""
    ckpt = resume_path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        check_resumable(ckpt, model)
        if dist.is_global_zero():
            print(f"resuming {what} from {ckpt}")
    interruptible(
        trainer,
        lambda: trainer.fit(
            model, dm, ckpt_path=str(ckpt) if ckpt is not None else None, weights_only=True
        ),
        f"{what} (epoch {{epoch}}, step {{step}})",
    )


def check_resumable(ckpt: Path, model: pl.LightningModule) -> None:
    """Refuse, in one line, a checkpoint that cannot continue this fit: unreadable
    (truncated, not a checkpoint), of another model, or of another class space (dataset)."""
    try:
        weights = load_checkpoint(ckpt)["state_dict"]
    except CheckpointError as err:
        raise ResumeError(f"{err}; delete it to redo that fit from its start") from None
    ours = model.state_dict()
    if set(weights) != set(ours) or any(weights[k].shape != ours[k].shape for k in ours):
        raise ResumeError(
            f"{ckpt} holds the weights of another model ({type(model).__name__} expected); "
            "delete it to redo that fit from its start"
        )
    for key in ("seen_ids", "unseen_ids"):
        if key in ours and not torch.equal(weights[key], ours[key].cpu()):
            raise ResumeError(
                f"{ckpt} was written for another class space ({key} differ: another dataset "
                "or split); delete it to redo that fit from its start"
            )


def interruptible(trainer: pl.Trainer, stage: Callable[[], object], what: str) -> None:
    """Run a Lightning stage; a SIGTERM during it becomes :class:`TrainingInterrupted`.

    Lightning ends a SIGTERM'd stage after the current batch with ``SIGTERMException`` (a
    ``SystemExit`` with code 0), or lets it end normally when the signal came during its last
    batch; ``trainer.received_sigterm`` is set either way. ``what`` may name ``{epoch}``
    (1-based) and ``{step}``."""
    try:
        stage()
    except SIGTERMException:
        pass  # trainer.received_sigterm is set: reported below
    if trainer.received_sigterm:
        where = what.format(epoch=trainer.current_epoch + 1, step=trainer.global_step)
        signum = received_signal()
        raise TrainingInterrupted(f"{signal_name(signum)} received during {where}", signum)
