"""The two evaluation protocols of the proposed split, and feature preprocessing.

``val``: fit on the classes of ``train_loc`` (minus a seeded, per-class held-out fraction that
serves as validation-seen for GZSL), evaluate on the classes of ``val_loc``. Used to choose
hyper-parameters, epochs and the calibration gamma.

``test``: fit on ``trainval_loc``, evaluate once on ``test_seen_loc`` + ``test_unseen_loc``.

The checks every loaded benchmark goes through live here too: the integrity of a protocol's
own splits, the invariants between the two protocols' splits (read as index arrays only), and
the removal of test images from the ``val`` protocol.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from zsl.data.errors import DataError
from zsl.data.types import PROTOCOL_KEYS, ZSLData
from zsl.data.types import ProtocolName as Protocol

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

    def transform_rows(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``transform(features[rows])``. A read-only in-memory matrix (a benchmark's
        features as read from its file) is L2-normalised whole once and reused: both
        protocols of a run take their rows from it (each row's norm does not depend on the
        other rows, so the numbers are the same)."""
        if self.kind == "l2" and not features.flags.writeable and type(features) is np.ndarray:
            return _normalised_whole(features)[rows]
        return self.transform(features[rows])

    def transform(self, features: np.ndarray) -> np.ndarray:
        if self.kind == "l2":
            return _l2_rows(features)
        if self.kind == "minmax":
            assert self.low is not None and self.scale is not None
            return ((features - self.low) / self.scale).astype(np.float32, copy=False)
        return features


#: (source, its rows L2-normalised) of the last read-only matrix normalised whole
_NORMALISED: list[tuple[np.ndarray, np.ndarray]] = []


def _normalised_whole(features: np.ndarray) -> np.ndarray:
    if not (_NORMALISED and _NORMALISED[0][0] is features):
        normalised = _l2_rows(features)
        normalised.setflags(write=False)
        _NORMALISED[:] = [(features, normalised)]
    return _NORMALISED[0][1]


#: rows normalised per block: the block's squares stay in cache instead of an N x D temporary
L2_BLOCK_ROWS = 256


def _l2_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32, block by block. Each row's norm is the same
    reduction whatever the block (the numbers equal one whole-array ``np.linalg.norm``)."""
    out = np.empty(features.shape, dtype=np.float32)
    for start in range(0, features.shape[0], L2_BLOCK_ROWS):
        block = features[start : start + L2_BLOCK_ROWS]
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        if not np.isfinite(norm).all():  # squares past float32's range: the norm in float64
            norm = np.linalg.norm(block.astype(np.float64), axis=1, keepdims=True)
        out[start : start + L2_BLOCK_ROWS] = block / np.maximum(norm, 1e-12)
    return out


# ----------------------------------------------------------------------------- checks


def _all_locs(data: ZSLData) -> dict[str, np.ndarray]:
    return {**data.guard_locs, **data.locs}


def _overlap(data: ZSLData, a: str, b: str) -> None:
    common = np.intersect1d(data.locs[a], data.locs[b])
    if common.size:
        raise DataError(
            f"{data.source}[{a!r}, {b!r}]",
            f"{common.size} images appear in both splits (first 1-based index {common[0] + 1})",
        )


def _class_leak(data: ZSLData, a: str, b: str, why: str) -> None:
    """Splits ``a`` and ``b`` must not share a class; the error counts each side's images so
    the misplaced one is easy to spot."""
    locs = _all_locs(data)
    in_a, in_b = data.labels[locs[a]], data.labels[locs[b]]
    leaked = np.intersect1d(in_a, in_b)
    if leaked.size:
        shown = ", ".join(
            f"{data.class_names[c]} ({int((in_a == c).sum())} images in {a}, "
            f"{int((in_b == c).sum())} in {b})"
            for c in leaked[:5]
        )
        hint = (
            "; are the indices 0-based? (read 1-based they leak)" if _zero_based(data, a, b) else ""
        )
        raise DataError(
            f"{data.source}[{a!r}, {b!r}]",
            f"{leaked.size} class(es) occur in both splits ({why}): {shown}{hint}",
        )


def _zero_based(data: ZSLData, a: str, b: str) -> bool:
    """Whether splits ``a`` and ``b`` stop sharing classes once read as 0-based (a file saved
    0-based that happens not to hold index 0 passes the range check)."""
    locs = _all_locs(data)
    shifted = [locs[key] + 1 for key in (a, b)]
    if any(int(s.max()) >= data.labels.size for s in shifted):
        return False
    classes = [np.unique(data.labels[s]) for s in shifted]
    return np.intersect1d(classes[0], classes[1]).size == 0


def check_split_integrity(data: ZSLData, protocol: Protocol) -> None:
    """Raise :class:`DataError` on any seen/unseen leakage between the protocol's splits."""
    if protocol == "test":
        _overlap(data, "trainval_loc", "test_seen_loc")
        _overlap(data, "trainval_loc", "test_unseen_loc")
        _overlap(data, "test_seen_loc", "test_unseen_loc")
        _class_leak(data, "trainval_loc", "test_unseen_loc", "unseen classes are never trained on")
        _class_leak(data, "test_seen_loc", "test_unseen_loc", "a class is either seen or unseen")
        orphan = np.setdiff1d(data.classes_of("test_seen_loc"), data.classes_of("trainval_loc"))
        if orphan.size:
            raise DataError(
                f"{data.source}['test_seen_loc']",
                f"{orphan.size} class(es) never appear in trainval_loc, so they are not seen: "
                + ", ".join(data.class_names[c] for c in orphan[:5]),
            )
    else:
        _overlap(data, "train_loc", "val_loc")
        _class_leak(data, "train_loc", "val_loc", "validation classes must not be trained on")


