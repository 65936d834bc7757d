"""DAP: Attribute-Based Classification for Zero-Shot Visual Object Categorization (Lampert,
Nickisch & Harmeling, TPAMI 2014, https://doi.org/10.1109/TPAMI.2013.140). Independent
probabilistic attribute classifiers p(a_m | x) trained on seen classes; a class is scored by
its binary attribute signature, log p(c | x) = sum_m log p(a_m = a_m^c | x) - log p(a_m^c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.components import adam

#: attribute priors are kept inside [floor, 1 - floor] so that no log-prior is infinite
PRIOR_FLOOR = 1e-3


def dap_log_posterior(logits: Tensor, class_attributes: Tensor, prior: Tensor) -> Tensor:
    """Unnormalised DAP log-posteriors [B, C].

    ``logits`` [B, A] of p(a_m = 1 | x) = sigmoid(logit), ``class_attributes`` [C, A] binary
    signatures a^c, ``prior`` [A] p(a_m = 1). Computes
    sum_m a_m^c (log p(a_m=1|x) - log p_m) + (1 - a_m^c) (log p(a_m=0|x) - log(1 - p_m)).
    """
    on = F.logsigmoid(logits) - prior.log()
    off = F.logsigmoid(-logits) - (1.0 - prior).log()
    return on @ class_attributes.T + off @ (1.0 - class_attributes).T


class DAP(ZSLModule):
    """Direct Attribute Prediction (Lampert et al., TPAMI 2014).

    Continuous class attributes are binarised per attribute at their mean over the seen
    classes (``threshold``, a buffer set when the fit starts, from seen classes only); the
    attribute priors are the fraction of seen classes that have each attribute. The
    per-attribute logistic regressions are one linear layer trained jointly with binary
    cross-entropy.
    """

    threshold: Tensor
    prior: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.attribute_head = nn.Linear(self.feature_dim, self.n_attributes)
        self.register_buffer("threshold", torch.zeros(self.n_attributes))
        self.register_buffer("prior", torch.full((self.n_attributes,), 0.5))

    def on_fit_start(self) -> None:
        seen = self.seen_semantics()
        self.threshold.copy_(seen.mean(dim=0))
        self.prior.copy_(self.binarize(seen).mean(dim=0).clamp(PRIOR_FLOOR, 1.0 - PRIOR_FLOOR))

    def binarize(self, class_semantics: Tensor) -> Tensor:
        """Binary attribute signatures [C, A] (1 where above the seen-class threshold)."""
        return (class_semantics > self.threshold).to(class_semantics.dtype)

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        logits = self.attribute_head(features)
        return dap_log_posterior(logits, self.binarize(class_semantics), self.prior)

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        targets = self.binarize(seen_semantics)[local_labels]
        return F.binary_cross_entropy_with_logits(self.attribute_head(batch.features), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)
