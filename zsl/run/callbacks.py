"""Lightning callbacks of the engine: the evaluation record (validation history and the test
result), the RNG states in checkpoints, the checkpoint files of a run and the feature
projection plot of generative models.

Results reach the engine through these callbacks (their state is saved with every
checkpoint, so a resumed fit continues its validation history); nothing is read off a model's
attributes afterwards.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from zsl.data.types import ExampleSet
from zsl.evaluation import Evaluation
from zsl.run.selection import improves, patience_spent

LAST = "last.ckpt"
BEST = "best.ckpt"


def evaluation_result(pl_module: pl.LightningModule) -> Evaluation:
    """The result of the evaluation pass ``pl_module`` just finished (its evaluator's)."""
    evaluator = getattr(pl_module, "evaluator", None)
    if evaluator is None or evaluator.result is None:
        raise RuntimeError(f"{type(pl_module).__name__} finished an evaluation without a result")
    result: Evaluation = evaluator.result
    return result


class EvaluationRecorder(Callback):
    """Collects every validation pass (one entry per epoch) and the test pass of a fit."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.test: Evaluation | None = None

    @property
    def state_key(self) -> str:
        return "EvaluationRecorder"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        entry = {"epoch": trainer.current_epoch + 1, **evaluation_result(pl_module).metrics}
        self.history.append(entry)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = evaluation_result(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]


class ValidationStart(Callback):
    """No validation pass before epoch ``first_epoch`` (1-based; ``model.search.validate_from``):
    a generator's evaluation synthesises and fits a classifier, and its early epochs are never
    the selected ones.

    Training is the same as with every epoch validated, so the histories are the every-epoch
    ones from ``first_epoch`` on: evaluation draws from its own seeded RNG, and the one number
    a validation pass takes from the global RNG (the base seed of its DataLoader iterator) is
    drawn at the end of each skipped epoch as well."""

    #: a validation interval no epoch number reaches (Lightning validates when it divides)
    _NEVER = 2**31 - 1

    def __init__(self, first_epoch: int) -> None:
        self.first_epoch = int(first_epoch)

    def _due(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch + 1 >= self.first_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.check_val_every_n_epoch = 1 if self._due(trainer) else self._NEVER

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):
            torch.empty((), dtype=torch.int64).random_()  # the skipped pass's base seed


class EarlyStop(Callback):
    """Stops a validation fit once ``val/<metric>`` has not strictly improved for ``patience``
    validation epochs (``model.search.patience``); the history up to there is the fit's. A
    stacked or shared fit applies the same rule to each of its points
    (:class:`zsl.run.stacked.StackRecorder`)."""

    def __init__(self, metric: str, patience: int) -> None:
        self.metric, self.patience = metric, patience
        self.best: float | None = None
        self.wait = 0

    @property
    def state_key(self) -> str:
        return "EarlyStop"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from the last.ckpt of a fit that had already stopped: nothing more to train
        if patience_spent(self.wait, self.patience):
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = float(evaluation_result(pl_module).metrics[self.metric])
        if improves(value, self.best):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if patience_spent(self.wait, self.patience):
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait = state_dict["best"], int(state_dict["wait"])


class SelectionLogger(Callback):
    """Logs every validation epoch of a selection fit to the run's logger while it runs, as
    ``selection/point_<index>/<metric>`` with the epoch as step (W&B: one curve per point)."""

    def __init__(self, logger: Logger, index: int) -> None:
        self.logger, self.index = logger, index

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = evaluation_result(pl_module).metrics
        prefix = f"selection/point_{self.index}"
        values = {f"{prefix}/{k}": v for k, v in metrics.items() if math.isfinite(v)}
        values[f"{prefix}/epoch"] = trainer.current_epoch + 1
        self.logger.log_metrics(values, step=trainer.current_epoch + 1)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python ``random``) as tensors and
    plain Python values, so checkpoints holding them load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, np.int64)), int(pos)]
        + [int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA only where it was saved and is present)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngState(Callback):
    """Saves the global RNG states with every checkpoint and restores them when a trainer
    resumes a fit from one (``trainer.fit(..., ckpt_path=...)``), so a resumed run draws the
    same noise as an uninterrupted one. ``load_from_checkpoint`` does not touch them."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["zsl_rng_state"] = rng_state()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if "zsl_rng_state" in checkpoint:
            set_rng_state(checkpoint["zsl_rng_state"])


class FitCheckpoints(Callback):
    """The checkpoint files of one fit, written only when a run can need them.

    * ``best.ckpt`` (``metric`` given): the checkpoint of the first epoch reaching the best
      ``val/<metric>`` (as selection picks it). It is kept in memory and written when the fit
      ends, and beside every ``last.ckpt`` if it changed since: not once per improving epoch.
    * ``on_write(trainer)``: called where ``best.ckpt`` is, for files of the same moments (a
      stacked grid's per-point bests, :mod:`zsl.run.stacked`).
    * ``last.ckpt`` (``keep_last``): what an interrupted fit resumes from. Written at the end
      of the first epoch, then at an epoch end only when ``interval_s`` seconds have passed
      since the last write, and at the end of the last epoch. A fit stopped by SIGTERM resumes from
      the last one written, at most ``interval_s`` of training earlier; one written every
      epoch cost more than the epochs of a small model.

    Under DDP every rank takes the same decisions (rank zero's clock) and rank zero writes.
    """

    def __init__(
        self,
        directory: Path,
        metric: str | None,
        keep_last: bool,
        interval_s: float = 60.0,
        on_write: Callable[[pl.Trainer], None] | None = None,
    ) -> None:
        if metric is not None and "/" in metric:  # a bare name such as zsl_t1; never test/...
            raise ValueError(f"expected a metric name such as zsl_t1, got {metric!r}")
        self.directory, self.metric, self.keep_last = Path(directory), metric, keep_last
        self.interval_s = float(interval_s)
        self.on_write = on_write  # more files written beside last.ckpt and at the end
        self.best_score: float | None = None
        self._best: dict[str, Any] | None = None  # the best epoch's checkpoint, not yet written
        self._last_write: float | None = None

    @property
    def state_key(self) -> str:
        return "FitCheckpoints"

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")

    def _write(self, trainer: pl.Trainer, checkpoint: dict[str, Any], name: str) -> None:
        trainer.strategy.save_checkpoint(checkpoint, self.directory / name)
        trainer.strategy.barrier("FitCheckpoints")

    def _flush_best(self, trainer: pl.Trainer) -> None:
        if self._best is not None:
            self._write(trainer, self._best, BEST)
            self._best = None
        if self.on_write is not None:
            self.on_write(trainer)

    def _save_last(self, trainer: pl.Trainer) -> None:
        self._flush_best(trainer)
        trainer.save_checkpoint(self.directory / LAST)
        self._last_write = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metric is not None:
            value = trainer.callback_metrics.get(f"val/{self.metric}")
            if value is not None and improves(float(value), self.best_score):
                self.best_score = float(value)
                # an in-memory dump of the live trainer (a save, nothing is read from a file):
                # optimizer and loop states included, so best.ckpt can resume the fit
                dumped = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
                self._best = cloned(dumped)
        if not self.keep_last:
            return
        final = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        due = self._last_write is None or time.monotonic() - self._last_write >= self.interval_s
        if trainer.strategy.broadcast(due or final, src=0):
            self._save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.received_sigterm:  # stopped mid-epoch: the last write stands
            self._flush_best(trainer)


def cloned(value: Any) -> Any:
    """A copy of a checkpoint dict whose tensors no later optimiser step can change."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, cloned(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(cloned(v) for v in value)
    return value


class ProjectionPlot(Callback):
    """After the test pass of a generative model: a PCA plot of real vs synthetic examples of
    a few unseen test classes, saved as ``<model>_projection.png`` in ``directory``."""

    def __init__(
        self,
        directory: Path,
        examples: ExampleSet,
        class_names: tuple[str, ...],
        n_classes: int = 5,
        n_per_class: int = 100,
    ) -> None:
        self.directory, self.examples, self.class_names = directory, examples, class_names
        self.n_classes, self.n_per_class = n_classes, n_per_class
        self.path: Path | None = None

    @torch.no_grad()
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from zsl.models.generative.base import GenerativeZSL
        from zsl.reporting.plots import plot_feature_projection

        if not trainer.is_global_zero or not isinstance(pl_module, GenerativeZSL):
            return
        eval_y = self.examples.labels
        unseen = pl_module.unseen_ids.tolist()
        classes = [c for c in unseen if bool((eval_y == c).any())][: self.n_classes]
        if not classes:
            return
        gen = torch.Generator().manual_seed(pl_module.second_stage.eval_seed)
        real, real_y = [], []
        for c in classes:
            idx = torch.nonzero(eval_y == c).squeeze(1)[: self.n_per_class]
            real.append(pl_module.embed(self.examples.features[idx].to(pl_module.device)))
            real_y.append(torch.full((idx.numel(),), c, dtype=torch.long))
        ids = torch.tensor(classes, device=pl_module.device)
        synth = pl_module.synthesize(pl_module.semantics[ids], self.n_per_class, gen)
        name = type(pl_module).__name__
        self.path = plot_feature_projection(
            torch.cat(real).cpu(),
            torch.cat(real_y),
            synth.cpu(),
            ids.cpu().repeat_interleave(self.n_per_class),
            self.directory / f"{name.lower()}_projection.png",
            class_names=self.class_names,
            title=f"{name}: real vs synthetic {pl_module.example_space}, unseen classes",
        )
