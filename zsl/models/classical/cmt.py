"""CMT: "Zero-Shot Learning Through Cross-Modal Transfer" (Socher, Ganjoo, Manning & Ng,
NeurIPS 2013, https://arxiv.org/abs/1301.3666).

A two-layer network ``f(x) = W2 tanh(W1 x + b1) + b2`` maps image features into the semantic
space, trained on seen classes with the squared distance to the class's semantic vector;
classes are scored by the negative squared distance ``-|f(x) - s_c|^2``.

For GZSL the paper adds a novelty detector (``novelty=True``, GBU's CMT*): each seen class is
an isotropic Gaussian in the semantic space centred on its semantic vector, with the variance
of its mapped training images; an image whose density under the seen-class mixture falls
below the ``outlier_fraction`` quantile of the training images' densities is an outlier and is
classified among the unseen classes, every other image among the seen classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.components import adam, class_counts, class_sums

#: score offset that sends an image to one side of the novelty detector's decision
GATE = 1e4


def seen_log_density(
    mapped: Tensor, centres: Tensor, variances: Tensor, log_priors: Tensor
) -> Tensor:
    """``log sum_y pi_y N(mapped; centre_y, var_y I)`` [B] for mapped images [B, A], class
    centres [S, A], per-class isotropic variances [S] and log-priors [S]."""
    dim = mapped.shape[1]
    sq = torch.cdist(mapped, centres).square()
    log_normal = -0.5 * (sq / variances + dim * torch.log(2.0 * math.pi * variances))
    return torch.logsumexp(log_normal + log_priors, dim=1)


class CMT(ZSLModule):
    """Cross-modal transfer (Socher et al., NeurIPS 2013), optionally with the novelty detector.

    ``hidden`` is the width of the tanh layer (200 in the official code), ``weight_decay`` its
    L2 penalty. The detector's statistics (per-class variances and priors, the threshold)
    are buffers computed from the bound training examples before every evaluation, so a
    checkpoint carries them.
    """

    class_variance: Tensor
    class_log_prior: Tensor
    log_threshold: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        hidden: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        novelty: bool = False,
        outlier_fraction: float = 0.1,
    ) -> None:
        if not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"CMT: hidden must be an integer >= 1, got {hidden}")
        if not 0.0 <= outlier_fraction < 1.0:
            raise ValueError(f"CMT: outlier_fraction must lie in [0, 1), got {outlier_fraction}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = nn.Sequential(
            nn.Linear(self.feature_dim, self.hp.hidden),
            nn.Tanh(),
            nn.Linear(self.hp.hidden, self.n_attributes),
        )
        self.register_buffer("class_variance", torch.ones(self.n_classes))
        self.register_buffer("class_log_prior", torch.zeros(self.n_classes))
        self.register_buffer("log_threshold", torch.tensor(float("-inf")))

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return -torch.cdist(self.net(features), class_semantics).square()

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        residual = self.net(batch.features) - seen_semantics[local_labels]
        return 0.5 * residual.square().sum(dim=1).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)

    # -- the novelty detector ------------------------------------------------------------
    def on_eval_start(self) -> None:
        if self.hp.novelty:
            self.fit_novelty_detector()

    @torch.no_grad()
    def fit_novelty_detector(self) -> None:
        """Per-seen-class isotropic variances and priors from the mapped training images, and
        the log-density below which the ``outlier_fraction`` of them lie."""
        examples = self.training_examples()
        features = examples.features.to(self.device)
        local = self.to_local(examples.labels.to(self.device))
        mapped = self.net(features)
        centres = self.seen_semantics()
        n_seen = centres.shape[0]
        sq = (mapped - centres[local]).square().sum(dim=1, keepdim=True)
        counts = class_counts(local, n_seen)
        per_class = class_sums(sq, local, n_seen)[:, 0]
        variance = (per_class / (counts.clamp_min(1.0) * mapped.shape[1])).clamp_min(1e-8)
        self.class_variance[self.seen_ids] = variance.to(self.class_variance)
        log_prior = (counts / counts.sum()).clamp_min(1e-12).log()
        self.class_log_prior[self.seen_ids] = log_prior.to(self.class_log_prior)
        density = self.seen_log_density(mapped)
        self.log_threshold.fill_(float(torch.quantile(density, self.hp.outlier_fraction)))

    def seen_log_density(self, mapped: Tensor) -> Tensor:
        """Log-density of mapped images [B, A] under the seen-class mixture, [B]."""
        seen = self.seen_ids
        return seen_log_density(
            mapped, self.semantics[seen], self.class_variance[seen], self.class_log_prior[seen]
        )

    def all_scores(self, features: Tensor) -> Tensor:
        """With the detector on, an outlier's seen-class scores and an inlier's unseen-class
        scores are lowered by :data:`GATE`, so the decision is taken on the detected side."""
        out = super().all_scores(features)
        if not self.hp.novelty:
            return out
        outlier = self.seen_log_density(self.net(features)) < self.log_threshold
        seen = torch.zeros(self.n_classes, dtype=torch.bool, device=out.device)
        seen[self.seen_ids] = True
        blocked = torch.where(outlier[:, None], seen[None, :], ~seen[None, :])
        return out - GATE * blocked.to(out.dtype)
