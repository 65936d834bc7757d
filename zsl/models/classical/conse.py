"""CONSE: "Zero-Shot Learning by Convex Combination of Semantic Embeddings" (Norouzi et al.,
ICLR 2014, https://arxiv.org/abs/1312.5650).

A softmax classifier over the seen classes; an image is embedded as the probability-weighted
mean of the semantic vectors of its ``top_t`` most probable seen classes,
``f(x) = sum_t p(y_t | x) s(y_t) / sum_t p(y_t | x)``, and scored against every class by
cosine similarity. The classifier is linear on the image features (the paper reuses a trained
CNN's softmax layer); ``top_t`` (the paper's T) is selected on validation classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.models.base import ZSLModule
from zsl.models.classical.components import SeenSoftmax, adam


def conse_embedding(probs: Tensor, seen_semantics: Tensor, top_t: int) -> Tensor:
    """Convex combination of the semantic vectors [S, A] of each row's ``top_t`` most probable
    seen classes, weighted by their renormalised probabilities [B, S] -> [B, A]."""
    t = min(int(top_t), probs.shape[1])
    top_p, top_idx = probs.topk(t, dim=1)
    weights = top_p / top_p.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bt,bta->ba", weights, seen_semantics[top_idx])


class CONSE(SeenSoftmax, ZSLModule):
    """Convex combination of semantic embeddings (Norouzi et al., ICLR 2014)."""

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        top_t: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        if not (isinstance(top_t, int) and top_t >= 1):
            raise ValueError(f"CONSE: top_t must be an integer >= 1, got {top_t}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        # one output per global class id; only the seen classes' rows are ever trained
        self.classifier = nn.Linear(self.feature_dim, self.n_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        probs = self.seen_probabilities(features)
        embedded = conse_embedding(probs, self.seen_semantics(), self.hp.top_t)
        return F.normalize(embedded, dim=1) @ F.normalize(class_semantics, dim=1).T

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)
