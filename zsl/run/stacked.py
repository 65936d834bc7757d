"""Several grid points of one model fitted in one batched pass (selection on validation classes).

A grid over learning rate, margin or weight decay trains G independent copies of one model on
the same batches. :class:`GridStack` holds the G copies and trains them together: one training
loop, one batch read per step, each point's own loss (their sum is minimised, so every point's
gradient is exactly its own), one optimiser with one parameter group per point (its own
learning rate and weight decay), and one validation pass per epoch in which every point is
scored. Each point starts from the initialisation its own fit would have had (the seed is set
before each copy is built) and sees the same batches, so its validation history -- and the
selection -- are those of G separate fits; what is shared is the per-fit and per-step work that
is not arithmetic (trainer, loops, batch gathering, checkpoints).

A model class opts in with ``stackable = True`` (the iterative compatibility models: no
randomness in training, one optimiser, nothing but ``lr``/``weight_decay``/``margin``-like
hyper-parameters that do not change shapes). :func:`can_stack` says when a selection stacks.

Grid points that *train* identically -- they agree on what ``training_params`` of the model
class keeps, e.g. a generative model's grid over its second stage -- need one fit, not one
each: :class:`SharedFit` trains the first and evaluates every point its own way on the
trained weights after each epoch (:func:`shared_groups` finds them).

With ``model.search.patience``, each point stops as its own fit would
(:class:`zsl.run.callbacks.EarlyStop`): a stacked point leaves the summed loss (its
parameters get no gradient, so the optimiser skips them) and the validation pass, a shared
point is no longer evaluated; the fit ends when every point has stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn

from zsl.data.types import ZSLBatch, ZSLDataSource
from zsl.evaluation import Evaluation
from zsl.models.base import BATCH_MEMO, MEMO_POINTS, ZSLModule
from zsl.run.callbacks import BEST, cloned, evaluation_result
from zsl.run.selection import improves, patience_spent
from zsl.run.spec import TrainerSpec

__all__ = ["GridStack", "SharedFit", "StackRecorder", "can_stack", "shared_groups"]


def can_stack(model_cls: type[ZSLModule], n_points: int, trainer: TrainerSpec) -> bool:
    """Stack ``n_points`` (> 1) of ``model_cls`` when the class allows it and no trainer
    setting couples the points (gradient clipping would clip their joint norm)."""
    return model_cls.stackable and n_points > 1 and not trainer.gradient_clip_val


class GridStack(pl.LightningModule):
    """G bound models of one class trained and validated together (see the module docstring)."""

    def __init__(
        self, models: list[ZSLModule], active: Callable[[], list[bool]] | None = None
    ) -> None:
        super().__init__()
        if not models or len({type(m) for m in models}) != 1:
            raise ValueError("GridStack needs one or more models of one class")
        self.points = nn.ModuleList(models)
        #: which points still train (:meth:`StackRecorder.active`); all by default
        self.active = active or (lambda: [True] * len(models))
        #: each point's evaluation of the last validation pass (None: a stopped point)
        self.evaluations: list[Evaluation | None] = []

    def models(self) -> list[ZSLModule]:
        return [m for m in self.points if isinstance(m, ZSLModule)]

    def on_fit_start(self) -> None:
        for model in self.models():  # step/epoch in their messages, the device they run on
            model.trainer = self.trainer

    def training_step(self, batch: ZSLBatch, batch_idx: int) -> Tensor:
        models = self.models()
        local = models[0].to_local(batch.labels)
        total: Tensor | None = None
        for model, active in zip(models, self.active(), strict=True):
            if not active:
                continue
            loss = model.training_loss(batch, local, model.seen_semantics())
            model.check_finite(loss, "loss")
            total = loss if total is None else total + loss
        # a fit whose points have all stopped ends at that epoch, or at once when resumed
        assert total is not None, "every grid point of the stacked fit has stopped"
        # DDP: weight this rank's mean loss by its share of the global batch (ZSLBatch.share)
        return total * batch.share if batch.share != 1.0 else total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimiser of the points' own class with one parameter group per point."""
        optimisers = [model.configure_optimizers() for model in self.models()]
        if not all(isinstance(o, torch.optim.Optimizer) for o in optimisers):
            raise TypeError("stacked grid points must each configure a single optimiser")
        kinds = {type(o) for o in optimisers}
        if len(kinds) != 1:
            raise TypeError(
                f"stacked grid points use different optimisers: {sorted(map(str, kinds))}"
            )
        groups = [group for o in optimisers for group in o.param_groups]
        first: torch.optim.Optimizer = optimisers[0]
        return type(first)(groups, **first.defaults)

    def _active_models(self) -> list[ZSLModule]:
        return [m for m, active in zip(self.models(), self.active(), strict=True) if active]

    def on_validation_epoch_start(self) -> None:
        for model in self._active_models():
            model._start_eval()

    def validation_step(self, batch: ZSLBatch, batch_idx: int) -> None:
        for model in self._active_models():
            model._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.evaluations = []
        for model, active in zip(self.models(), self.active(), strict=True):
            if not active:
                self.evaluations.append(None)
                continue
            assert model.evaluator is not None
            self.evaluations.append(model.evaluator.compute(None, choose_gamma=True))


