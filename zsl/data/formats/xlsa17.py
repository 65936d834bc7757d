"""Loader for the xlsa17 "proposed split" format (Xian et al., TPAMI 2018).

A dataset folder holds ``att_splits.mat`` (class semantics and split indices) and a feature
file laid out like ``res101.mat`` (``features`` D x N, ``labels`` N x 1, ``image_files``).
All MATLAB indices are 1-based; everything returned here is 0-based.

A feature file ending in ``.npy`` is read memory-mapped instead of loaded: ``<stem>.npy``
holds the features as N x D rows (float32, C order) and ``<stem>_labels.npy`` the N labels,
1-based as in ``res101.mat`` (:func:`write_features_npy` writes the pair). Only the rows a
split touches are ever read, so benchmarks larger than memory (ImageNet-scale) can be used.

Each protocol uses only its own split keys. The other protocol's keys are read as index arrays
(never their features) to check the invariants that make the two protocols honest
(:func:`zsl.data.splits.check_cross_splits`): validation classes are trainval classes,
train/val classes never meet test-unseen classes, test-seen classes are trainval classes. In the
``val`` protocol, images listed in ``test_seen_loc`` or ``test_unseen_loc`` are removed from
``train_loc``/``val_loc`` by default (the real xlsa17 files of CUB, SUN, AWA1, AWA2 and FLO
index every image of the train/val classes there, test-seen images included); the counts are
kept in ``ZSLData.removed_test_images``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsl.data.errors import DataError
from zsl.data.formats.matfile import get_key, loc_column, matlab_cell, read_mat, savemat_atomic
from zsl.data.formats.xlsa17_arrays import mat_features, npy_features, read_semantics, split_vector
from zsl.data.formats.xlsa17_files import (
    SPLIT_FILES,
    MissingFeatureFile,
    check_feature_file,
    feature_files,
    is_synthetic,
    labels_path,
    provenance_path,
)
from zsl.data.splits import check_cross_splits, check_split_integrity, exclude_test_images
from zsl.data.types import PROTOCOL_KEYS, ProtocolName, ZSLData

__all__ = [
    "SPLIT_FILES",
    "MissingFeatureFile",
    "Protocol",
    "check_feature_file",
    "feature_files",
    "is_synthetic",
    "labels_path",
    "load_xlsa17",
    "provenance_path",
    "read",
    "write_features",
    "write_features_npy",
    "write_splits",
]

Protocol = ProtocolName


# ----------------------------------------------------------------------------- reading


def read(
    root: str | Path,
    dataset: str,
    feature_file: str = "res101.mat",
    protocol: ProtocolName = "test",
    semantics_key: str = "att",
    exclude_test_from_val: bool = True,
    *,
    split_file: str = "att_splits.mat",
) -> ZSLData:
    """Read and validate ``<root>/<dataset>/{split_file, feature_file}`` for one protocol
    (the reader of the format registry, :func:`zsl.data.formats.read_dataset`).

    ``exclude_test_from_val`` (val protocol): drop test images from ``train_loc`` and
    ``val_loc`` (False keeps the files' literal lists, for comparison with papers)."""
    if protocol not in PROTOCOL_KEYS:
        raise DataError("data.protocol", f"unknown protocol {protocol!r}; use 'val' or 'test'")
    folder = Path(root) / dataset
    if not folder.is_dir():
        raise DataError(str(folder), "dataset folder not found (check data.root and data.name)")
    split_path = folder / split_file
    # a missing feature file is named (with the ones that are there) before any file is read
    feat_path = check_feature_file(root, dataset, feature_file, split_file)
    splits = read_mat(split_path)
    att, names = read_semantics(splits, split_path, semantics_key)
    classes_from = f"{split_path.name}[{semantics_key!r}]"
    features, labels, image_files = _read_features(feat_path, att.shape[1], classes_from)
    locs, guard = _read_locs(splits, split_path, protocol, features.shape[0], feat_path.name)
    data = ZSLData(
        name=dataset,
        features=features,
        labels=labels,
        semantics=np.ascontiguousarray(att.T, dtype=np.float32),
        class_names=names,
        locs=locs,
        image_files=image_files,
        source=str(split_path),
        guard_locs=guard,
        synthetic_features=is_synthetic(feat_path),
    )
    check_split_integrity(data, protocol)
    check_cross_splits(data)
    if protocol == "val" and exclude_test_from_val:
        data = exclude_test_images(data)
    return data


#: the reader under its historical name (the same function)
def load_xlsa17(
    root: str | Path,
    dataset: str,
    feature_file: str = "res101.mat",
    protocol: ProtocolName = "test",
    semantics_key: str = "att",
    split_file: str = "att_splits.mat",
    exclude_test_from_val: bool = True,
) -> ZSLData:
    """:func:`read` with the argument order of the library's earlier releases (``split_file``
    before ``exclude_test_from_val``)."""
    return read(
        root,
        dataset,
        feature_file,
        protocol,
        semantics_key,
        exclude_test_from_val,
        split_file=split_file,
    )


def _read_features(
    feat_path: Path, n_classes: int, classes_from: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Features (N x D), 0-based labels and image files (``None`` for ``.npy`` features, which
    are memory-mapped) of a feature file."""
    if feat_path.suffix == ".npy":
        features, labels = npy_features(feat_path, n_classes, classes_from)
        return features, labels, None
    return mat_features(feat_path, n_classes, classes_from)


def _read_locs(
    splits: Mapping[str, Any],
    split_path: Path,
    protocol: ProtocolName,
    n_images: int,
    feature_file: str,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The protocol's own 0-based splits, and the other protocol's splits present in the file
    (index arrays only, to check the invariants between the two protocols)."""
    locs = {
        key: split_vector(
            get_key(splits, key, split_path), f"{split_path}[{key!r}]", n_images, feature_file
        )
        for key in PROTOCOL_KEYS[protocol]
    }
    other = "test" if protocol == "val" else "val"
    guard = {
        key: split_vector(splits[key], f"{split_path}[{key!r}]", n_images, feature_file)
        for key in PROTOCOL_KEYS[other]
        if key in splits
    }
    return locs, guard


# ----------------------------------------------------------------------------- writing


def write_splits(
    folder: Path,
    att: np.ndarray,
    class_names: Sequence[str],
    locs0: Mapping[str, np.ndarray],
    extra: Mapping[str, Any] | None = None,
    split_file: str = "att_splits.mat",
) -> Path:
    """Write ``<folder>/att_splits.mat``: ``att`` (A x C), ``allclasses_names`` and every split
    of ``locs0`` (0-based indices, written 1-based), plus ``extra`` keys."""
    content: dict[str, Any] = {
        "att": np.asarray(att, dtype=np.float64),
        "allclasses_names": matlab_cell(list(class_names)),
        **{key: loc_column(idx) for key, idx in locs0.items()},
        **dict(extra or {}),
    }
    path = Path(folder) / split_file
    savemat_atomic(path, content)
    return path


def write_features(
    path: Path,
    features: np.ndarray,
    labels0: np.ndarray,
    image_files: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a feature file: ``features`` D x N (rows of ``features`` are images),
    ``labels`` N x 1 (written 1-based), optional ``image_files`` and ``extra`` keys."""
    content: dict[str, Any] = {
        "features": np.ascontiguousarray(np.asarray(features, dtype=np.float32).T),
        "labels": (np.asarray(labels0, dtype=np.int64) + 1).reshape(-1, 1).astype(np.float64),
        **dict(extra or {}),
    }
    if image_files is not None:
        content["image_files"] = matlab_cell(list(image_files))
    savemat_atomic(Path(path), content)
    return Path(path)


def write_features_npy(path: Path, features: np.ndarray, labels0: np.ndarray) -> Path:
    """Write a memory-mappable feature file: ``path`` (``.npy``, N x D float32 rows) and
    ``<stem>_labels.npy`` (labels written 1-based). Each file is renamed into place whole."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: a memory-mapped feature file must end in .npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, array in (
        (path, np.ascontiguousarray(features, dtype=np.float32)),
        (labels_path(path), np.asarray(labels0, dtype=np.int64).ravel() + 1),
    ):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "xb") as handle:
                np.save(handle, array)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path
