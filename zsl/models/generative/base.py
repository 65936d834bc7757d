"""The shared base of feature-generating GZSL models: the generator contract and the second stage.

A generative model learns, on seen classes only, to produce examples of a class from its
semantic vector; before every validation/test pass (:meth:`GenerativeZSL.on_eval_start`) it
trains a softmax classifier over the protocol's universe on real seen + synthetic unseen
examples, and ``scores`` are that classifier's log-probabilities. The reasons behind each
second-stage option are in :mod:`zsl.models.generative.second_stage`.

The contract of a generator -- what a subclass implements (the abstract methods), the hooks
the base calls itself (``@final``: generator start, ``gen_ema`` averaging) -- is described,
step by step, in ``docs/extending.md``.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, final

import torch
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import MEMO_POINTS, ZSLModule
from zsl.models.generative.losses import linear_warmup
from zsl.models.generative.nets import GeneratorNet, ema_update, feature_kind
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

__all__ = ["GenerativeZSL", "SecondStage", "linear_warmup"]


class GenerativeZSL(ZSLModule, ABC):
    """Base of feature-generating models: a softmax classifier on real seen + generated unseen
    examples (Xian et al., "Feature Generating Networks for Zero-Shot Learning", CVPR 2018),
    trained at every evaluation with the :class:`SecondStage` settings; ``gen_ema`` averages the
    synthesising networks (Yazici et al., "The Unusual Effectiveness of Averaging in GAN
    Training", ICLR 2019)."""

    uses_unseen_semantics: ClassVar[bool] = True
    generates_features: ClassVar[bool] = True
    #: what the classifier is trained on: generated image features (through :meth:`embed`),
    #: or the "latent codes" of a model that overrides :meth:`synthesize` (then the
    #: feature-space option ``second_stage.synth_residual`` is refused)
    example_space: ClassVar[Literal["features", "latent codes"]] = "features"
    #: the paper's second-stage settings; ``second_stage`` entries override them
    default_second_stage: ClassVar[SecondStage] = SecondStage()
    #: the networks (attribute names) whose weight average synthesises with ``gen_ema``
    averaged: ClassVar[tuple[str, ...]] = ("generator",)
    #: set when :meth:`feature_generator` names a network (the start happens once per model)
    generator_initialised: Tensor
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
        if self.feature_generator() is not None:
            self._register_generator_state()
        #: what the model decided from its data (:meth:`data_choices`)
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

    @classmethod
    def training_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Everything but the second stage and :attr:`synthesis_params`, which only evaluation
        reads (the second stage's ``eval_seed`` also seeds f-CLSWGAN's pre-trained classifier,
        so it stays): grid points over them share one generator's training."""
        out = {k: v for k, v in params.items() if k not in cls.synthesis_params}
        if out.get("gen_ema") is not None:
            # the average only follows the trained weights: points that differ in its decay
            # share a fit, each view keeping its own average (follow_shared_fit)
            out["gen_ema"] = "averaged"
        stage = out.get("second_stage")
        if isinstance(stage, Mapping):
            out["second_stage"] = {"eval_seed": stage.get("eval_seed")}
        return out

    # -- what a subclass must answer ----------------------------------------------------
    @abstractmethod
    def configure_models(self) -> None:
        """Build the networks (``self.feature_dim``, ``self.n_attributes`` and ``self.hp``
        are set); the base registers the generator's state right after."""

    @abstractmethod
    def configure_optimizers(self) -> Any:
        """The optimisers of the networks (never of the ``<name>_ema`` averages)."""

    @abstractmethod
    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        """One training iteration on a batch of real seen features, taking at most one
        generator step (the base updates the ``gen_ema`` averages after it)."""

    @abstractmethod
    def feature_generator(self) -> GeneratorNet | None:
        """The network the base starts at every fit (the first fit sets its output bias to
        the mean training feature; a ``unit_norm`` one refuses features that are not
        unit-norm), or None for a model without one (CADA-VAE)."""

    @abstractmethod
    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` synthetic image features per attribute vector [K, A] -> [K * n, D], grouped
        by row, drawn from ``generator`` (with ``gen_ema``: by :meth:`synthesis_net`)."""

    # -- hooks with defaults -------------------------------------------------------------
    def prepare_training(self, features: Tensor, labels: Tensor) -> None:
        """Called at the start of every fit, after the generator start, with the real seen
        training features [N, D] and their global labels [N] (default: nothing)."""

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

    # -- the generator's state, run by the base -----------------------------------------
    def _register_generator_state(self) -> None:
        """The ``generator_initialised`` buffer and, with ``gen_ema`` set, frozen copies
        ``<name>_ema`` of the :attr:`averaged` networks, outside every optimiser; both are
        saved in checkpoints."""
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
        """One step of the ``gen_ema`` averages (no-op without); the base runs it after every
        training batch."""
        if self.hp.get("gen_ema") is not None:
            decay = float(self.hp.gen_ema)
            for name in self.averaged:
                ema_update(getattr(self, f"{name}_ema"), getattr(self, name), decay)

    def _own_average(self, host: ZSLModule) -> bool:
        """A view whose ``gen_ema`` decay differs from its host's keeps its own averages."""
        mine = self.hp.get("gen_ema")
        return mine is not None and mine != host.hparams.get("gen_ema")

    def follow_shared_fit(self, host: ZSLModule, start: bool) -> None:
        """With its own ``gen_ema`` decay: start the averages at the host's networks (as the
        host's own start does) and update them from the host's weights after every batch,
        exactly as this point's own fit would."""
        if not self._own_average(host):
            return
        if start:
            self._start_averages(host)
            return
        for name in self.averaged:
            ema_update(getattr(self, f"{name}_ema"), getattr(host, name), float(self.hp.gen_ema))

    def _start_averages(self, source: nn.Module) -> None:
        """Set every ``<name>_ema`` average (where there is one) to ``source``'s network."""
        for name in self.averaged:
            average = getattr(self, f"{name}_ema", None)
            if average is not None:
                average.load_state_dict(getattr(source, name).state_dict())

    def own_shared_state(self, host: ZSLModule) -> dict[str, Tensor]:
        """The ``<name>_ema`` entries when this view keeps its own averages."""
        if not self._own_average(host):
            return {}
        return {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if k.split(".", 1)[0] in {f"{name}_ema" for name in self.averaged}
        }

    def _start_generator(
        self, generator: GeneratorNet, features: Tensor, kind: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Adapt the generator's output to the training ``features`` (:meth:`GeneratorNet.adapt`)
        on the first fit (``generator_initialised``; a resumed fit checks the saved choice),
        copy the networks into their ``gen_ema`` averages, and return the choice."""
        first = not bool(self.generator_initialised)
        choice = generator.adapt(features, type(self).__name__, first, kind)
        if first:
            self._start_averages(self)
            self.generator_initialised.fill_(True)
        return {**choice, "noise_dim": generator.noise_dim}

    def data_choices(self) -> dict[str, Any]:
        """The features' kind, the generator's output and noise size, and a ``cls_pca`` not
        below the classifier's inputs (used whole): ``data_choices`` in ``metrics.json``."""
        return dict(self._adaptation)

    @final
    def on_fit_start(self) -> None:
        """Start the generator (:meth:`feature_generator`), then :meth:`prepare_training`."""
        x, y = self.seen_training_data()
        kind = feature_kind(x)
        self._adaptation.update(kind)
        generator = self.feature_generator()
        if generator is not None:
            self._adaptation.update(self._start_generator(generator, x, kind))
        self.prepare_training(x, y)

    @final
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the ``gen_ema`` averages after the batch's generator step."""
        self.update_averages()

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
                if isinstance(p, GenerativeZSL)
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
                lambda p: isinstance(p, GenerativeZSL) and p.synthesis_settings() == mine,
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