class StackRecorder(Callback):
    """The validation history of every point of a :class:`GridStack` fit, and each point's
    ``best.ckpt`` (the first epoch reaching its best ``val/<metric>``, written as the point's
    own model checkpoint into ``directories[g]``). Bests are kept in memory and written by
    :meth:`flush`, which :class:`zsl.run.callbacks.FitCheckpoints` calls beside every
    ``last.ckpt`` and at the end of the fit. ``logger`` gets ``selection/point_<index>/...``
    per epoch, as for separate fits."""

    def __init__(
        self,
        metric: str,
        directories: list[Path],
        indices: list[int],
        logger: Logger | None,
        patience: int | None = None,
    ) -> None:
        self.metric, self.directories, self.indices, self.logger = (
            metric,
            directories,
            indices,
            logger,
        )
        self.patience = patience
        self.histories: list[list[dict[str, float]]] = [[] for _ in directories]
        self.best_scores: list[float | None] = [None for _ in directories]
        #: validation epochs since each point's best (``patience`` stops it)
        self.waits: list[int] = [0 for _ in directories]
        self._pending: dict[int, dict[str, Any]] = {}

    def active(self) -> list[bool]:
        """Which points still train: those within ``patience`` of their best."""
        return [not patience_spent(wait, self.patience) for wait in self.waits]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from the last.ckpt of a fit whose points had all stopped
        if not any(self.active()):
            trainer.should_stop = True

    @property
    def state_key(self) -> str:
        return "StackRecorder"

    def state_dict(self) -> dict[str, Any]:
        return {
            "histories": [[dict(e) for e in h] for h in self.histories],
            "best_scores": list(self.best_scores),
            "waits": list(self.waits),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.histories = [[dict(e) for e in h] for h in state_dict["histories"]]
        self.best_scores = list(state_dict["best_scores"])
        self.waits = [int(w) for w in state_dict.get("waits", [0] * len(self.histories))]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        assert isinstance(pl_module, GridStack)
        self.record(trainer, pl_module.evaluations, pl_module.models())

    def record(
        self,
        trainer: pl.Trainer,
        evaluations: list[Evaluation | None],
        models: list[ZSLModule],
    ) -> None:
        """One validation pass of every point still training (None: a stopped point): its
        history entry, its best so far (kept until :meth:`flush`), its patience and its
        logged curves. The fit stops when no point trains any more."""
        epoch = trainer.current_epoch + 1
        for g, (evaluation, model) in enumerate(zip(evaluations, models, strict=True)):
            if evaluation is None:
                continue
            entry = {"epoch": epoch, **evaluation.metrics}
            self.histories[g].append(entry)
            value = float(evaluation.metrics[self.metric])
            if not improves(value, self.best_scores[g]):
                self.waits[g] += 1
            else:
                self.best_scores[g], self.waits[g] = value, 0
                self._pending[g] = {
                    "epoch": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    "pytorch-lightning_version": pl.__version__,
                    "state_dict": cloned(model.state_dict()),
                    "hyper_parameters": dict(model.hparams),
                }
                model.on_save_checkpoint(self._pending[g])  # the model's own entries
            if self.logger is not None and trainer.is_global_zero:
                prefix = f"selection/point_{self.indices[g]}"
                values = {f"{prefix}/{k}": v for k, v in evaluation.metrics.items()}
                values = {k: v for k, v in values.items() if math.isfinite(v)}
                values[f"{prefix}/epoch"] = epoch
                self.logger.log_metrics(values, step=epoch)
        if not any(self.active()):
            trainer.should_stop = True

    def flush(self, trainer: pl.Trainer) -> None:
        """Write the bests that changed since the last flush."""
        for g, checkpoint in sorted(self._pending.items()):
            trainer.strategy.save_checkpoint(checkpoint, self.directories[g] / BEST)
        trainer.strategy.barrier("StackRecorder")
        self._pending = {}


#: trainer precisions under which views evaluate exactly as separate fits: the module stays
#: float32 and the plugin only enters a context (autocast) around each step
SHARED_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")


def _memo_of(
    own: dict[str, Tensor], memos: list[tuple[dict[str, Tensor], dict[str, Any]]]
) -> dict[str, Any]:
    """The memo of the weights ``own`` (a view's own state; empty: the host's), added to
    ``memos`` if no earlier point has exactly these."""
    for state, memo in memos:
        if state.keys() == own.keys() and all(torch.equal(state[k], own[k]) for k in own):
            return memo
    memos.append((own, {MEMO_POINTS: []}))
    return memos[-1][1]


def shared_groups(
    model_cls: type[ZSLModule],
    indices: list[int],
    points: list[dict[str, Any]],
    trainer: TrainerSpec,
) -> list[list[int]]:
    """``indices`` grouped by what training reads (``model_cls.training_params``): the points
    of a group differ only in how they are evaluated, so one fit serves them all. Groups of
    one point are left out, and so is every point unless the trainer's precision keeps the
    weights in float32 (:data:`SHARED_PRECISIONS`: float32, or autocast): the views
    evaluate in the precision plugin's step context but are not converted by it, so only
    then are their numbers those of separate fits."""
    if str(trainer.precision) not in SHARED_PRECISIONS:
        return []
    groups: dict[str, list[int]] = {}
    for index in indices:
        key = json.dumps(model_cls.training_params(points[index]), sort_keys=True, default=str)
        groups.setdefault(key, []).append(index)
    return [group for group in groups.values() if len(group) > 1]


class SharedFit(StackRecorder):
    """Grid points that train identically (same :meth:`ZSLModule.training_params`), fitted
    once: the first point's model (the *host*) is the trainer's module, the others are
    *views* that never train. Before every validation pass each view takes the host's
    weights, then it is evaluated its own way on the same batches (a generative model's
    second stage: the synthetic share, the classifier). A view's history is then the one its
    own fit would have had -- its training is the host's, and evaluation draws from a private
    RNG -- at the cost of one training instead of one per point. Histories, bests
    (``best.ckpt`` of each point, with the point's own hyper-parameters) and logged curves
    are kept as for a stacked grid (:class:`StackRecorder`, host first)."""

    def __init__(
        self,
        views: list[ZSLModule],
        metric: str,
        directories: list[Path],
        indices: list[int],
        logger: Logger | None,
        patience: int | None = None,
    ) -> None:
        super().__init__(metric, directories, indices, logger, patience)
        self.views = views
        #: the training module, set when the fit starts
        self._host: ZSLModule | None = None
        #: the views' own state from a resumed fit's checkpoint (until the fit starts)
        self._saved_views: list[dict[str, Tensor]] | None = None
        self._restored = False

    @property
    def state_key(self) -> str:
        return "SharedFit"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        source = getattr(trainer, "datamodule", None)
        if not isinstance(source, ZSLDataSource):
            raise TypeError("a shared fit needs a ZSLDataModule (trainer.fit(model, dm))")
        assert isinstance(pl_module, ZSLModule)
        self._host = pl_module
        for view in self.views:
            view.trainer = trainer  # the epoch of its evaluation RNG, the device
            view.to(pl_module.device)
            view.bind(source)
        if self._saved_views is not None:  # resumed: each view's own state as it was saved
            for view, own in zip(self.views, self._saved_views, strict=True):
                if own:
                    view.load_state_dict({**view.state_dict(), **own})
            self._restored, self._saved_views = True, None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the host's on_fit_start (a generator's output start); a resumed fit has its
        # views' own state back from the checkpoint instead
        assert isinstance(pl_module, ZSLModule)
        if not self._restored:
            for view in self.views:
                view.follow_shared_fit(pl_module, start=True)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        assert isinstance(pl_module, ZSLModule)
        for view in self.views:  # stopped ones too: cheap, and their state is not read again
            view.follow_shared_fit(pl_module, start=False)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        host = self._host
        if host is not None:
            state["views"] = [view.own_shared_state(host) for view in self.views]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._saved_views = state_dict.get("views")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (Lightning runs this before the host's own hook: the views' second stages come
        # first, and with them whatever they leave in the memo for the host)
        assert isinstance(pl_module, ZSLModule)
        state = pl_module.state_dict()
        # one memo per distinct set of weights: the host's, and each own state of the views
        # (f-CLSWGAN's points with the same average decay have the same averages)
        memos: list[tuple[dict[str, Tensor], dict[str, Any]]] = [({}, {MEMO_POINTS: [pl_module]})]
        pl_module.shared_memo = memos[0][1]
        views = self._active_views()
        for view in views:
            own = view.own_shared_state(pl_module)
            view.load_state_dict({**state, **own})
            view.shared_memo = _memo_of(own, memos)
            view.shared_memo[MEMO_POINTS].append(view)
        for view in views:
            view.eval()
            view._start_eval()

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # what was memoised of the previous batch does not hold for this one
        for module in (pl_module, *self.views):
            memo = getattr(module, "shared_memo", None)
            if memo is not None:
                memo.pop(BATCH_MEMO, None)

    def _active_views(self) -> list[ZSLModule]:
        return [v for v, active in zip(self.views, self.active()[1:], strict=True) if active]

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for view in self._active_views():
            with trainer.precision_plugin.val_step_context():  # the host's step context
                view._eval_step(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, ZSLModule)
        for module in (pl_module, *self.views):
            module.shared_memo = None
        if trainer.sanity_checking:
            return
        active = self.active()
        evaluations = [evaluation_result(pl_module) if active[0] else None]
        for view, on in zip(self.views, active[1:], strict=True):
            if not on:
                evaluations.append(None)
                continue
            assert view.evaluator is not None
            evaluations.append(view.evaluator.compute(None, choose_gamma=True))
        self.record(trainer, evaluations, [pl_module, *self.views])
