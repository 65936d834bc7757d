"""The shared base of feature-generating GZSL models: the generator contract.

A generative model learns, on seen classes only, to produce examples of a class from its
semantic vector; before every validation/test pass it trains a softmax classifier over the
protocol's universe on real seen + synthetic unseen examples, and ``scores`` are that
classifier's log-probabilities. That classifier stage is
:class:`~zsl.models.generative.stage.ClassifierStage`, the reasons behind each of its options
are in :mod:`zsl.models.generative.second_stage`; this module adds the generator: its
networks, its training, its start on the training features and its ``gen_ema`` averages.

The contract of a generator -- what a subclass implements (the abstract methods), the hooks
the base calls itself (``@final``: generator start, ``gen_ema`` averaging) -- is described,
step by step, in ``docs/extending.md``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.generative.losses import linear_warmup
from zsl.models.generative.nets import GeneratorNet, ema_update, feature_kind
from zsl.models.generative.second_stage import SecondStage
from zsl.models.generative.stage import ClassifierStage

__all__ = ["GenerativeZSL", "SecondStage", "linear_warmup"]


class GenerativeZSL(ClassifierStage, ABC):
    """Base of feature-generating models: a generator trained on seen classes, and a softmax
    classifier on real seen + generated unseen examples (Xian et al., "Feature Generating
    Networks for Zero-Shot Learning", CVPR 2018), trained at every evaluation with the
    :class:`SecondStage` settings (:class:`~zsl.models.generative.stage.ClassifierStage`);
    ``gen_ema`` averages the synthesising networks (Yazici et al., "The Unusual Effectiveness
    of Averaging in GAN Training", ICLR 2019)."""

    generates_features: ClassVar[bool] = True
    #: the networks (attribute names) whose weight average synthesises with ``gen_ema``
    averaged: ClassVar[tuple[str, ...]] = ("generator",)
    #: set when :meth:`feature_generator` names a network (the start happens once per model)
    generator_initialised: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)
        if self.feature_generator() is not None:
            self._register_generator_state()

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
