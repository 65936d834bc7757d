"""ESZSL: An embarrassingly simple approach to zero-shot learning (Romera-Paredes & Torr,
ICML 2015, https://proceedings.mlr.press/v37/romera-paredes15.html). Bilinear compatibility
x^T V s with the closed form V = (X X^T + gamma I)^-1 X Y S^T (S S^T + lambda I)^-1."""

from __future__ import annotations

import torch
from torch import Tensor

from zsl.models.base import ZSLModule
from zsl.models.classical.bilinear import Bilinear
from zsl.models.classical.components import FIT_CACHE, class_sums, fingerprint, gram


def eszsl_weights(
    features: Tensor,
    local_labels: Tensor,
    seen_semantics: Tensor,
    feature_reg: float,
    semantic_reg: float,
    negative_label: float = -1.0,
) -> Tensor:
    """The ESZSL closed form V [D, A] in float64.

    In the paper's notation X = ``features``^T (D x N), S = ``seen_semantics``^T (A x C) and
    Y (N x C) is 1 at each image's class and ``negative_label`` elsewhere (-1 in the paper).
    ``X Y`` is formed from class sums and the Gram matrix ``X X^T`` comes from the shared
    memo, so a grid over ``semantic_reg`` at fixed ``feature_reg`` costs one D x D solve.
    """
    n_seen = seen_semantics.shape[0]

    def feature_side() -> Tensor:  # (X X^T + gamma I)^-1 X Y, [D, C]
        sums = class_sums(features, local_labels, n_seen)  # (X Y_onehot)^T
        xy = (1.0 - negative_label) * sums.T + negative_label * sums.sum(0)[:, None]
        eye = torch.eye(xy.shape[0], dtype=torch.float64, device=xy.device)
        system = gram(features) + feature_reg * eye
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            return torch.cholesky_solve(xy, factor)
        return torch.linalg.solve(system, xy)  # not positive definite (feature_reg <= 0)

    key = ("eszsl", fingerprint(features, local_labels), n_seen, feature_reg, negative_label)
    left = FIT_CACHE.get(key, feature_side).to(features.device)
    s = seen_semantics.to(torch.float64).T  # A x C
    right = s @ s.T + semantic_reg * torch.eye(s.shape[0], dtype=torch.float64, device=s.device)
    # V = left S^T right^-1, with right symmetric: solve right V^T = (left S^T)^T
    return torch.linalg.solve(right, (left @ s.T).T).T


class ESZSL(ZSLModule):
    """Embarrassingly Simple Zero-Shot Learning (Romera-Paredes & Torr, ICML 2015).

    ``feature_reg`` is the paper's gamma (ridge on the feature side), ``semantic_reg`` its
    lambda (ridge on the attribute side); the xlsa17 grids are 10^k, k in -3..3.
    ``negative_label`` is the entry of Y for the wrong classes: -1 in the paper; 0 regresses
    one-hot targets, which avoids fitting the large constant part of a {-1, +1} code through
    non-negative, uncentred CNN features (see zsl/conf/model/eszsl.yaml).
    """

    closed_form = True

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        feature_reg: float = 1.0,
        semantic_reg: float = 1.0,
        negative_label: float = -1.0,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.net = Bilinear(self.feature_dim, self.n_attributes).requires_grad_(False)

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return self.net(features, class_semantics)

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        hp = self.hp
        weights = eszsl_weights(
            features,
            local_labels,
            seen_semantics,
            hp.feature_reg,
            hp.semantic_reg,
            hp.negative_label,
        )
        self.net.weight.copy_(weights.to(self.net.weight))