def _class_subset(data: ZSLData, a: str, b: str, why: str) -> None:
    """Every class of split ``a`` must occur in split ``b``."""
    locs = _all_locs(data)
    outside = np.setdiff1d(data.labels[locs[a]], data.labels[locs[b]])
    if outside.size:
        raise DataError(
            f"{data.source}[{a!r}, {b!r}]",
            f"{outside.size} class(es) of {a} never appear in {b} ({why}): "
            + ", ".join(data.class_names[c] for c in outside[:5]),
        )


def check_cross_splits(data: ZSLData) -> None:
    """The invariants between the two protocols' splits, from index arrays and labels only:
    each protocol's own checks (:func:`check_split_integrity`, whichever protocol runs),
    train/val classes are trainval classes and never test-unseen classes; test-seen classes
    are trainval classes. Skipped, with a warning, when the file lacks some of the keys."""
    locs = _all_locs(data)
    missing = [k for keys in PROTOCOL_KEYS.values() for k in keys if k not in locs]
    if missing:
        warnings.warn(
            f"{data.source}: no {', '.join(missing)}; the cross-split checks (validation "
            "classes are trainval classes, none is a test-unseen class) are skipped",
            stacklevel=3,
        )
        return
    _class_subset(data, "val_loc", "trainval_loc", "validation classes must be trainval classes")
    _class_subset(data, "train_loc", "trainval_loc", "train classes must be trainval classes")
    _class_leak(data, "train_loc", "test_unseen_loc", "test-unseen classes are never trained on")
    _class_leak(
        data, "val_loc", "test_unseen_loc", "validation classes must not be test-unseen classes"
    )
    _class_subset(data, "test_seen_loc", "trainval_loc", "test-seen classes are trainval classes")
    # both protocols' own checks, so a broken test split stops a run before its first fit
    everything = dataclasses.replace(data, locs=locs)
    check_split_integrity(everything, "val")
    check_split_integrity(everything, "test")


def exclude_test_images(data: ZSLData) -> ZSLData:
    """The val protocol without the images of ``test_seen_loc``/``test_unseen_loc``: they are
    removed from ``train_loc`` and ``val_loc`` (counts in ``removed_test_images``)."""
    test_keys = [k for k in ("test_seen_loc", "test_unseen_loc") if k in data.guard_locs]
    if not test_keys or not all(k in data.locs for k in ("train_loc", "val_loc")):
        return data
    test = np.unique(np.concatenate([data.guard_locs[k] for k in test_keys]))
    locs, removed = dict(data.locs), {}
    for key in ("train_loc", "val_loc"):
        keep = ~np.isin(locs[key], test)
        removed[key] = int((~keep).sum())
        locs[key] = locs[key][keep]
        if locs[key].size == 0:
            raise DataError(
                f"{data.source}[{key!r}]",
                f"every image is also a test image ({', '.join(test_keys)}); nothing is left "
                "for validation (data.exclude_test_from_val=false keeps the file's list)",
            )
    return dataclasses.replace(data, locs=locs, removed_test_images=removed)
