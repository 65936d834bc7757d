"""ALE: Label-Embedding for Image Classification (Akata et al., TPAMI 2016,
https://arxiv.org/abs/1503.08677). Bilinear compatibility F(x, y) = x^T W phi(y) trained with
the weighted approximate-rank (WARP) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.losses import warp_rank_loss


class Bilinear(nn.Module):
    """F(x, y) = x^T W phi(y) for features [B, D] and class semantics [C, A]."""

    def __init__(self, feature_dim: int, n_attributes: int, init_std: float | None = None) -> None:
        super().__init__()
        std = init_std if init_std is not None else feature_dim**-0.5
        self.weight = nn.Parameter(torch.randn(feature_dim, n_attributes) * std)

    def forward(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return (features @ self.weight) @ class_semantics.T


class ALE(ZSLModule):
    """Attribute Label Embedding (Akata et al., TPAMI 2016)."""

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = Bilinear(self.feature_dim, self.n_attributes)

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return self.net(features, class_semantics)

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        scores = self.scores(batch.features, seen_semantics)
        return warp_rank_loss(scores, local_labels, self.hp.margin)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hp.lr, weight_decay=self.hp.weight_decay)
