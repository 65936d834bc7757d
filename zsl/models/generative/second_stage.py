"""The second stage shared by every feature-generating model, as one typed config object.

A generative model learns to produce examples of a class from its semantic vector; before
every validation/test pass the second stage synthesises examples of the unseen classes and
trains a fresh softmax classifier over the protocol's universe on real seen + synthetic
unseen examples (see :mod:`zsl.models.generative.base` for the rationale of each option).
A new generator declares only its own hyper-parameters and accepts ``second_stage``; in YAML
the options sit under ``model.params.second_stage`` and grids name them as
``second_stage.<option>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SecondStage:
    """How the GZSL classifier of a generative model is trained at every evaluation.

    ``n_synth`` synthetic examples per unseen class (the papers' rule), or with ``synth_ratio``
    that many times as many synthetic unseen examples in total as real seen ones; the
    classifier trains ``cls_epochs`` epochs (or ``cls_steps`` updates; at least
    ``cls_min_steps`` updates, so that a small dataset's classifier is trained as much as a
    large one's) with Adam at ``cls_lr``
    on mini-batches of ``cls_batch_size``; ``cls_pca = k`` restricts it to the top-``k``
    principal components of the real seen examples. ``synth_residual = k`` adds to every
    synthetic feature ``k`` times the deviation of a random real seen training feature from
    its class mean (feature-space classifiers only). ``synth_seen = r`` also gives the seen
    classes synthetic examples, ``r`` times as many in total as real seen ones, spread evenly
    over the seen classes. ``eval_seed`` seeds its private RNG.
    """

    n_synth: int = 300
    synth_ratio: float | None = None
    cls_epochs: int = 25
    cls_steps: int | None = None
    cls_min_steps: int | None = None
    cls_pca: int | None = None
    cls_lr: float = 1e-3
    cls_batch_size: int = 64
    cls_weight_decay: float = 0.0
    synth_residual: float | None = None
    synth_seen: float | None = None
    eval_seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "synth_ratio",
            "cls_steps",
            "cls_min_steps",
            "cls_pca",
            "synth_residual",
            "synth_seen",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"second_stage.{name} must be positive or null, got {value}")
        for name in ("n_synth", "cls_epochs", "cls_lr", "cls_batch_size"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"second_stage.{name} must be positive, got {value}")
        if not self.cls_weight_decay >= 0:
            raise ValueError(
                f"second_stage.cls_weight_decay must be >= 0, got {self.cls_weight_decay}"
            )

    @classmethod
    def from_value(
        cls, value: SecondStage | Mapping[str, Any] | None, default: SecondStage | None = None
    ) -> SecondStage:
        """A config object from itself, a mapping of some of its fields over ``default`` (a
        model's paper settings; unknown keys refused), or None (``default``)."""
        base = default if default is not None else cls()
        if value is None:
            return base
        if isinstance(value, SecondStage):
            return value
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ValueError(
                f"second_stage.{unknown[0]} is not a second-stage option; options: "
                f"{', '.join(names)}"
            )
        return dataclasses.replace(base, **dict(value))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def fit_softmax_classifier(
    x: Tensor,
    y: Tensor,
    n_out: int,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
    min_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on in-memory tensors: Adam (betas 0.5, 0.999), shuffled
    mini-batches, a fixed number of epochs. Returns (weight [D, n_out], bias [n_out]) that
    apply to the *unscaled* inputs.

    The inputs are multiplied by one scalar so that their mean L1 norm is 1 (folded back into
    the returned weight). Adam moves every weight by about ``lr`` per step, so a logit then
    moves by at most about ``lr`` per step whatever the feature dimension and preprocessing:
    the same ``lr``/``epochs`` behave alike on 64-d latents, 256-d and 4096-d features.

    ``max_steps`` (optional) replaces ``epochs`` by a number of mini-batch updates (reshuffling
    at every pass), so the training budget does not grow with the size of the training set;
    ``min_steps`` (optional) is a floor on the number of updates (more passes over a small set).
    """
    n, dim = x.shape
    scale = 1.0 / float(x.abs().sum(dim=1).mean().clamp_min(1e-12))
    weight = torch.zeros(dim, n_out, device=x.device, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_out, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
    device = generator.device if generator is not None else x.device
    steps = epochs * -(-n // batch_size) if max_steps is None else max_steps
    steps = max(steps, min_steps or 0)
    with torch.inference_mode(False), torch.enable_grad():
        while steps > 0:
            order = torch.randperm(n, generator=generator, device=device).to(x.device)
            for idx in order.split(batch_size)[:steps]:
                logits = torch.addmm(bias, x[idx] * scale, weight)
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps -= 1
    return weight.detach() * scale, bias.detach()


def within_class_residuals(x: Tensor, y: Tensor) -> Tensor:
    """Each row of ``x`` [N, D] minus the mean of the rows with its label ``y`` [N]."""
    classes, index = torch.unique(y, return_inverse=True)
    sums = x.new_zeros(classes.numel(), x.shape[1]).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=classes.numel()).to(x.dtype)
    return x - (sums / counts[:, None])[index]


def principal_basis(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean [E] and the ``k`` leading principal directions [E, k] (orthonormal columns,
    descending variance) of the rows of ``x`` [N, E], from the eigenvectors of the covariance."""
    if not 0 < k <= x.shape[1]:
        raise ValueError(
            f"cls_pca={k} principal components asked of {x.shape[1]}-d classifier inputs; "
            f"use 1..{x.shape[1]} or null"
        )
    mean = x.mean(dim=0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return mean, vectors[:, -k:].flip(1).contiguous()
