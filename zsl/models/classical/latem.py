"""LATEM: Latent Embeddings for Zero-shot Classification (Xian et al., CVPR 2016,
https://arxiv.org/abs/1603.08895). K bilinear maps, F(x, y) = max_k x^T W_k phi(y): each image
-class pair picks its own map. Trained with the ranking (structured max-margin) loss on F."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsl.models.classical.components import RankingModel
from zsl.models.classical.losses import structured_hinge_loss
from zsl.models.products import mm


class LatentBilinear(nn.Module):
    """F(x, y) = max_k x^T W_k phi(y) for features [B, D] and class semantics [C, A]."""

    def __init__(self, feature_dim: int, n_attributes: int, n_maps: int) -> None:
        super().__init__()
        std = feature_dim**-0.5
        self.weight = nn.Parameter(torch.randn(n_maps, feature_dim, n_attributes) * std)

    def map_scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        """x^T W_k phi(y) for every map: [B, K, C], in the cheaper association order (see
        :func:`zsl.models.classical.bilinear.bilinear_scores`)."""
        (b, d), (a, c) = features.shape, (self.weight.shape[2], class_semantics.shape[0])
        maps = self.weight.unbind(0)  # one product per map (float32 CPU: oneDNN, see mm)
        if d * c * (a + b) < b * a * (d + c):
            return torch.stack([mm(features, mm(w, class_semantics.T)) for w in maps], dim=1)
        projected = torch.stack([mm(features, w) for w in maps], dim=1)  # [B, K, A]
        return mm(projected.flatten(0, 1), class_semantics.T).view(b, len(maps), c)

    def forward(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return self.map_scores(features, class_semantics).amax(dim=1)


class LATEM(RankingModel):
    """Latent Embeddings (Xian et al., CVPR 2016); ``n_maps`` is the paper's K. The gradient
    of the max reaches only the map that wins each image-class pair, as in the paper's SGD."""

    loss = staticmethod(structured_hinge_loss)

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        n_maps: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        if not (isinstance(n_maps, int) and n_maps >= 1):
            raise ValueError(f"LATEM: n_maps must be an integer >= 1, got {n_maps}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = LatentBilinear(self.feature_dim, self.n_attributes, self.hp.n_maps)
