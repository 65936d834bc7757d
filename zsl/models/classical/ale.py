"""ALE: Label-Embedding for Image Classification (Akata et al., TPAMI 2016,
https://arxiv.org/abs/1503.08677). Bilinear compatibility F(x, y) = x^T W phi(y) trained with
the weighted approximate-rank (WARP) loss."""

from __future__ import annotations

from zsl.models.classical.bilinear import Bilinear, BilinearRanking, bilinear_scores
from zsl.models.classical.losses import warp_rank_loss

__all__ = ["ALE", "Bilinear", "bilinear_scores"]


class ALE(BilinearRanking):
    """Attribute Label Embedding (Akata et al., TPAMI 2016): the WARP loss, margin 1."""

    loss = staticmethod(warp_rank_loss)
