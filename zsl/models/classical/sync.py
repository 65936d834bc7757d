"""SYNC: "Synthesized Classifiers for Zero-Shot Learning" (Changpinyo, Chao, Gong & Sha,
CVPR 2016, https://arxiv.org/abs/1603.00550).

Phantom classes with semantic vectors b_r and linear classifiers v_r span the classifier
space; every real class c, seen or unseen, gets the classifier
``w_c = sum_r s_cr v_r`` with bipartite-graph weights
``s_cr = exp(-scale |a_c - b_r|^2) / sum_r' exp(-scale |a_c - b_r'|^2)``. As in the paper's
released code, the phantom classes are the seen classes (b_r = a_r, R = S), class semantics
are L2-normalised and divided by the median distance between seen classes, and training
follows the code's fast route: the seen classes' classifiers W_s = S_ss V are learned directly
with the one-versus-other squared hinge loss (the paper's ``o-vs-o``), and the phantom bases
are their closed-form solve V = S_ss^-1 W_s. Every other classifier is synthesised from them,
W = S V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.classical.components import adam, median_distance


def graph_weights(classes: Tensor, phantoms: Tensor, scale: float) -> Tensor:
    """Bipartite-graph weights s [C, R]: a softmax over phantoms of ``-scale |a_c - b_r|^2``."""
    return torch.softmax(-scale * torch.cdist(classes, phantoms).square(), dim=1)


def one_vs_other_squared_hinge(scores: Tensor, local_labels: Tensor) -> Tensor:
    """Mean over images and classes of ``max(0, 1 - y_nc score_nc)^2`` with y = +1 for the
    image's class and -1 for every other class (scores [B, S], labels in 0..S-1)."""
    signs = torch.full_like(scores, -1.0)
    signs.scatter_(1, local_labels[:, None], 1.0)
    return F.relu(1.0 - signs * scores).square().mean()


class SYNC(ZSLModule):
    """Synthesized classifiers (Changpinyo et al., CVPR 2016), ``o-vs-o`` variant.

    ``scale`` is the paper's 1/sigma^2 (in units of the median seen-class distance, squared),
    ``weight_decay`` the lambda on the seen classifiers (the released code's regulariser).
    ``median_distance`` (a buffer set when the fit starts, from seen classes only) normalises
    the class semantics.
    """

    median_distance: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        scale: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"SYNC: scale must be positive, got {scale}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        # one classifier per global class id; only the seen classes' rows are trained
        self.seen_classifiers = nn.Parameter(torch.zeros(self.n_classes, self.feature_dim))
        self.register_buffer("median_distance", torch.ones(()))

    def normalise(self, class_semantics: Tensor) -> Tensor:
        """L2-normalised rows divided by the seen classes' median pairwise distance."""
        return F.normalize(class_semantics, dim=1) / self.median_distance

    def on_fit_start(self) -> None:
        self.median_distance.fill_(median_distance(F.normalize(self.seen_semantics(), dim=1)))

    def phantom_bases(self) -> Tensor:
        """The phantom classifiers V [S, D] = S_ss^-1 W_s (least squares if S_ss is singular)."""
        phantoms = self.normalise(self.semantics[self.seen_ids])
        seen_weights = graph_weights(phantoms, phantoms, self.hp.scale).to(torch.float64)
        learned = self.seen_classifiers[self.seen_ids].to(torch.float64)
        bases = torch.linalg.lstsq(seen_weights, learned, driver="gelsd").solution
        return bases.to(self.seen_classifiers.dtype)

    def classifiers(self, class_semantics: Tensor) -> Tensor:
        """Synthesised classifiers w_c = sum_r s_cr v_r [C, D] for these classes."""
        phantoms = self.normalise(self.semantics[self.seen_ids])
        weights = graph_weights(self.normalise(class_semantics), phantoms, self.hp.scale)
        return weights @ self.phantom_bases()

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return features @ self.classifiers(class_semantics).T

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        # on the seen classes the synthesised classifiers are the learned ones (S_ss S_ss^-1 W_s)
        scores = batch.features @ self.seen_classifiers[self.seen_ids].T
        return one_vs_other_squared_hinge(scores, local_labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)
