"""The shared base of every ZSL model: one scoring contract, evaluation and calibration.

Every model answers ``scores(features[B, D], class_semantics[C, A]) -> [B, C]``. The base owns
the class semantics (buffers, global class ids), the training step wiring, validation/test
evaluation with the standard metrics (ZSL T1, GZSL u/s/H, calibrated stacking, AUSUC) and
logging. Subclasses fill hooks: ``configure_models``, ``training_loss`` (iterative models) or
``fit_closed_form`` (``closed_form = True``), ``configure_optimizers``, ``checkpoint_entries``.
Methods marked ``@final`` are the base's own: a subclass that overrides one is refused when
the class is defined (mypy says so too), and extends them through the hooks they call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self, cast, final

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.parsing import AttributeDict
from torch import Tensor

from zsl.data.types import ExampleSet, ZSLBatch, ZSLDataSource
from zsl.errors import LeakageError, ModelLoadError
from zsl.evaluation import Evaluation, ZSLEvaluator
from zsl.heap import release_free_memory
from zsl.models.classes import ClassSpaceMixin
from zsl.models.hparams import NON_NEGATIVE_HPARAMS, POSITIVE_HPARAMS, check_common_hparams

__all__ = [
    "BATCH_MEMO",
    "MEMO_POINTS",
    "NON_NEGATIVE_HPARAMS",
    "POSITIVE_HPARAMS",
    "LeakageError",
    "ModelLoadError",
    "ZSLModule",
    "check_common_hparams",
]

#: most scores (rows x classes) an evaluation step holds at once: 2^22 floats, 16 MiB
SCORE_CHUNK = 1 << 22
#: the entry of :attr:`ZSLModule.shared_memo` that holds for one validation batch only
BATCH_MEMO = "batch"
#: the entry of :attr:`ZSLModule.shared_memo` that lists the points sharing it
MEMO_POINTS = "points"


class ZSLModule(pl.LightningModule, ClassSpaceMixin):
    """Base LightningModule: subclasses implement ``scores`` and a way to fit (the class-space
    methods, ``set_class_space`` ... ``to_local``, are :class:`ClassSpaceMixin`'s)."""

    #: closed-form models fit once on the full training set, with no optimizer and no epochs
    closed_form: ClassVar[bool] = False
    #: generative models may read unseen-class semantics (never unseen features) in training
    uses_unseen_semantics: ClassVar[bool] = False
    #: grid points may be fitted together in one pass (see zsl.run.stacked)
    stackable: ClassVar[bool] = False
    #: feature generators (``zsl.models.generative.base.GenerativeZSL``): the model
    #: synthesises examples of any class from its semantics (``synthesize``)
    generates_features: ClassVar[bool] = False
    #: the feature-preparation step applied to the benchmark before splitting (a key of
    #: ``zsl.features.prepare.PREPARATIONS``; CLIP's embeds the images and class names)
    feature_preparation: ClassVar[str] = "none"
    # buffers (registered in __init__)
    semantics: Tensor
    seen_ids: Tensor
    unseen_ids: Tensor
    gamma: Tensor

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that overrides a method a base class marked ``@final``."""
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            for name, attr in vars(base).items():
                if getattr(attr, "__final__", False) and name in vars(cls):
                    raise TypeError(
                        f"{cls.__name__} overrides {base.__name__}.{name}, which the base runs "
                        f"itself; use the hooks it calls instead (see its docstring)"
                    )

    def __init__(self, feature_dim: int, n_attributes: int, n_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key, value in list(self.hparams.items()):  # typed config objects are stored as dicts
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)
        check_common_hparams(type(self).__name__, dict(self.hparams))
        self.feature_dim, self.n_attributes, self.n_classes = feature_dim, n_attributes, n_classes
        self.register_buffer("semantics", torch.zeros(n_classes, n_attributes))
        self.register_buffer("seen_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("unseen_ids", torch.zeros(0, dtype=torch.long))
        # calibrated-stacking gamma; NaN = choose it on the evaluation itself (val protocol)
        self.register_buffer("gamma", torch.tensor(float("nan")))
        # the seen-class training examples this model was bound to (see bind)
        self._training_examples: ExampleSet | None = None
        #: class names (from the data; generic ones until a class space is set)
        self.class_names: tuple[str, ...] = tuple(f"class_{i}" for i in range(n_classes))
        #: the feature preprocessing of the data it was bound to (``data.preprocess``)
        self.preprocess: str | None = None
        # metric states of the running validation/test pass (outside the module tree)
        self.evaluator: ZSLEvaluator | None = None
        #: during a validation pass of a shared fit, a dict common to the grid points whose
        #: weights are the same (:class:`zsl.run.stacked.SharedFit`): work that depends only
        #: on the weights, the data and the evaluation RNG is done once for all of them (what
        #: a generative model's second stage embeds and draws, :mod:`zsl.models.generative.stage`)
        self.shared_memo: dict[str, Any] | None = None
        if self.closed_form:
            # the fit happens in training_step with no optimizer and no loss to return, which
            # Lightning accepts under DDP only with manual optimisation
            self.automatic_optimization = False
        self.configure_models()

    @property
    def hp(self) -> AttributeDict:
        """The saved hyper-parameters with attribute access (``self.hp.lr``)."""
        return cast(AttributeDict, self.hparams)

    # -- hooks for subclasses ---------------------------------------------------------
    @classmethod
    def trainer_arguments(cls) -> dict[str, Any]:
        """Trainer arguments this model needs whatever the config says (as anomalib's models
        declare theirs). Closed-form models fit once, in one step of one epoch."""
        if cls.closed_form:
            return {"max_epochs": 1, "limit_train_batches": 1}
        return {}

    @classmethod
    def option_groups(cls) -> dict[str, list[str]]:
        """Constructor parameters that take a mapping of named options (``{parameter: [option,
        ...]}``), so that a config naming an unknown option is refused before any fit; none by
        default (the generators' ``second_stage``)."""
        return {}

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

    # -- classes and training data -------------------------------------------------------
    @classmethod
    def for_data(cls, source: ZSLDataSource, **params: Any) -> Self:
        """A model with the shapes of ``source`` (a set-up datamodule), bound to it:
        ``ALE.for_data(dm, lr=3e-3)``."""
        space = source.class_space
        model = cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
        model.bind(source)
        return model

    def bind(self, source: ZSLDataSource) -> None:
        """Install a protocol's classes and hand over its seen-class training examples.

        ``trainer.fit(model, datamodule)`` does this itself (see :meth:`setup`); call it
        explicitly to use a model outside a trainer."""
        self.set_class_space(source.class_space)
        self._training_examples = source.training_examples()
        self.preprocess = getattr(source, "preprocess", None)

    def setup(self, stage: str) -> None:
        """Bind to the trainer's datamodule when it is a :class:`ZSLDataSource` and this model
        has no training examples yet (a fresh model, or one loaded from a checkpoint)."""
        if self._training_examples is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, ZSLDataSource):
            datamodule.setup(stage)  # type: ignore[attr-defined]
            self.bind(datamodule)
        elif self.seen_ids.numel() == 0:
            raise RuntimeError(
                f"{type(self).__name__} has no class space: pass a ZSLDataModule to the trainer "
                "(trainer.fit(model, datamodule=dm)) or call model.bind(dm) first"
            )

    def training_examples(self) -> ExampleSet:
        """The seen-class training examples handed over by :meth:`bind`."""
        if self._training_examples is None:
            raise RuntimeError(
                f"{type(self).__name__} has no training examples: bind it to a datamodule "
                "(model.bind(dm), or trainer.fit/validate/test with datamodule=dm)"
            )
        return self._training_examples

    # -- training ---------------------------------------------------------------------
    @classmethod
    def training_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The part of the hyper-parameters ``params`` that training reads: grid points that
        agree on it train identically and differ only in how they are evaluated (they may
        share one fit, :mod:`zsl.run.stacked`). All of them by default."""
        return dict(params)

    @classmethod
    def steps_transfer_params(cls, params: Mapping[str, Any], epoch_ratio: float) -> dict[str, Any]:
        """``params`` for the trainval fit of ``model.search.transfer: steps``, whose epochs
        hold ``1 / epoch_ratio`` times the updates of the epochs they were selected on
        (``epoch_ratio`` = validation-protocol batches / trainval batches per epoch). A
        schedule the model counts in epochs is rescaled here so that it keeps its length in
        updates, as the epoch count does. Unchanged by default."""
        return dict(params)

    def follow_shared_fit(self, host: ZSLModule, start: bool) -> None:
        """Called on a view of a shared fit (:class:`zsl.run.stacked.SharedFit`) when its
        ``host`` starts training (``start``) and after every training batch of the host: what
        the view tracks of the training for itself (nothing by default; a generator's weight
        average with its own decay)."""

    def own_shared_state(self, host: ZSLModule) -> dict[str, Tensor]:
        """The entries of this view's ``state_dict`` it keeps when it takes the ``host``'s
        weights before an evaluation (none by default; what :meth:`follow_shared_fit`
        tracks)."""
        return {}

    def training_step(self, batch: ZSLBatch, batch_idx: int) -> Tensor | None:
        if self.closed_form:  # one fit on the whole training set, whatever the batches are
            examples = self.training_examples()
            features = examples.features.to(self.device)
            local = self.to_local(examples.labels.to(self.device))
            self.fit_closed_form(features, local, self.seen_semantics())
            return None
        local = self.to_local(batch.labels)
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
        """Raise a FloatingPointError naming ``what`` if ``value`` holds a NaN or an inf.
        A finite sum proves every element finite (a NaN or inf anywhere makes it NaN or inf):
        one pass with no mask the size of ``value`` (a generative model's 1 GB of synthetic
        features); only a non-finite sum, or a sum that overflowed, looks element by element."""
        if value.numel() > 1 and bool(torch.isfinite(value.detach().sum())):
            return
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

    def _start_eval(self, gamma: float | None = None) -> None:
        """Start a pass; ``gamma``: the test pass's validation-chosen one (calibrated
        per-class accuracy is counted too)."""
        self.on_eval_start()
        self.evaluator = ZSLEvaluator(self.seen_ids, self.universe_mask(), self.device, gamma)

    def _eval_step(self, batch: ZSLBatch) -> None:
        """Score a batch in row chunks of at most ``SCORE_CHUNK`` scores each, so that memory
        stays bounded whatever the class count (no batch x classes matrix of a large batch
        against 21,000 classes is ever held); the evaluator keeps per-example summaries."""
        assert self.evaluator is not None
        rows = max(1, SCORE_CHUNK // max(self.n_classes, 1))
        for features, labels in zip(
            batch.features.split(rows), batch.labels.split(rows), strict=True
        ):
            # scores in float32 even under a mixed-precision trainer: bfloat16 keeps 8 bits of
            # mantissa, which ties and reorders close class scores (rankings are the metric)
            with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
                scores = self.all_scores(features.float())
            if torch.isnan(scores).any():  # e.g. weights that diverged without a NaN loss
                self.check_finite(scores[torch.isnan(scores)], "scores")
            self.evaluator.update(scores, labels)
        if batch.features.shape[0] > rows:  # scored in chunks: do not let the heap grow
            release_free_memory()

    def _finish_eval(self, stage: str, gamma: float | None) -> Evaluation:
        """Compute and log the pass's metrics. Validation chooses gamma on itself; a test pass
        uses the gamma chosen on validation, or reports uncalibrated numbers only."""
        assert self.evaluator is not None
        result = self.evaluator.compute(gamma, choose_gamma=stage == "val")
        for key, value in result.metrics.items():
            if not math.isnan(value):
                # one value per pass: batch_size only spares Lightning inferring it
                self.log(
                    f"{stage}/{key}", value, prog_bar=key in ("zsl_t1", "gzsl_h"), batch_size=1
                )
        return result

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: ZSLBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._finish_eval("val", None)

    def on_test_epoch_start(self) -> None:
        self._start_eval(float(self.gamma))

    def test_step(self, batch: ZSLBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        gamma = float(self.gamma)
        if math.isnan(gamma):
            rank_zero_warn(
                f"{type(self).__name__}: no calibration gamma was selected on validation classes, "
                "so only uncalibrated numbers are reported (a gamma chosen on the test split "
                "would leak it); set model.gamma from a validation run to calibrate"
            )
        self._finish_eval("test", gamma)

    # -- prediction -------------------------------------------------------------------
    def prepare_inference(self) -> None:
        """Make :meth:`predict_scores` ready for the current class set (a generative model
        trains its final classifier here, on its training examples: bind it first)."""
        self.eval()
        self.on_eval_start()

    def predict_scores(self, features: Tensor, calibrate: bool = True) -> Tensor:
        """Scores [B, C] of ``features`` against the model's class set (-inf outside it), in
        float32; with ``calibrate`` and a validation-chosen ``gamma``, seen-class scores are
        lowered by gamma (calibrated stacking, as the GZSL numbers of a run)."""
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            scores = self.all_scores(features.float())
        gamma = float(self.gamma)
        if calibrate and not math.isnan(gamma) and self.seen_ids.numel():
            scores[:, self.seen_ids] -= gamma
        return scores

    def predict_step(self, batch: ZSLBatch | Tensor, batch_idx: int) -> Tensor:
        """``trainer.predict``: calibrated scores [B, C] of a batch (a :class:`ZSLBatch` or a
        features tensor); call :meth:`prepare_inference` first."""
        features = batch.features if isinstance(batch, ZSLBatch) else batch
        return self.predict_scores(features)

    # -- checkpoints ------------------------------------------------------------------
    def data_choices(self) -> dict[str, Any]:
        """What the model decided from its training data in its last fit, recorded in
        ``metrics.json`` as ``data_choices`` (none by default; see the generators)."""
        return {}

    def checkpoint_entries(self) -> dict[str, Any]:
        """Extra entries a subclass stores in its checkpoints (plain values and tensors:
        checkpoints are read with ``weights_only=True``); none by default. Read them back in
        ``on_load_checkpoint``. The ``zsl_`` keys are the base's."""
        return {}

    @final
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record :meth:`checkpoint_entries`, then the model class (``module:QualName``), so
        that :func:`zsl.models.checkpoint.load_model` rebuilds a registered model from the
        file, the class names and the feature preprocessing of the data it was fitted on."""
        checkpoint.update(self.checkpoint_entries())
        checkpoint["zsl_model_class"] = f"{type(self).__module__}:{type(self).__qualname__}"
        checkpoint["zsl_class_names"] = list(getattr(self, "class_names", ()))
        checkpoint["zsl_preprocess"] = getattr(self, "preprocess", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resize the class-id buffers to the stored ones before the state dict is loaded
        (a fresh model has empty ones), so ``load_from_checkpoint`` works for every model."""
        state = checkpoint.get("state_dict", {})
        for name in ("seen_ids", "unseen_ids"):
            if name in state:
                setattr(self, name, torch.empty_like(state[name]))
        names = checkpoint.get("zsl_class_names")
        if names:
            self.class_names = tuple(str(n) for n in names)
        self.preprocess = checkpoint.get("zsl_preprocess")
