"""Loss functions of the compatibility family, as plain functions of scores and labels.

All take ``scores`` [B, C] (compatibility of each sample with each training class) and
``labels`` [B] (positions of the true class in the score columns).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _margins(scores: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Hinge terms max(0, margin + F(x, y') - F(x, y)) for y' != y, zero at y' = y."""
    true = scores.gather(1, labels[:, None])
    hinge = (margin + scores - true).clamp(min=0.0)
    return hinge.scatter(1, labels[:, None], 0.0)


def warp_rank_loss(scores: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """ALE's weighted approximate-rank loss (Akata et al., TPAMI 2016), batch mean.

    For each sample, r = number of classes violating the margin, the loss is
    ``beta_r / r * sum of hinge terms`` with ``beta_r = sum_{i<=r} 1/i`` (so that the top of
    the ranking matters most). Samples with no violation contribute 0.
    """
    hinge = _margins(scores, labels, margin)
    rank = (hinge > 0).sum(dim=1)
    harmonic = torch.cumsum(1.0 / torch.arange(1, scores.shape[1] + 1, device=scores.device), 0)
    beta = torch.where(rank > 0, harmonic[(rank - 1).clamp(min=0)], torch.zeros_like(hinge[:, 0]))
    weight = beta / rank.clamp(min=1)
    return (weight * hinge.sum(dim=1)).mean()


def hinge_rank_loss(scores: Tensor, labels: Tensor, margin: float = 0.1) -> Tensor:
    """DeViSE's hinge rank loss (Frome et al., NeurIPS 2013), batch mean of
    ``sum_{y' != y} max(0, margin - F(x, y) + F(x, y'))``."""
    return _margins(scores, labels, margin).sum(dim=1).mean()


def structured_hinge_loss(scores: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """SJE's structured max-margin loss (Akata et al., CVPR 2015), batch mean of
    ``max_{y'} (Delta(y, y') + F(x, y')) - F(x, y)`` with ``Delta(y, y') = margin * [y' != y]``:
    only the most violating class counts (0 when none violates the margin)."""
    return _margins(scores, labels, margin).amax(dim=1).mean()
