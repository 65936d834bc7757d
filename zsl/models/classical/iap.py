"""IAP: indirect attribute prediction, from "Attribute-Based Classification for Zero-Shot
Visual Object Categorization" (Lampert, Nickisch & Harmeling, TPAMI 2014,
https://doi.org/10.1109/TPAMI.2013.140).

A multi-class softmax over the seen classes gives p(y_k | x); the attribute posteriors follow
through the seen classes' binary signatures, p(a_m = 1 | x) = sum_k p(y_k | x) a_m^{y_k}, and
classes are scored with DAP's posterior
(:class:`~zsl.models.classical.dap.AttributePosteriorModel`).
"""

from __future__ import annotations

from torch import Tensor, nn

from zsl.models.classical.components import SeenSoftmax
from zsl.models.classical.dap import AttributePosteriorModel, check_signature


def iap_attribute_probs(seen_probs: Tensor, seen_signatures: Tensor, eps: float) -> Tensor:
    """p(a_m = 1 | x) [B, A] from seen-class probabilities [B, S] and the seen classes' binary
    signatures [S, A], kept inside [eps, 1 - eps] so that no log-probability is infinite."""
    return (seen_probs @ seen_signatures).clamp(eps, 1.0 - eps)


class IAP(SeenSoftmax, AttributePosteriorModel):
    """Indirect Attribute Prediction (Lampert et al., TPAMI 2014).

    The seen-class classifier is linear on the image features (the paper uses multi-class
    SVMs with probability outputs; a softmax trained with cross-entropy gives the same kind
    of posterior). ``eps`` bounds the attribute probabilities away from 0 and 1: an attribute
    that no probable seen class has would otherwise veto every class that has it.
    ``signature``: binary (the paper) or soft signatures, as in
    :class:`~zsl.models.classical.dap.AttributePosteriorModel`.
    """

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        eps: float = 1e-3,
        signature: str = "binary",
    ) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"IAP: eps must lie in (0, 0.5), got {eps}")
        check_signature(signature)
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        super().configure_models()
        # one output per global class id; only the seen classes' rows are ever trained
        self.classifier = nn.Linear(self.feature_dim, self.n_classes)

    def attribute_log_probs(
        self, features: Tensor, class_semantics: Tensor
    ) -> tuple[Tensor, Tensor]:
        signatures = self.binarize(self.seen_semantics())
        p_on = iap_attribute_probs(self.seen_probabilities(features), signatures, self.hp.eps)
        return p_on.log(), (1.0 - p_on).log()
