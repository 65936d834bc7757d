"""The shared base of feature-generating GZSL models and the reasons behind its second stage.

A generative model (f-CLSWGAN, CADA-VAE) learns, on seen classes only, to produce examples of
a class from its semantic vector. Before every validation/test pass
(:meth:`GenerativeZSL.on_eval_start`) it synthesises ``n_synth`` examples per unseen class
and trains a fresh softmax classifier over the protocol's universe (seen + unseen, global
class ids) on real seen + synthetic unseen examples. ``scores`` returns that classifier's
log-probabilities, so GZSL needs no calibration trick to reach unseen classes.

How many synthetic examples: ``n_synth`` per unseen class (the papers' rule), or, when
``synth_ratio`` is set, ``synth_ratio`` times as many synthetic unseen examples in total as
there are real seen examples in the classifier's training set (an addition, not in the
papers). The papers' rule makes the unseen share of the classifier's data depend on how many
seen classes the protocol has -- the validation protocol of CUB has 100 seen classes, the test
protocol 150 -- so a count selected on validation classes gives the short, not fully converged
classifier a smaller unseen share at test time and more seen-class bias. ``synth_ratio`` keeps
the share that validation selected. For the same reason ``cls_steps`` (optional, also an
addition) fixes the classifier's number of updates: with ``cls_epochs`` the larger trainval
set (and a larger ``synth_ratio``) means more updates, and a longer-trained classifier learns
the real-vs-synthetic gap and drifts to the seen classes.

Where the classifier may look: with ``cls_pca = k`` (optional, an addition, null = the papers)
the classifier sees only the top-``k`` principal components of the real seen training examples
(equivalently: its weight is constrained to their span, a rank-``k`` softmax). A generator
varies its outputs along few directions, and a classifier on all 4096 feature dimensions
learns to tell real from synthetic along the directions where only real features vary; real
unseen test images then look "real", hence seen. Measured on CUB VGG validation classes with
one trained f-CLSWGAN generator: GZSL H 42.3 on all dimensions, 44.7 on the top 256.

What varies within a synthetic class: a generator trained for a few thousand steps produces
examples of a class much closer together than real images of one class are (CUB VGG, f-VAEGAN:
within-class RMS deviation 0.15 against 0.59 for real seen classes). The classifier then learns
that unseen classes are tight clusters and real unseen test images, which vary as much as real
seen ones, fall outside them and go to seen classes; and the longer it trains, the more it does
so. ``synth_residual = k`` (optional, an addition, null = the papers; feature-space models
only) adds ``k`` times the deviation of a random real seen training feature from its class
mean to every synthetic feature, so synthetic classes vary the way real classes do (within-
class variation transferred from seen to new classes: Hariharan & Girshick, "Low-shot Visual
Recognition by Shrinking and Hallucinating Features", ICCV 2017). Measured on CUB VGG
validation classes with one trained tf-VAEGAN generator
(``experiments/second_stage_check.py``): ZSL T1 48.1 -> 50.9 and GZSL H 45.1 -> 48.1 (best
classifier length of each), H 46.8-48.1 from 450 to 2000 classifier updates.

Which classes get synthetic examples: the unseen ones (the papers), and with ``synth_seen =
r`` (optional, an addition, null = the papers) the seen classes too, ``r`` times as many in
total as real seen examples, so that looking synthetic is not evidence of an unseen class.
Measured on CUB VGG validation classes (mean GZSL H over draws of the synthetic examples):
with one trained f-VAEGAN generator (three draws) 42.4 without, 42.9 / 43.1 / 42.8 with r =
0.25 / 0.5 / 1; with a tf-VAEGAN generator (two draws) 47.5 without and 46.7 / 46.1 / 44.9
with (the seen share grows and s rises at u's expense), so no shipped config uses it.

"Examples" live in the model's *classifier space*: image features for f-CLSWGAN, latent codes
for CADA-VAE (:meth:`GenerativeZSL.embed`, :meth:`GenerativeZSL.embed_seen`,
:meth:`GenerativeZSL.synthesize`).

ZSL (unseen classes only) uses the same GZSL classifier: the base takes the arg-max of its
scores among the unseen classes. No second, unseen-only classifier is trained; the softmax
over the universe, restricted to unseen classes, ranks them exactly as a classifier whose
seen logits were removed, and training one more classifier per evaluation would double the
evaluation cost for a number that is not what these models are for.

The classifier is deliberately kept out of the module tree (like the base's metrics), so a
checkpoint holds only the generator; it is retrained at evaluation time from the generator,
the class space and the seen training features the model was bound to.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from zsl.models.base import ZSLModule
from zsl.models.generative.nets import ema_update
from zsl.models.generative.second_stage import (
    SecondStage,
    fit_softmax_classifier,
    principal_basis,
    within_class_residuals,
)

__all__ = ["GenerativeZSL", "SecondStage", "check_positive", "linear_warmup"]


class GenerativeZSL(ZSLModule):
    """Base of feature-generating models: the GZSL classifier on real seen + synthetic unseen.

    Subclasses build their generator in ``configure_models``, train it (``training_loss``) and
    implement :meth:`synthesize` (plus :meth:`embed` / :meth:`embed_seen` when the classifier
    space is not the feature space) and :meth:`generate_features`. Hyper-parameters read here:
    ``n_synth``, ``synth_ratio``, ``cls_epochs``, ``cls_steps``, ``cls_pca``, ``cls_lr``,
    ``cls_batch_size``, ``cls_weight_decay`` and ``eval_seed`` (all in :class:`SecondStage`).
    """

    uses_unseen_semantics: ClassVar[bool] = True
    #: what the classifier is trained on (for plot titles): "features" or "latent codes"
    example_space: ClassVar[str] = "features"
    #: the paper's second-stage settings; ``second_stage`` entries override them
    default_second_stage: ClassVar[SecondStage] = SecondStage()
    #: the networks whose weight average (``gen_ema``) synthesises features
    averaged: ClassVar[tuple[str, ...]] = ("generator",)
    #: whether ``second_stage.synth_residual`` applies (synthetic examples are image features)
    feature_residuals: ClassVar[bool] = True
    #: set by :meth:`register_generator_state` (models with a feature generator)
    generator_initialised: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        #: the typed second-stage settings (stored as a dict in ``hparams.second_stage``)
        self.second_stage = SecondStage.from_value(second_stage, self.default_second_stage)
        super().__init__(feature_dim, n_attributes, n_classes)
        rank, dim = self.second_stage.cls_pca, self.classifier_dim()
        if rank is not None and rank >= dim:
            # as many components as dimensions is a rotation, not a restriction: the paper's
            # classifier on the inputs themselves (the CPU default of 256 on small features)
            rank_zero_warn(
                f"{type(self).__name__}: second_stage.cls_pca={rank} is not below the {dim}-d "
                f"{self.example_space} its classifier sees; the classifier uses them whole "
                "(cls_pca=null)"
            )
            self.second_stage = dataclasses.replace(self.second_stage, cls_pca=None)
            self.hparams["second_stage"] = dataclasses.asdict(self.second_stage)
        if self.second_stage.synth_residual is not None and not self.feature_residuals:
            raise ValueError(
                f"{type(self).__name__}: second_stage.synth_residual adds real feature "
                f"residuals to synthetic features, but its classifier sees {self.example_space}; "
                "use null"
            )
        # (weight [E, U], bias [U], universe ids [U]); outside the module tree on purpose
        self._classifier: tuple[Tensor, Tensor, Tensor] | None = None
        # (key, mean, basis) of the last cls_pca basis: the real seen features of f-CLSWGAN are
        # the same at every evaluation, so their PCA is computed once
        self._basis_cache: tuple[tuple[Any, ...], Tensor, Tensor] | None = None

    @classmethod
    def training_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Everything but the second stage, which only evaluation reads (its ``eval_seed``
        also seeds f-CLSWGAN's pre-trained classifier, so it stays): grid points over the
        second stage share one generator's training."""
        out = dict(params)
        stage = out.get("second_stage")
        if isinstance(stage, Mapping):
            out["second_stage"] = {"eval_seed": stage.get("eval_seed")}
        return out

    # -- hooks for subclasses ---------------------------------------------------------
    def classifier_dim(self) -> int:
        """Size of the classifier's inputs (:meth:`embed`): the features by default."""
        return self.feature_dim

    def synthesize(self, class_semantics: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` synthetic examples in classifier space per row of ``class_semantics`` [K, A]
        -> [K * n, E], grouped by row (row ``k`` owns ``k*n .. k*n + n - 1``)."""
        raise NotImplementedError

    def embed(self, features: Tensor) -> Tensor:
        """Image features [B, D] -> classifier space [B, E] (the identity by default)."""
        return features

    def embed_seen(
        self, features: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """The real seen training examples of the classifier (default: the features as they are)."""
        return self.embed(features), labels

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` synthetic image features per attribute vector [K, A] -> [K * n, D]."""
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------
    def seen_training_data(self) -> tuple[Tensor, Tensor]:
        """Real seen-class training features and global labels, handed over by :meth:`bind`."""
        examples = self.training_examples()
        x, y = examples.features.to(self.device), examples.labels.to(self.device)
        self.to_local(y)  # raises if a training label is not a seen class
        return x, y

    # -- generator helpers (f-CLSWGAN, SE-GZSL, f-VAEGAN, tf-VAEGAN) -------------------
    def register_generator_state(self) -> None:
        """The state every feature generator keeps beside its networks (call at the end of
        ``configure_models``): the ``generator_initialised`` buffer of
        :meth:`start_generator` and, with ``gen_ema`` set, frozen copies ``<name>_ema`` of the
        :attr:`averaged` networks, outside every optimiser; both are saved in checkpoints.
        Weight averaging of GAN generators: Yazici et al., "The Unusual Effectiveness of
        Averaging in GAN Training", ICLR 2019."""
        if self.hp.get("gen_ema") is not None:
            for name in self.averaged:
                average = copy.deepcopy(getattr(self, name)).requires_grad_(False)
                setattr(self, f"{name}_ema", average)
        self.register_buffer("generator_initialised", torch.tensor(False))

    def synthesis_net(self, name: str) -> nn.Module:
        """The network that synthesises: ``<name>_ema`` with ``gen_ema``, else ``<name>``."""
        average: nn.Module | None = getattr(self, f"{name}_ema", None)
        return average if average is not None else getattr(self, name)  # type: ignore[no-any-return]

    def update_averages(self) -> None:
        """One step of the ``gen_ema`` averages, after a generator step (no-op without)."""
        if self.hp.get("gen_ema") is not None:
            decay = float(self.hp.gen_ema)
            for name in self.averaged:
                ema_update(getattr(self, f"{name}_ema"), getattr(self, name), decay)

    def start_generator(self, generator: Any, features: Tensor) -> None:
        """Shared start of a feature generator ending in a ReLU: warn if the training
        ``features`` have negative values, and on the first fit only (the
        ``generator_initialised`` buffer, saved in checkpoints) start its outputs at the mean
        training feature (``generator.init_output_bias``) and copy the networks into their
        ``gen_ema`` averages."""
        if bool((features < 0).any()):
            warnings.warn(
                f"{type(self).__name__}: training features have negative values, but the "
                "generator ends in a ReLU (CNN features are non-negative); use non-negative "
                "preprocessing (l2 / minmax of ReLU features)",
                stacklevel=2,
            )
        if getattr(generator, "unit_norm", False):
            norms = features.norm(dim=1)
            if not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)):
                raise ValueError(
                    f"{type(self).__name__}: unit_norm_output generates unit-norm features, but "
                    f"the training features' L2 norms range from {float(norms.min()):.4g} to "
                    f"{float(norms.max()):.4g}; use L2-normalised features "
                    "(data.preprocess=l2) or unit_norm_output=false"
                )
        if not bool(self.generator_initialised):
            generator.init_output_bias(features.mean(dim=0))
            for name in self.averaged:
                average = getattr(self, f"{name}_ema", None)
                if average is not None:
                    average.load_state_dict(getattr(self, name).state_dict())
            self.generator_initialised.fill_(True)

    def _eval_generator(self) -> torch.Generator:
        """A private RNG for evaluation, so evaluating never perturbs the training RNG stream."""
        return torch.Generator().manual_seed(self.second_stage.eval_seed + int(self.current_epoch))

    # -- the second stage -------------------------------------------------------------
    @torch.inference_mode(False)
    def fit_classifier(self) -> None:
        """Train the GZSL softmax classifier on the real seen training examples (from the
        datamodule, through :meth:`embed_seen`) + synthetic unseen ones."""
        gen = self._eval_generator()
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x, y = self.seen_training_data()
            real, real_y = self.embed_seen(x, y, gen)
            residuals = None
            if self.second_stage.synth_residual is not None:
                residuals = within_class_residuals(x, y)
        self.train(was_training)
        self.train_classifier(real, real_y, gen, residuals, bool((x >= 0).all()))

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
        was_training = self.training
        self.eval()
        with torch.no_grad():
            unseen = self.unseen_ids
            n_synth = self.n_synth_per_class(real.shape[0])
            synth = self.synthesize_unseen(n_synth, generator, residuals, nonnegative)
            synth_y = unseen.repeat_interleave(n_synth)
            n_seen = self.n_synth_seen_per_class(real.shape[0])
            if n_seen > 0:
                seen = self.seen_ids
                synth_seen = self.synthesize_classes(
                    self.seen_semantics(), n_seen, generator, residuals, nonnegative
                )
                synth = torch.cat([synth, synth_seen])
                synth_y = torch.cat([synth_y, seen.repeat_interleave(n_seen)])
                del synth_seen
        self.train(was_training)
        universe = torch.nonzero(self.universe_mask()).squeeze(1)
        self.check_finite(synth, "synthetic examples")
        inputs = torch.cat([real, synth]).detach()  # new: the caller's are left as they are
        del synth
        targets = torch.searchsorted(universe, torch.cat([real_y, synth_y]))
        rank = stage.cls_pca
        if rank is not None:
            mean, basis = self.classifier_basis(real, int(rank))
            inputs = (inputs - mean) @ basis
        weight, bias = fit_softmax_classifier(
            inputs,
            targets,
            universe.numel(),
            stage.cls_epochs,
            stage.cls_lr,
            stage.cls_batch_size,
            stage.cls_weight_decay,
            generator,
            stage.cls_steps,
            stage.cls_min_steps,
        )
        if rank is not None:  # fold the projection in: (x - mean) @ basis @ w + b
            weight = basis @ weight
            bias = bias - mean @ weight
        self._classifier = (weight, bias, universe)

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
        :meth:`embed`."""
        k = self.second_stage.synth_residual
        if k is None:
            return self.synthesize(semantics, n, generator)
        if residuals is None:
            raise ValueError(
                f"{type(self).__name__}: second_stage.synth_residual needs the real seen "
                "within-class residuals"
            )
        features = self.generate_features(semantics, n, generator)
        device = generator.device
        pick = torch.randint(
            0, residuals.shape[0], (features.shape[0],), generator=generator, device=device
        ).to(residuals.device)
        # features + k * residuals[pick], clamped: in place (the same roundings, k * r first),
        # as these can be a gigabyte
        shift = residuals[pick]
        if k != 1.0:
            shift.mul_(float(k))
        if shift.dtype == features.dtype:
            features.add_(shift)
        else:  # e.g. half-precision features: promote as the out-of-place sum does
            features = features + shift
        del shift
        if nonnegative:
            features.clamp_min_(0.0)
        return self.embed(features)

    def classifier_basis(self, real: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Mean and top-``k`` principal directions of the real seen classifier inputs (cached
        while the inputs and ``k`` stay the same)."""
        key = (tuple(real.shape), k, float(real.sum()), float(real.pow(2).sum()))
        if self._basis_cache is None or self._basis_cache[0] != key:
            self._basis_cache = (key, *principal_basis(real, k))
        return self._basis_cache[1], self._basis_cache[2]

    def n_synth_per_class(self, n_real_seen: int) -> int:
        """Synthetic examples per unseen class: ``n_synth``, or with ``synth_ratio`` set
        ``round(synth_ratio * n_real_seen / n_unseen_classes)`` (at least 1)."""
        ratio = self.second_stage.synth_ratio
        if ratio is None:
            return int(self.second_stage.n_synth)
        return max(1, round(float(ratio) * n_real_seen / self.unseen_ids.numel()))

    def n_synth_seen_per_class(self, n_real_seen: int) -> int:
        """Synthetic examples per seen class: 0 without ``synth_seen``, else
        ``round(synth_seen * n_real_seen / n_seen_classes)`` (at least 1)."""
        ratio = self.second_stage.synth_seen
        if ratio is None:
            return 0
        return max(1, round(float(ratio) * n_real_seen / self.seen_ids.numel()))

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
        logp = torch.log_softmax(torch.addmm(bias, self.embed(features), weight), dim=1)
        out = logp.new_full((features.shape[0], self.n_classes), float("-inf"))
        out[:, universe] = logp
        return out


def linear_warmup(epoch: float, start: float, end: float) -> float:
    """0 before ``start``, 1 from ``end`` on, linear in between (CADA-VAE's warm-up)."""
    if end <= start:
        return 1.0 if epoch >= start else 0.0
    return min(max((epoch - start) / (end - start), 0.0), 1.0)


def check_positive(**values: float) -> None:
    """Raise a ValueError naming every non-positive (or NaN) value."""
    bad = [f"{k}={v}" for k, v in values.items() if not (v > 0) or math.isnan(v)]
    if bad:
        raise ValueError(f"must be positive: {', '.join(bad)}")


def check_nonnegative(**values: float) -> None:
    """Raise a ValueError naming the first negative (or NaN) value, e.g. a loss weight."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
