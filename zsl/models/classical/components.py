"""Pieces shared by the classical compatibility models.

* :class:`RankingModel`: the iterative pattern of ALE-like models (a compatibility network
  scored against class semantics, a ranking loss on seen classes, Adam).
* Closed-form helpers: :func:`gram` (``X^T X`` with a BLAS rank-k update), :func:`class_sums`
  and :data:`FIT_CACHE`, a small memo of expensive intermediates keyed by tensor *content*.
  The selection refits a closed-form model at every grid point on identical training data;
  the memo lets those fits share the Gram matrix and the solves that depend on one
  hyper-parameter only, without the CLI knowing about it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import blas
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.base import ZSLModule
from zsl.models.optim import adam as fused_adam

T = TypeVar("T")


class RankingModel(ZSLModule):
    """An iterative model: ``self.net(features, class_semantics) -> [B, C]`` trained with the
    ranking loss ``loss(scores, labels, margin)`` of the subclass, optimised by Adam with the
    ``lr`` and ``weight_decay`` hyper-parameters."""

    #: ``loss(scores [B, C], labels [B], margin) -> scalar``, e.g. ``staticmethod(warp_rank_loss)``
    loss: ClassVar[staticmethod[[Tensor, Tensor, float], Tensor]]
    #: grid points train together in one pass (zsl.run.stacked): no randomness in training,
    #: one Adam, hyper-parameters that do not change shapes
    stackable: ClassVar[bool] = True
    net: nn.Module

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        return self.net(features, class_semantics)

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        scores = self.scores(batch.features, seen_semantics)
        return self.loss(scores, local_labels, self.hp.margin)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self)


class SeenSoftmax:
    """Mixin of the models built on a softmax over the seen classes (CONSE, IAP): a linear
    ``self.classifier`` with one output per global class id, of which only the seen classes'
    are read (and so trained), with cross-entropy as the training loss."""

    classifier: nn.Linear
    seen_ids: Tensor

    def seen_logits(self, features: Tensor) -> Tensor:
        """Logits over the seen classes [B, S] (columns in ``seen_ids`` order)."""
        return self.classifier(features)[:, self.seen_ids]

    def seen_probabilities(self, features: Tensor) -> Tensor:
        """Softmax over the seen classes [B, S] (columns in ``seen_ids`` order)."""
        return torch.softmax(self.seen_logits(features), dim=1)

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        return F.cross_entropy(self.seen_logits(batch.features), local_labels)


def median_distance(points: Tensor) -> float:
    """The median pairwise Euclidean distance between the rows of ``points`` (the mean of the
    two middle ones for an even count, as NumPy's), or 1 when it is 0 or undefined: a scale
    that is always safe to divide by."""
    distances = torch.pdist(points)
    median = float(distances.quantile(0.5)) if distances.numel() else 1.0
    return median if median > 0 else 1.0


def adam(model: ZSLModule) -> torch.optim.Optimizer:
    """Adam over the trainable parameters with the model's ``lr`` and ``weight_decay``; the
    fused kernel where available (:func:`zsl.models.optim.adam`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return fused_adam(params, float(model.hp.lr), weight_decay=float(model.hp.weight_decay))


# -- closed-form helpers --------------------------------------------------------------------


def fingerprint(*tensors: Tensor) -> str:
    """A digest of the shapes, dtypes and exact contents of ``tensors``."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


class FitCache:
    """A least-recently-used memo of closed-form intermediates.

    Keys must identify the result exactly: include :func:`fingerprint` of every tensor the
    result depends on and every hyper-parameter it depends on. Results are returned as
    stored (treat them as read-only).
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        value = compute()
        self._store[key] = value
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return value

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


#: shared by ESZSL and SAE (at most a Gram matrix and a few D x C / A x D solutions per entry)
FIT_CACHE = FitCache(max_entries=4)


def gram(features: Tensor) -> Tensor:
    """``X^T X`` [D, D] in float64 for features ``X`` [N, D].

    Uses one BLAS symmetric rank-k update (half the work of a matrix product) in the
    features' own precision, so float32 features give a float32-accumulated Gram matrix
    (BLAS speed; its rounding is far below any useful ridge) and float64 features an exact
    one. Memoised in :data:`FIT_CACHE` by content.
    """

    def compute() -> Tensor:
        x = features.detach().cpu().numpy()
        x = x if x.dtype == np.float64 else x.astype(np.float32, copy=False)
        syrk = blas.dsyrk if x.dtype == np.float64 else blas.ssyrk
        # x.T is a Fortran-ordered [D, N] view: syrk(trans=0) gives (x.T)(x.T)^T without a copy
        upper = torch.from_numpy(syrk(1.0, x.T, trans=0))
        full = upper.triu() + upper.triu(1).T
        return full.to(torch.float64)

    return FIT_CACHE.get(("gram", fingerprint(features)), compute).to(features.device)


def class_sums(features: Tensor, local_labels: Tensor, n_classes: int) -> Tensor:
    """Per-class sums of float64 features [n_classes, D] (``Y^T X`` for one-hot ``Y``)."""
    out = features.new_zeros(n_classes, features.shape[1], dtype=torch.float64)
    return out.index_add_(0, local_labels, features.to(torch.float64))


def class_counts(local_labels: Tensor, n_classes: int) -> Tensor:
    """Number of training images per class, float64 [n_classes]."""
    return torch.bincount(local_labels, minlength=n_classes).to(torch.float64)
