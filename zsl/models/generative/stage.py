"""The GZSL classifier stage of a feature-generating model (:class:`ClassifierStage`).

A model of this kind scores with a softmax classifier over the protocol's universe, trained
before every validation/test pass (:meth:`ClassifierStage.on_eval_start`) on real seen +
synthetic unseen examples (Xian et al., "Feature Generating Networks for Zero-Shot Learning",
CVPR 2018). This module is that stage: where the examples come from (the hooks
:meth:`~ClassifierStage.generate_features`, :meth:`~ClassifierStage.synthesize`,
:meth:`~ClassifierStage.embed`, :meth:`~ClassifierStage.embed_seen`), how many, the
projection (``cls_pca``), the classifier's fit, the work shared between the points of a
shared fit (:mod:`zsl.models.generative.sharing`) and the scores. The settings and their
reasons are in :mod:`zsl.models.generative.second_stage`; the generator side (networks,
training, the generator start, ``gen_ema``) is :class:`~zsl.models.generative.base.GenerativeZSL`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from zsl.models.base import MEMO_POINTS, ZSLModule
from zsl.models.generative.second_stage import (
    BasisCache,
    SecondStage,
    SoftmaxFit,
    add_residuals,
    classifier_steps,
    within_class_residuals,
)
from zsl.models.generative.sharing import (
    other_points,
    shared_batch_result,
    shared_fit,
    shared_result,
)

__all__ = ["ClassifierStage"]


class ClassifierStage(ZSLModule, ABC):
    """A ZSL module scored by a softmax classifier trained at every evaluation on real seen +
    synthetic unseen examples, with the :class:`SecondStage` settings (Xian et al., CVPR
    2018); :class:`~zsl.models.generative.base.GenerativeZSL` adds the generator."""

    uses_unseen_semantics: ClassVar[bool] = True
    #: what the classifier is trained on: generated image features (through :meth:`embed`),
    #: or the "latent codes" of a model that overrides :meth:`synthesize` (then the
    #: feature-space option ``second_stage.synth_residual`` is refused)
    example_space: ClassVar[Literal["features", "latent codes"]] = "features"
    #: the paper's second-stage settings; ``second_stage`` entries override them
    default_second_stage: ClassVar[SecondStage] = SecondStage()
    #: hyper-parameters that only synthesis reads (never a training step): grid points that
    #: differ only in these and the second stage share one generator fit
    synthesis_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def option_groups(cls) -> dict[str, list[str]]:
        """``second_stage`` takes the options of :class:`SecondStage`."""
        return {"second_stage": SecondStage.field_names()}

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        #: the typed second-stage settings (stored as a dict in ``hparams.second_stage``)
        self.second_stage = SecondStage.from_value(second_stage, self.default_second_stage)
        super().__init__(feature_dim, n_attributes, n_classes)  # calls configure_models
        #: what the model decided from its data (``data_choices`` in ``metrics.json``)
        self._adaptation: dict[str, Any] = {}
        rank, dim = self.second_stage.cls_pca, self.classifier_dim()
        if rank is not None and rank >= dim:
            # as many components as dimensions is a rotation, not a restriction: the paper's
            # classifier on the inputs themselves (e.g. cls_pca 256 on 64-d features)
            self._adaptation["cls_pca"] = {"set": int(rank), "inputs": dim, "used": None}
            self.second_stage = dataclasses.replace(self.second_stage, cls_pca=None)
            self.hparams["second_stage"] = dataclasses.asdict(self.second_stage)
        if self.second_stage.synth_residual is not None and self.example_space != "features":
            raise ValueError(
                f"{type(self).__name__}: second_stage.synth_residual adds real feature "
                f"residuals to synthetic features, but its classifier sees {self.example_space}; "
                "use null"
            )
        # (weight [E, U], bias [U], universe ids [U]); outside the module tree on purpose
        self._classifier: tuple[Tensor, Tensor, Tensor] | None = None
        # the cls_pca basis: the real seen features of f-CLSWGAN are the same at every
        # evaluation, so their PCA is computed once
        self._basis = BasisCache()

    # -- where the examples come from ---------------------------------------------------
    @abstractmethod
    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` synthetic image features per attribute vector [K, A] -> [K * n, D], grouped
        by row, drawn from ``generator``."""

    def classifier_dim(self) -> int:
        """Size of the classifier's inputs (:meth:`embed`): the features by default."""
        return self.feature_dim

    def synthesize(self, class_semantics: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` synthetic examples in classifier space per row of ``class_semantics`` [K, A]
        -> [K * n, E], grouped by row (row ``k`` owns ``k*n .. k*n + n - 1``): by default
        :meth:`embed` of :meth:`generate_features`."""
        return self.embed(self.generate_features(class_semantics, n, generator))

    def embed(self, features: Tensor) -> Tensor:
        """Image features [B, D] -> classifier space [B, E] (the identity by default)."""
        return features

    def embed_seen(
        self, features: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """The real seen training examples of the classifier (default: the features as they are)."""
        return self.embed(features), labels

    # -- data ---------------------------------------------------------------------------
    def seen_training_data(self) -> tuple[Tensor, Tensor]:
        """Real seen-class training features and global labels, handed over by :meth:`bind`."""
        examples = self.training_examples()
        x, y = examples.features.to(self.device), examples.labels.to(self.device)
        self.to_local(y)  # raises if a training label is not a seen class
        return x, y

    # -- the second stage -------------------------------------------------------------
    def _eval_generator(self) -> torch.Generator:
        """A private RNG for evaluation, so evaluating never perturbs the training RNG stream."""
        return torch.Generator().manual_seed(self.second_stage.eval_seed + int(self.current_epoch))

    @torch.inference_mode(False)
    def fit_classifier(self) -> None:
        """Train the GZSL softmax classifier on the real seen training examples (from the
        datamodule, through :meth:`embed_seen`) + synthetic unseen ones."""
        gen = self._eval_generator()
        real, real_y, residuals, nonnegative = self._real_examples(gen)
        self.train_classifier(real, real_y, gen, residuals, nonnegative)

    def _real_examples(self, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """The classifier's real seen examples and labels (:meth:`embed_seen`, in eval mode),
        the features' within-class residuals (with ``synth_residual``) and whether the
        features are non-negative; once for the points with the same weights in a validation
        pass of a shared fit (:mod:`zsl.models.generative.sharing`)."""

        def compute() -> tuple[Tensor, Tensor, Tensor | None, bool]:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                x, y = self.seen_training_data()
                real, real_y = self.embed_seen(x, y, gen)
                residuals = None
                if self.second_stage.synth_residual is not None:
                    residuals = within_class_residuals(x, y)
            self.train(was_training)
            return real, real_y, residuals, bool((x >= 0).all())

        memo = self.shared_memo
        others = other_points(memo, self, lambda _: True) if memo is not None else 0
        return shared_result(memo, "real examples", self, gen, compute, others)

    @torch.inference_mode(False)
    def train_classifier(
        self,
        real: Tensor,
        real_y: Tensor,
        generator: torch.Generator,
        residuals: Tensor | None = None,
        nonnegative: bool = True,
    ) -> None:
        """Fit the GZSL softmax classifier over the protocol's universe (global ids) on ``real``
        seen examples in classifier space [N, E] with global labels [N] plus
        :meth:`n_synth_per_class` synthetic examples per unseen class (``cls_pca``: on the top
        principal components of ``real``; ``synth_residual``: with real seen within-class
        ``residuals`` [N', D] added, kept non-negative if the real features are
        (``nonnegative``), see :meth:`synthesize_unseen`)."""
        stage = self.second_stage
        synth, synth_y = self._shared_synthesis(
            real.shape[0],
            generator,
            lambda: self._synthetic_examples(real.shape[0], generator, residuals, nonnegative),
        )
        universe = torch.nonzero(self.universe_mask()).squeeze(1)
        targets = torch.searchsorted(universe, torch.cat([real_y, synth_y]))
        rank = stage.cls_pca
        if rank is None:
            inputs = torch.cat([real, synth]).detach()  # new: the caller's are left as they are
        else:  # (x - mean) @ basis, without a centred copy of the examples
            mean, basis = self.classifier_basis(real, int(rank))
            inputs = torch.cat([real.detach() @ basis, synth @ basis]).sub_(mean @ basis)
        del synth
        weight, bias = self._shared_classifier(inputs, targets, universe.numel(), generator)
        if rank is not None:  # fold the projection in: (x - mean) @ basis @ w + b
            weight = basis @ weight
            bias = bias - mean @ weight
        self._classifier = (weight, bias, universe)

    def _shared_classifier(
        self, inputs: Tensor, targets: Tensor, n_out: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """The softmax classifier (:func:`fit_softmax_classifier`) on ``inputs``. In a
        validation pass of a shared fit, points whose classifiers differ at most in their
        number of updates train one sequence of updates (:func:`shared_fit`; CADA-VAE's
        ``cls_epochs`` grid)."""
        stage, n = self.second_stage, inputs.shape[0]
        steps, mine = self.classifier_steps(n), self.classifier_settings()
        memo = self.shared_memo
        key = repr(("classifier", mine))
        fitted: set[int] = memo.setdefault(f"{key} fitted", set()) if memo is not None else set()
        fitted.add(id(self))

        def pending() -> list[int]:  # the update counts of the points still to come
            if memo is None:
                return []
            return [
                p.classifier_steps(n)
                for p in memo.get(MEMO_POINTS, ())
                if isinstance(p, ClassifierStage)
                and id(p) not in fitted
                and p.classifier_settings() == mine
            ]

        def new_fit() -> SoftmaxFit:
            return SoftmaxFit(
                inputs,
                targets,
                n_out,
                stage.cls_lr,
                stage.cls_batch_size,
                stage.cls_weight_decay,
                generator,
            )

        return shared_fit(memo, key, steps, generator, new_fit, pending)

    def classifier_settings(self) -> tuple[Any, ...]:
        """What the classifier's updates depend on besides their number (the examples: the
        :meth:`synthesis_settings` and the projection; the optimiser; the evaluation seed)."""
        stage = self.second_stage
        return (
            self.synthesis_settings(),
            stage.cls_pca,
            stage.cls_lr,
            stage.cls_batch_size,
            stage.cls_weight_decay,
            stage.eval_seed,
        )

    def classifier_steps(self, n: int) -> int:
        """The classifier's updates on ``n`` examples (``cls_epochs``, ``cls_steps``,
        ``cls_min_steps``)."""
        stage = self.second_stage
        return classifier_steps(
            n, stage.cls_epochs, stage.cls_batch_size, stage.cls_steps, stage.cls_min_steps
        )

    def _shared_synthesis(
        self, n_real: int, generator: torch.Generator, draw: Callable[[], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """The synthetic examples ``draw`` returns (from ``generator``, for ``n_real`` real
        ones), checked finite; once for the points with the same weights and
        :meth:`synthesis_settings` in a validation pass of a shared fit
        (:mod:`zsl.models.generative.sharing`)."""

        def compute() -> tuple[Tensor, Tensor]:
            synth, synth_y = draw()
            self.check_finite(synth, "synthetic examples")
            return synth, synth_y

        memo = self.shared_memo
        mine = self.synthesis_settings()
        others = 0
        if memo is not None:
            others = other_points(
                memo,
                self,
                lambda p: isinstance(p, ClassifierStage) and p.synthesis_settings() == mine,
            )
        key = repr(("synthetic examples", n_real, mine))
        return shared_result(memo, key, self, generator, compute, others)

    def synthesis_settings(self) -> tuple[Any, ...]:
        """What the classifier's synthetic examples depend on besides the weights, the data
        and the RNG: the second stage's counts and residuals, and the
        :attr:`synthesis_params`."""
        stage = self.second_stage
        return (
            stage.n_synth,
            stage.synth_ratio,
            stage.synth_seen,
            stage.synth_residual,
            tuple(repr(self.hp.get(name)) for name in self.synthesis_params),
        )

    def _synthetic_examples(
        self,
        n_real: int,
        generator: torch.Generator,
        residuals: Tensor | None,
        nonnegative: bool,
    ) -> tuple[Tensor, Tensor]:
        """The classifier's synthetic examples (in eval mode, without gradients) and their
        global labels: unseen classes first, then with ``synth_seen`` the seen ones."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            unseen = self.unseen_ids
            n_synth = self.n_synth_per_class(n_real)
            synth = self.synthesize_unseen(n_synth, generator, residuals, nonnegative)
            synth_y = unseen.repeat_interleave(n_synth)
            n_seen = self.n_synth_seen_per_class(n_real)
            if n_seen > 0:
                seen = self.seen_ids
                synth_seen = self.synthesize_classes(
                    self.seen_semantics(), n_seen, generator, residuals, nonnegative
                )
                synth = torch.cat([synth, synth_seen])
                synth_y = torch.cat([synth_y, seen.repeat_interleave(n_seen)])
                del synth_seen
        self.train(was_training)
        return synth, synth_y

    def synthesize_unseen(
        self,
        n: int,
        generator: torch.Generator,
        residuals: Tensor | None = None,
        nonnegative: bool = True,
    ) -> Tensor:
        """``n`` synthetic examples per unseen class in classifier space, grouped by class
        (:meth:`synthesize_classes` of the unseen semantics)."""
        return self.synthesize_classes(
            self.unseen_semantics(), n, generator, residuals, nonnegative
        )

    def synthesize_classes(
        self,
        semantics: Tensor,
        n: int,
        generator: torch.Generator,
        residuals: Tensor | None = None,
        nonnegative: bool = True,
    ) -> Tensor:
        """``n`` synthetic examples in classifier space per row of ``semantics`` [K, A],
        grouped by row.

        With ``synth_residual = k`` and the real seen training features' within-class
        ``residuals``: generated features + ``k`` x a residual drawn with replacement (clamped at
        0 with ``nonnegative``: the real features are, as CNN features are), then
        :meth:`embed` (:func:`~zsl.models.generative.second_stage.add_residuals`)."""
        k = self.second_stage.synth_residual
        if k is None:
            return self.synthesize(semantics, n, generator)
        if residuals is None:
            raise ValueError(
                f"{type(self).__name__}: second_stage.synth_residual needs the real seen "
                "within-class residuals"
            )
        features = self.generate_features(semantics, n, generator)
        return self.embed(add_residuals(features, residuals, k, generator, nonnegative))

    def classifier_basis(self, real: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Mean and top-``k`` principal directions of the real seen classifier inputs
        (:class:`~zsl.models.generative.second_stage.BasisCache`: computed once while the
        inputs and ``k`` stay the same); in a validation pass of a shared fit, once for the
        points with the same weights, which share their real examples too."""
        memo = self.shared_memo
        if memo is None:
            return self._basis.get(real, k)
        basis: tuple[Tensor, Tensor] | None = memo.get(f"basis {k}")
        if basis is None:
            basis = memo[f"basis {k}"] = self._basis.get(real, k)
        return basis

    def n_synth_per_class(self, n_real_seen: int) -> int:
        """Synthetic examples per unseen class (:meth:`SecondStage.n_unseen_examples`)."""
        return self.second_stage.n_unseen_examples(n_real_seen, self.unseen_ids.numel())

    def n_synth_seen_per_class(self, n_real_seen: int) -> int:
        """Synthetic examples per seen class (:meth:`SecondStage.n_seen_examples`)."""
        return self.second_stage.n_seen_examples(n_real_seen, self.seen_ids.numel())

    def on_eval_start(self) -> None:
        self.fit_classifier()

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        """Log-probabilities of the GZSL classifier; ``-inf`` for classes outside the universe.

        The classifier is trained on the installed class space, so ``class_semantics`` must be
        ``self.semantics`` (the base always passes it)."""
        if self._classifier is None:
            raise RuntimeError(
                f"{type(self).__name__}: the GZSL classifier is trained at the start of each "
                "validation/test pass (on_eval_start); call fit_classifier() first"
            )
        if class_semantics.shape != self.semantics.shape:
            raise ValueError(
                f"{type(self).__name__} scores the classes of its class space "
                f"{tuple(self.semantics.shape)}, got semantics {tuple(class_semantics.shape)}"
            )
        weight, bias, universe = self._classifier
        logp = torch.log_softmax(torch.addmm(bias, self._embedded(features), weight), dim=1)
        out = logp.new_full((features.shape[0], self.n_classes), float("-inf"))
        out[:, universe] = logp
        return out

    def _embedded(self, features: Tensor) -> Tensor:
        """:meth:`embed` of evaluation ``features``; in a validation pass of a shared fit, once
        per batch for the points with the same weights."""
        return shared_batch_result(self.shared_memo, features, self.embed)
