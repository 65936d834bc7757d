"""The two evaluation protocols of the proposed split, and feature preprocessing.

``val``: fit on the classes of ``train_loc`` (minus a seeded, per-class held-out fraction that
serves as validation-seen for GZSL), evaluate on the classes of ``val_loc``. Used to choose
hyper-parameters, epochs and the calibration gamma.

``test``: fit on ``trainval_loc``, evaluate once on ``test_seen_loc`` + ``test_unseen_loc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from zsl.data.errors import DataError
from zsl.data.types import ProtocolName as Protocol
from zsl.data.types import ZSLData

Preprocess = Literal["none", "l2", "minmax"]


@dataclass(frozen=True)
class ProtocolSplit:
    """Image indices and class ids (global, sorted) of one protocol."""

    protocol: Protocol
    train_idx: np.ndarray
    eval_seen_idx: np.ndarray
    eval_unseen_idx: np.ndarray
    seen_classes: np.ndarray
    unseen_classes: np.ndarray

    @property
    def eval_idx(self) -> np.ndarray:
        return np.concatenate([self.eval_seen_idx, self.eval_unseen_idx])


def _hold_out(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``idx``: a seeded ``fraction`` of every class (at least one image of
    classes with two or more images) is held out."""
    rng = np.random.default_rng(seed)
    held = np.zeros(idx.size, dtype=bool)
    for cls in np.unique(labels[idx]):
        members = np.flatnonzero(labels[idx] == cls)
        if members.size < 2:
            continue
        k = max(1, int(round(fraction * members.size)))
        held[rng.choice(members, size=k, replace=False)] = True
    return held


def make_split(
    data: ZSLData, protocol: Protocol, val_seen_fraction: float = 0.2, seed: int = 0
) -> ProtocolSplit:
    """Build the protocol's split and assert its guarantees (seen-only training images)."""
    if protocol == "test":
        train = data.locs["trainval_loc"]
        eval_seen = data.locs["test_seen_loc"]
        eval_unseen = data.locs["test_unseen_loc"]
    elif protocol == "val":
        if not 0.0 < val_seen_fraction < 1.0:
            raise DataError("data.val_seen_fraction", f"must be in (0, 1), got {val_seen_fraction}")
        pool = data.locs["train_loc"]
        held = _hold_out(pool, data.labels, val_seen_fraction, seed)
        train, eval_seen = pool[~held], pool[held]
        eval_unseen = data.locs["val_loc"]
    else:
        raise DataError("data.protocol", f"unknown protocol {protocol!r}; use 'val' or 'test'")
    split = ProtocolSplit(
        protocol=protocol,
        train_idx=np.sort(train),
        eval_seen_idx=np.sort(eval_seen),
        eval_unseen_idx=np.sort(eval_unseen),
        seen_classes=np.unique(data.labels[train]),
        unseen_classes=np.unique(data.labels[eval_unseen]),
    )
    assert_no_leakage(data, split)
    return split


def assert_no_leakage(data: ZSLData, split: ProtocolSplit) -> None:
    """Raise if any training image is of an unseen class or shares an image with evaluation."""
    where = f"{data.name} ({split.protocol} protocol)"
    if np.intersect1d(split.seen_classes, split.unseen_classes).size:
        raise DataError(where, "seen and unseen class sets overlap")
    if np.isin(data.labels[split.train_idx], split.unseen_classes).any():
        raise DataError(where, "training images include unseen classes")
    if np.intersect1d(split.train_idx, split.eval_idx).size:
        raise DataError(where, "training and evaluation images overlap")
    if not np.isin(data.labels[split.eval_seen_idx], split.seen_classes).all():
        raise DataError(where, "seen evaluation images include classes never trained on")


@dataclass(frozen=True)
class FeatureScaler:
    """Feature preprocessing fitted on training features only."""

    kind: Preprocess
    low: np.ndarray | None = None
    scale: np.ndarray | None = None

    @classmethod
    def fit(cls, kind: Preprocess, train_features: np.ndarray) -> FeatureScaler:
        if kind in ("none", "l2"):
            return cls(kind)
        if kind == "minmax":
            low = train_features.min(axis=0)
            span = train_features.max(axis=0) - low
            return cls(kind, low, np.where(span > 0, span, 1.0).astype(np.float32))
        raise DataError(
            "data.preprocess", f"unknown preprocessing {kind!r}; use none, l2 or minmax"
        )

    def transform(self, features: np.ndarray) -> np.ndarray:
        if self.kind == "l2":
            norm = np.linalg.norm(features, axis=1, keepdims=True)
            return (features / np.maximum(norm, 1e-12)).astype(np.float32)
        if self.kind == "minmax":
            assert self.low is not None and self.scale is not None
            return ((features - self.low) / self.scale).astype(np.float32)
        return features
