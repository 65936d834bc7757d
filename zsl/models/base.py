"""The shared base of every ZSL model: one scoring contract, evaluation and calibration.

Every model answers ``scores(features[B, D], class_semantics[C, A]) -> [B, C]``. The base owns
the class semantics (buffers, global class ids), the training step wiring, validation/test
evaluation with the standard metrics (ZSL T1, GZSL u/s/H, calibrated stacking, AUSUC) and
logging. Subclasses fill hooks: ``configure_models``, ``training_loss`` (iterative models) or
``fit_closed_form`` (``closed_form = True``), ``configure_optimizers``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor

from zsl.run.store import rng_state, set_rng_state
from zsl.data.datamodule import ClassSpace, ZSLBatch
from zsl.data.formats.xlsa17 import ZSLData
from zsl.metrics import PerClassAccuracy, SeenUnseenStats


class LeakageError(RuntimeError):
    """A model asked for unseen-class information it must not see during training."""


class ModelLoadError(RuntimeError):
    """Pre-trained weights a model needs (e.g. CLIP's) could not be loaded."""


#: hyper-parameters that must be positive / non-negative wherever a model has them
POSITIVE_HPARAMS = ("lr", "cls_lr", "pretrain_lr")
NON_NEGATIVE_HPARAMS = ("weight_decay", "cls_weight_decay", "margin")


def check_common_hparams(model: str, hparams: dict[str, Any]) -> None:
    """Raise a ValueError naming ``model`` and the first learning rate that is not positive or
    weight decay / margin that is negative (NaN counts as bad)."""
    for name in POSITIVE_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{model}: {name} must be positive, got {value}")
    for name in NON_NEGATIVE_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not value >= 0:
            raise ValueError(f"{model}: {name} must be >= 0, got {value}")


class ZSLModule(pl.LightningModule):
    """Base LightningModule: subclasses implement ``scores`` and a way to fit."""

    #: closed-form models fit once on the full training set, with no optimizer and no epochs
    closed_form: ClassVar[bool] = False
    #: generative models may read unseen-class semantics (never unseen features) in training
    uses_unseen_semantics: ClassVar[bool] = False

    def __init__(self, feature_dim: int, n_attributes: int, n_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_common_hparams(type(self).__name__, dict(self.hparams))
        self.feature_dim, self.n_attributes, self.n_classes = feature_dim, n_attributes, n_classes
        self.register_buffer("semantics", torch.zeros(n_classes, n_attributes))
        self.register_buffer("seen_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("unseen_ids", torch.zeros(0, dtype=torch.long))
        # calibrated-stacking gamma; NaN = choose it on the evaluation itself (val protocol)
        self.register_buffer("gamma", torch.tensor(float("nan")))
        self.eval_history: list[dict[str, float]] = []
        self.last_eval: dict[str, float] = {}
        self.last_per_class: Tensor | None = None
        self.last_curve: tuple[Tensor, Tensor, Tensor] | None = None
        if self.closed_form:
            # the fit happens in training_step with no optimizer and no loss to return, which
            # Lightning accepts under DDP only with manual optimisation
            self.automatic_optimization = False
        self.configure_models()

    # -- hooks for subclasses ---------------------------------------------------------
    @classmethod
    def adapt_data(cls, data: ZSLData, params: dict[str, Any], data_cfg: dict[str, Any]) -> ZSLData:
        """Transform the loaded benchmark before splitting (default: unchanged). CLIP uses it
        to replace features and semantics by image/text embeddings of the same images."""
        return data

    def configure_models(self) -> None:
        """Build the networks (``self.feature_dim`` etc. are set)."""

    def on_eval_start(self) -> None:
        """Called before every validation/test pass (e.g. a generative model trains its final
        classifier here on real seen + synthetic unseen features)."""

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        """Compatibility scores [B, C] of features [B, D] against class semantics [C, A]."""
        raise NotImplementedError

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        """Loss of an iterative model on a batch of seen-class images."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_loss")

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        """Closed-form fit on the whole training set (``closed_form = True`` models)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit_closed_form")

    # -- classes ----------------------------------------------------------------------
    def set_class_space(self, space: ClassSpace) -> None:
        """Install the protocol's classes; shapes must match the model's."""
        if space.semantics.shape != (self.n_classes, self.n_attributes):
            raise ValueError(
                f"{type(self).__name__}: class semantics of shape {tuple(space.semantics.shape)} "
                f"do not match the model's ({self.n_classes}, {self.n_attributes})"
            )
        if space.feature_dim != self.feature_dim:
            raise ValueError(
                f"{type(self).__name__}: data has {space.feature_dim}-d features, "
                f"model was built for {self.feature_dim}"
            )
        self.semantics = space.semantics.to(self.semantics)
        self.seen_ids = space.seen_ids.to(self.seen_ids.device)
        self.unseen_ids = space.unseen_ids.to(self.unseen_ids.device)

    def seen_semantics(self) -> Tensor:
        return self.semantics[self.seen_ids]

    def unseen_semantics(self) -> Tensor:
        """Unseen semantics; refused while training a non-generative model."""
        if self.training and not self.uses_unseen_semantics:
            raise LeakageError(
                f"{type(self).__name__} asked for unseen-class semantics during training"
            )
        return self.semantics[self.unseen_ids]

    def universe_mask(self) -> Tensor:
        mask = torch.zeros(self.n_classes, dtype=torch.bool, device=self.semantics.device)
        mask[self.seen_ids] = True
        mask[self.unseen_ids] = True
        return mask

    def to_local(self, labels: Tensor) -> Tensor:
        """Global seen-class ids -> positions in ``seen_ids``; raises on any unseen label."""
        pos = torch.searchsorted(self.seen_ids, labels)
        pos = pos.clamp(max=self.seen_ids.numel() - 1)
        if not torch.equal(self.seen_ids[pos], labels):
            bad = labels[self.seen_ids[pos] != labels][:5].tolist()
            raise LeakageError(
                f"{type(self).__name__}: training batch holds non-seen classes {bad}"
            )
        return pos

    # -- training ---------------------------------------------------------------------
    def training_step(self, batch: ZSLBatch, batch_idx: int) -> Tensor | None:
        local = self.to_local(batch.labels)
        if self.closed_form:
            self.fit_closed_form(batch.features, local, self.seen_semantics())
            return None
        loss = self.training_loss(batch, local, self.seen_semantics())
        self.check_finite(loss, "loss")
        # sync_dist: the epoch mean over every rank's examples (what one process would log)
        n = int(batch.labels.numel())
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=n,
        )
        # DDP: weight this rank's mean loss by its share of the global batch (ZSLBatch.share)
        return loss * batch.share if batch.share != 1.0 else loss

    def check_finite(self, value: Tensor, what: str) -> None:
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"{type(self).__name__}: non-finite {what} "
                f"({value.detach().flatten()[:4].tolist()}) at epoch {self.current_epoch}, "
                f"step {self.global_step}"
            )

    def configure_optimizers(self) -> Any:
        return None  # closed-form models; iterative ones override

    # -- evaluation -------------------------------------------------------------------
    def all_scores(self, features: Tensor) -> Tensor:
        """Scores against every class; classes outside the protocol's universe get -inf."""
        out = self.scores(features, self.semantics)
        if out.shape != (features.shape[0], self.n_classes):
            raise ValueError(
                f"{type(self).__name__}.scores returned {tuple(out.shape)}, expected "
                f"({features.shape[0]}, {self.n_classes})"
            )
        return out.masked_fill(~self.universe_mask(), float("-inf"))

    def _start_eval(self) -> None:
        self.on_eval_start()
        seen = torch.zeros(self.n_classes, dtype=torch.bool)
        seen[self.seen_ids.cpu()] = True
        # kept out of the module tree so checkpoints do not depend on evaluation state
        self._metrics = {
            "stats": SeenUnseenStats(seen, universe_mask=self.universe_mask().cpu()).to(
                self.device
            ),
            "per_class": PerClassAccuracy(self.n_classes).to(self.device),
        }

    def _eval_step(self, batch: ZSLBatch) -> None:
        with torch.no_grad():
            scores = self.all_scores(batch.features)
        if torch.isnan(scores).any():  # e.g. weights that diverged without a NaN loss
            self.check_finite(scores[torch.isnan(scores)], "scores")
        finite = scores.masked_fill(torch.isinf(scores), -1e30)
        self._metrics["stats"].update(finite, batch.labels)
        self._metrics["per_class"].update(scores.argmax(dim=1), batch.labels)

    def _finish_eval(self, stage: str, gamma: float | None) -> dict[str, float]:
        stats = self._metrics["stats"]
        u, s, h = stats.gzsl(0.0)
        out = {"zsl_t1": stats.zsl_accuracy(), "gzsl_u": u, "gzsl_s": s, "gzsl_h": h}
        out["ausuc"] = stats.ausuc()
        if gamma is None:  # choose gamma on this (validation) evaluation
            gamma = stats.best_gamma("h")
        cu, cs, ch = stats.gzsl(gamma)
        out.update(gzsl_u_cal=cu, gzsl_s_cal=cs, gzsl_h_cal=ch, gamma=float(gamma))
        self.last_per_class = self._metrics["per_class"].compute().cpu()
        self.last_curve = stats.curve()
        for key, value in out.items():
            self.log(f"{stage}/{key}", value, prog_bar=key in ("zsl_t1", "gzsl_h"), sync_dist=False)
        self.last_eval = out
        return out

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: ZSLBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        out = self._finish_eval("val", None)
        self.eval_history.append({"epoch": self.current_epoch + 1, **out})

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: ZSLBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        gamma = float(self.gamma)
        self._finish_eval("test", None if math.isnan(gamma) else gamma)

    # -- checkpoints ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides weights and optimizer state, keep what a resumed fit needs to continue
        exactly: the per-epoch validation history and the global RNG states."""
        checkpoint["zsl_eval_history"] = [dict(entry) for entry in self.eval_history]
        checkpoint["zsl_rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the validation history; restore the RNG states only when a trainer resumes
        a fit from the checkpoint (``trainer.fit(..., ckpt_path=...)``), not when a model is
        merely loaded (``load_from_checkpoint``)."""
        self.eval_history = [dict(entry) for entry in checkpoint.get("zsl_eval_history", [])]
        if self._trainer is not None and "zsl_rng_state" in checkpoint:
            set_rng_state(checkpoint["zsl_rng_state"])
