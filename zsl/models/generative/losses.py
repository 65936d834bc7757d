"""Losses shared by the feature-generating models, as plain functions of tensors.

* WGAN-GP (Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017):
  :func:`gradient_penalty` and :func:`critic_loss` (f-CLSWGAN, f-VAEGAN, tf-VAEGAN).
* Gaussian VAE: :func:`vae_loss` (f-VAEGAN, tf-VAEGAN, SE-GZSL).
* Attribute regression: :func:`semantic_loss` (tf-VAEGAN's semantic decoder, SE-GZSL's
  regressor).
* :func:`linear_warmup`, the loss-weight schedule of CADA-VAE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: a conditional critic ``D(features [B, D], semantics [B, A]) -> scores [B]``
Critic = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Critic",
    "critic_loss",
    "gradient_penalty",
    "linear_warmup",
    "semantic_loss",
    "vae_loss",
]


def gradient_penalty(
    critic: Critic, real: Tensor, fake: Tensor, semantics: Tensor, alpha: Tensor | None = None
) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x_hat, a)||_2 - 1)^2]`` on interpolates
    ``x_hat = alpha * real + (1 - alpha) * fake`` (one alpha ~ U(0, 1) per row unless given).

    Vectorised over the batch and differentiable w.r.t. the critic's parameters
    (``create_graph=True``), so it can be back-propagated as part of the critic loss."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    leaf = (alpha * real + (1.0 - alpha) * fake).detach().requires_grad_(True)
    with torch.enable_grad():
        # the gradient is taken at a view of the leaf: the same numbers, and it also runs
        # under torch.utils.flop_counter.FlopCounterMode, which refuses a leaf here
        interpolates = leaf.view_as(leaf)
        out = critic(interpolates, semantics)
        (grad,) = torch.autograd.grad(out.sum(), interpolates, create_graph=True)
    return ((grad.norm(2, dim=1) - 1.0) ** 2).mean()


def critic_loss(
    critic: Critic, real: Tensor, fake: Tensor, semantics: Tensor, gp_weight: float
) -> tuple[Tensor, Tensor]:
    """WGAN-GP critic loss ``D(fake) - D(real) + gp_weight * GP`` and the Wasserstein estimate
    ``D(real) - D(fake)`` (detached)."""
    wasserstein = critic(real, semantics).mean() - critic(fake, semantics).mean()
    loss = -wasserstein + gp_weight * gradient_penalty(critic, real, fake, semantics)
    return loss, wasserstein.detach()


def vae_loss(recon: Tensor, target: Tensor, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """(reconstruction, KL) of a Gaussian VAE, each summed over dimensions and averaged over
    the batch: ``sum (recon - x)^2`` and ``KL(N(mean, exp(logvar)) || N(0, I))``."""
    reconstruction = (recon - target).pow(2).sum(dim=1).mean()
    kl = -0.5 * (1.0 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1).mean()
    return reconstruction, kl


def semantic_loss(predicted: Tensor, semantics: Tensor) -> Tensor:
    """Squared error of predicted (L2-normalised) attributes against the L2-normalised class
    attributes, summed over attributes and averaged over the batch."""
    return (predicted - F.normalize(semantics, dim=1)).pow(2).sum(dim=1).mean()


def linear_warmup(epoch: float, start: float, end: float) -> float:
    """0 before ``start``, 1 from ``end`` on, linear in between (CADA-VAE's warm-up)."""
    if end <= start:
        return 1.0 if epoch >= start else 0.0
    return min(max((epoch - start) / (end - start), 0.0), 1.0)
