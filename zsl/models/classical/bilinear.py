"""The bilinear compatibility F(x, y) = x^T W phi(y) and the ranking models built on it.

ALE (Akata et al., TPAMI 2016), DeViSE (Frome et al., NeurIPS 2013) and SJE (Akata et al.,
CVPR 2015) share the model -- one matrix W [D, A], initialised N(0, 1/D), trained by Adam on
a ranking loss over the seen classes -- and differ only in that loss and its default margin:
:class:`BilinearRanking` is the model, each method's module names its loss. ESZSL reuses
:class:`Bilinear` for its closed-form solution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zsl.models.classical.components import RankingModel
from zsl.models.products import mm

__all__ = ["Bilinear", "BilinearRanking", "bilinear_scores"]


class Bilinear(nn.Module):
    """F(x, y) = x^T W phi(y) for features [B, D] and class semantics [C, A]."""

    def __init__(self, feature_dim: int, n_attributes: int, init_std: float | None = None) -> None:
        super().__init__()
        std = init_std if init_std is not None else feature_dim**-0.5
        self.weight = nn.Parameter(torch.randn(feature_dim, n_attributes) * std)

    def forward(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return bilinear_scores(features, self.weight, class_semantics)


def bilinear_scores(features: Tensor, weight: Tensor, class_semantics: Tensor) -> Tensor:
    """``features [B, D] @ weight [D, A] @ class_semantics.T [A, C]`` in the cheaper order:
    ``(X W) S^T`` costs ``B·A·(D + C)`` multiply-adds, ``X (W S^T)`` costs ``D·C·(A + B)``; the
    second wins when there are fewer classes than attributes and the batch is large (an
    evaluation pass over CUB's 312 attributes and 150 classes: 2x fewer). Float32 CPU products
    go through oneDNN (:func:`zsl.models.products.mm`)."""
    (b, d), (a, c) = features.shape, (weight.shape[1], class_semantics.shape[0])
    if d * c * (a + b) < b * a * (d + c):
        return mm(features, mm(weight, class_semantics.T))
    return mm(mm(features, weight), class_semantics.T)


class BilinearRanking(RankingModel):
    """A :class:`Bilinear` compatibility trained with the subclass's ranking ``loss``: the
    common model of ALE (Akata et al., TPAMI 2016), DeViSE (Frome et al., NeurIPS 2013) and
    SJE (Akata et al., CVPR 2015).

    A subclass sets ``loss = staticmethod(<loss>(scores, labels, margin))``; a subclass whose
    default margin is not 1 overrides ``__init__`` with that default only.
    """

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 1.0,
    ) -> None:
        """``lr`` and ``weight_decay`` of Adam, ``margin`` of the ranking loss."""
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = Bilinear(self.feature_dim, self.n_attributes)
