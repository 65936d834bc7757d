"""DAP: Attribute-Based Classification for Zero-Shot Visual Object Categorization (Lampert,
Nickisch & Harmeling, TPAMI 2014, https://doi.org/10.1109/TPAMI.2013.140). Independent
probabilistic attribute classifiers p(a_m | x) trained on seen classes; a class is scored by
its binary attribute signature, log p(c | x) = sum_m log p(a_m = a_m^c | x) - log p(a_m^c).

:class:`AttributePosteriorModel` holds the scoring both of the paper's models share (DAP here,
IAP in :mod:`zsl.models.classical.iap`): binary signatures, attribute priors and the
posterior; they differ only in how p(a_m = 1 | x) is estimated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.components import adam

#: attribute priors are kept inside [floor, 1 - floor] so that no log-prior is infinite
PRIOR_FLOOR = 1e-3


def attribute_log_posterior(
    log_on: Tensor, log_off: Tensor, class_attributes: Tensor, prior: Tensor
) -> Tensor:
    """Unnormalised log-posteriors [B, C] from attribute log-probabilities.

    ``log_on`` / ``log_off`` [B, A] are log p(a_m = 1 | x) and log p(a_m = 0 | x),
    ``class_attributes`` [C, A] binary signatures a^c, ``prior`` [A] p(a_m = 1). Computes
    sum_m a_m^c (log p(a_m=1|x) - log p_m) + (1 - a_m^c) (log p(a_m=0|x) - log(1 - p_m)).
    """
    on = log_on - prior.log()
    off = log_off - (1.0 - prior).log()
    return on @ class_attributes.T + off @ (1.0 - class_attributes).T


def dap_log_posterior(logits: Tensor, class_attributes: Tensor, prior: Tensor) -> Tensor:
    """:func:`attribute_log_posterior` with p(a_m = 1 | x) = sigmoid(``logits``) [B, A]."""
    return attribute_log_posterior(
        F.logsigmoid(logits), F.logsigmoid(-logits), class_attributes, prior
    )


SIGNATURES = ("binary", "soft")


def check_signature(signature: str) -> None:
    """Refuse a ``signature`` other than ``binary`` (the paper) or ``soft``."""
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be binary or soft, got {signature!r}")


class AttributePosteriorModel(ZSLModule):
    """Scores classes by the DAP posterior of their attribute signatures.

    ``signature="binary"`` (the paper): continuous class attributes are binarised per
    attribute at their mean over the seen classes (``threshold``, a buffer set when the fit
    starts, from seen classes only). ``signature="soft"``: each attribute is min-max scaled to
    [0, 1] over the seen classes (clipped for unseen ones), and the posterior weighs
    log p(a_m = 1 | x) and log p(a_m = 0 | x) by that degree: with few attributes many classes
    share a binary signature, and thresholding discards how strongly a class has an attribute.
    The attribute priors are the seen classes' mean signature. Subclasses give
    ``attribute_log_probs(features, class_semantics) -> (log p(a=1|x), log p(a=0|x))``.
    """

    threshold: Tensor
    prior: Tensor

    def configure_models(self) -> None:
        self.register_buffer("threshold", torch.zeros(self.n_attributes))
        self.register_buffer("prior", torch.full((self.n_attributes,), 0.5))
        #: (low, span) of every attribute over the seen classes, for soft signatures
        self._soft_range: tuple[Tensor, Tensor] | None = None

    def on_fit_start(self) -> None:
        seen = self.seen_semantics()
        self.threshold.copy_(seen.mean(dim=0))
        self._soft_range = None  # the fit's seen classes
        self.prior.copy_(self.binarize(seen).mean(dim=0).clamp(PRIOR_FLOOR, 1.0 - PRIOR_FLOOR))

    def binarize(self, class_semantics: Tensor) -> Tensor:
        """Attribute signatures [C, A]: binary (1 where above the seen-class threshold), or with
        ``signature="soft"`` each attribute scaled to [0, 1] by its seen-class range."""
        if self.hp.get("signature", "binary") == "soft":
            if self._soft_range is None:  # once per fit (or per loaded model)
                seen = self.seen_semantics()
                low, high = seen.min(dim=0).values, seen.max(dim=0).values
                self._soft_range = (low, (high - low).clamp_min(1e-12))
            low, span = self._soft_range
            return ((class_semantics - low) / span).clamp(0.0, 1.0)
        return (class_semantics > self.threshold).to(class_semantics.dtype)

    def attribute_log_probs(
        self, features: Tensor, class_semantics: Tensor
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        log_on, log_off = self.attribute_log_probs(features, class_semantics)
        return attribute_log_posterior(log_on, log_off, self.binarize(class_semantics), self.prior)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)


class DAP(AttributePosteriorModel):
    """Direct Attribute Prediction (Lampert et al., TPAMI 2014).

    The per-attribute logistic regressions are one linear layer trained jointly with binary
    cross-entropy against the seen classes' signatures (binary, or with ``signature="soft"``
    their degrees in [0, 1] as soft targets).
    """

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        signature: str = "binary",
    ) -> None:
        check_signature(signature)
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        super().configure_models()
        self.attribute_head = nn.Linear(self.feature_dim, self.n_attributes)

    def attribute_log_probs(
        self, features: Tensor, class_semantics: Tensor
    ) -> tuple[Tensor, Tensor]:
        logits = self.attribute_head(features)
        return F.logsigmoid(logits), F.logsigmoid(-logits)

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        targets = self.binarize(seen_semantics)[local_labels]
        return F.binary_cross_entropy_with_logits(self.attribute_head(batch.features), targets)
