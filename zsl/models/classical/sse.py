"""SSE: "Zero-Shot Learning via Semantic Similarity Embedding" (Zhang & Saligrama, ICCV 2015,
https://arxiv.org/abs/1509.04767).

Classes and images are both expressed as mixtures of the seen classes.

* Class side: a class with (L2-normalised) attributes a_c gets the proportions
  ``alpha_c = argmin_{alpha in simplex} 1/2 alpha^T (K_ss + gamma I) alpha - k_c^T alpha``,
  i.e. ``1/2 |a_c - A_s alpha|^2 + gamma/2 |alpha|^2``, with the cosine kernel K of the
  attributes (``K_ss`` between seen classes, ``k_c`` of class c against them). Solved for all
  classes at once by accelerated projected gradient (:func:`simplex_proportions`).
* Image side (the paper's ReLU variant): one template v_s per seen class (initialised at the
  class's mean training feature, then learned) and a shared weight w give
  ``z_s(x) = w^T max(0, x - v_s)``.
* Score: ``f(x, c) = sum_s alpha_cs z_s(x)``, learned per image with the structured
  max-margin loss on the seen classes (the paper's objective; its official code simplifies
  it to class-level samples, which validated 10 points lower on CUB).
* The intersection variant, ``w^T min(x, v_s) = w^T x - w^T max(0, x - v_s)``, differs from
  ReLU by ``w^T x``, the same for every class because each alpha_c sums to one, and by the
  sign of the learned w: both rank classes identically, so only ReLU is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.components import adam, class_counts, class_sums
from zsl.models.classical.losses import structured_hinge_loss

#: elements per chunk of the [images, seen classes, features] tensor (8 MB: allocator-friendly)
_CHUNK_ELEMENTS = 1 << 21


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of every row of ``v`` [C, S] onto the probability simplex
    (sort-based, Held et al. 1974 / Duchi et al. 2008)."""
    sorted_v, _ = v.sort(dim=1, descending=True)
    cumulative = sorted_v.cumsum(dim=1) - 1.0
    ranks = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    support = (sorted_v - cumulative / ranks > 0).sum(dim=1, keepdim=True)
    threshold = cumulative.gather(1, support - 1) / support.to(v.dtype)
    return (v - threshold).clamp_min(0.0)


def simplex_proportions(
    seen_kernel: Tensor, class_kernel: Tensor, gamma: float, iters: int = 2000, tol: float = 1e-10
) -> Tensor:
    """``argmin_{alpha_c in simplex} 1/2 alpha_c^T (K_ss + gamma I) alpha_c - k_c^T alpha_c``
    for every row ``k_c`` of ``class_kernel`` [C, S] at once, ``seen_kernel`` K_ss [S, S] PSD;
    returns [C, S] in float64. FISTA with step 1/L, L the largest eigenvalue of the quadratic,
    stopping when no proportion moves by more than ``tol``."""
    q = seen_kernel.to(torch.float64)
    q = q + gamma * torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
    k = class_kernel.to(torch.float64)
    step = 1.0 / float(torch.linalg.eigvalsh(q).max())
    alpha = torch.full_like(k, 1.0 / k.shape[1])
    momentum, t = alpha, 1.0
    for _ in range(iters):
        updated = project_to_simplex(momentum - step * (momentum @ q - k))
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        momentum = updated + ((t - 1.0) / t_next) * (updated - alpha)
        moved = float((updated - alpha).abs().max())
        alpha, t = updated, t_next
        if moved < tol:
            break
    return alpha


def relu_similarities(features: Tensor, templates: Tensor, weight: Tensor) -> Tensor:
    """``z_s(x_b) = w^T max(0, x_b - v_s)`` [B, S], in chunks of images so that the
    [images, S, D] tensor stays near 16M elements; computed as ``w^T max(x, v_s) - w^T v_s``
    (one elementwise pass instead of two)."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, templates.numel()))
    parts = [
        torch.einsum("bsd,d->bs", torch.maximum(chunk[:, None, :], templates[None]), weight)
        for chunk in features.split(rows)
    ]
    if not parts:
        return features.new_zeros(0, templates.shape[0])
    return torch.cat(parts) - (templates @ weight)[None, :]


class SSE(ZSLModule):
    """Semantic similarity embedding (Zhang & Saligrama, ICCV 2015), ReLU variant.

    ``gamma`` regularises the class-side proportions (10 in the official code; small values
    give sparse, peaked mixtures). ``lr``, ``weight_decay`` and ``margin`` are those of the
    image-side max-margin learning of w and the templates (Adam).
    """

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        gamma: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        if not gamma > 0:
            raise ValueError(f"SSE: gamma must be positive, got {gamma}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        # one template per global class id; only the seen classes' rows are trained
        self.templates = nn.Parameter(torch.zeros(self.n_classes, self.feature_dim))
        self.weight = nn.Parameter(torch.zeros(self.feature_dim))
        self._proportions: tuple[Tensor, Tensor, Tensor] | None = None

    def on_fit_start(self) -> None:
        """Templates start at the seen classes' mean training features and w at -1 / sqrt(D),
        so that z_s(x) starts as a similarity: an image that exceeds its own class's template
        least scores that class highest (the intersection view, w^T min(x, v_s), with w > 0)."""
        examples = self.training_examples()
        local = self.to_local(examples.labels.to(self.device))
        n_seen = self.seen_ids.numel()
        features = examples.features.to(self.device)
        counts = class_counts(local, n_seen).clamp_min(1.0)[:, None]
        with torch.no_grad():
            self.templates[self.seen_ids] = (class_sums(features, local, n_seen) / counts).to(
                self.templates.dtype
            )
            self.weight.fill_(-(self.feature_dim**-0.5))

    def proportions(self, class_semantics: Tensor) -> Tensor:
        """Class-side proportions alpha [C, S] (memoised for the last semantics seen)."""
        seen = F.normalize(self.semantics[self.seen_ids], dim=1)
        cached = self._proportions
        if (
            cached is not None
            and cached[0].shape == class_semantics.shape
            and torch.equal(cached[0], class_semantics)
            and torch.equal(cached[1], seen)
        ):
            return cached[2]
        queries = F.normalize(class_semantics, dim=1)
        alpha = simplex_proportions(seen @ seen.T, queries @ seen.T, self.hp.gamma)
        alpha = alpha.to(class_semantics.dtype)
        self._proportions = (class_semantics.detach().clone(), seen.clone(), alpha)
        return alpha

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        z = relu_similarities(features, self.templates[self.seen_ids], self.weight)
        return z @ self.proportions(class_semantics).T

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        scores = self.scores(batch.features, seen_semantics)
        return structured_hinge_loss(scores, local_labels, self.hp.margin)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)
