"""DeViSE: A Deep Visual-Semantic Embedding Model (Frome et al., NeurIPS 2013,
https://papers.nips.cc/paper/5204-devise-a-deep-visual-semantic-embedding-model). A linear map
M of image features into the semantic space, F(x, y) = (M x) . phi(y), trained with the hinge
rank loss summed over all wrong classes."""

from __future__ import annotations

from zsl.models.classical.bilinear import BilinearRanking
from zsl.models.classical.losses import hinge_rank_loss


class DeViSE(BilinearRanking):
    """Deep Visual-Semantic Embedding (Frome et al., NeurIPS 2013) on fixed CNN features.

    (M x) . phi(y) = x^T M^T phi(y) is the bilinear form of
    :class:`~zsl.models.classical.bilinear.Bilinear`; what sets DeViSE apart from ALE and SJE
    is the loss, which sums every margin violation, and its margin of 0.1 (the paper's).
    """

    loss = staticmethod(hinge_rank_loss)

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        margin: float = 0.1,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes, lr, weight_decay, margin)
