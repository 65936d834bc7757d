"""Parsing and validation of the arrays of an xlsa17-layout benchmark: 1-based MATLAB index
columns, the class semantics matrix with its class names, and the features with their labels
(from a ``.mat`` feature file, cached, or from a memory-mapped ``.npy`` pair). Everything
returned is 0-based; every problem is a :class:`~zsl.data.errors.DataError` naming the file
and key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zsl.data.errors import DataError
from zsl.data.formats.matfile import (
    check_finite,
    check_informative,
    get_key,
    numeric,
    read_mat,
    strings,
)
from zsl.data.formats.xlsa17_files import labels_path

__all__ = ["index_vector", "mat_features", "npy_features", "read_semantics", "split_vector"]


def index_vector(raw: Any, where: str, upper: int, what: str = "") -> np.ndarray:
    """1-based MATLAB index column -> 0-based int64 vector, checked against [1, upper]
    (``what`` says where ``upper`` comes from)."""
    arr = np.asarray(raw).ravel()
    if arr.size == 0:
        raise DataError(where, "is empty")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(where, f"expected numeric indices, got dtype {arr.dtype}")
    as_int = arr.astype(np.int64)
    if not np.array_equal(as_int, arr):
        raise DataError(where, "indices are not integers")
    lo, hi = int(as_int.min()), int(as_int.max())
    if lo < 1 or hi > upper:
        hint = f" ({what})" if what else ""
        if lo == 0:
            hint += "; 0 found: MATLAB indices are 1-based, was the file saved 0-based?"
        raise DataError(
            where, f"1-based indices must lie in [1, {upper}], found range [{lo}, {hi}]{hint}"
        )
    return as_int - 1


def split_vector(raw: Any, where: str, n_images: int, feature_file: str) -> np.ndarray:
    """A split's image indices: in range and each image listed once."""
    idx = index_vector(raw, where, n_images, f"{n_images} images in {feature_file}")
    values, counts = np.unique(idx, return_counts=True)
    if values.size != idx.size:
        first = int(values[counts > 1][0]) + 1
        raise DataError(
            where,
            f"{idx.size - values.size} duplicate image indices (first: 1-based index {first}); "
            "every image must be listed once",
        )
    return idx


def read_semantics(
    splits: Mapping[str, Any], split_path: Path, semantics_key: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The A x C semantics matrix (float64) and the class names (FLO ships without names)."""
    att_where = f"{split_path}[{semantics_key!r}]"
    att = numeric(get_key(splits, semantics_key, split_path), att_where).astype(np.float64)
    if att.ndim != 2:
        raise DataError(
            f"{split_path}[{semantics_key!r}]", f"expected a 2-D matrix, got {att.shape}"
        )
    check_finite(att, f"{split_path}[{semantics_key!r}]")
    names = _class_names(splits, att.shape, split_path, att_where)
    empty = np.flatnonzero(~np.any(att != 0, axis=0))
    if empty.size:
        raise DataError(
            att_where,
            f"{empty.size} class(es) have an all-zero semantic vector, which no model can score "
            f"or normalise: {', '.join(f'{names[c]} (column {c + 1})' for c in empty[:5])}",
        )
    _distinct_classes(att, names, att_where)

    return att, names


def _class_names(
    splits: Mapping[str, Any], att_shape: tuple[int, ...], split_path: Path, att_where: str
) -> tuple[str, ...]:
    """``allclasses_names``, one distinct name per column of the A x C matrix (FLO ships
    without names: ``class_001``, ...)."""
    n_classes = att_shape[1]
    if "allclasses_names" not in splits:  # FLO ships without names
        return tuple(f"class_{i + 1:03d}" for i in range(n_classes))
    names = strings(splits["allclasses_names"])
    if len(names) != n_classes:
        transposed = att_shape[0] == len(names)
        raise DataError(
            att_where,
            f"attribute matrix has {n_classes} class columns but allclasses_names lists "
            f"{len(names)} classes"
            + (" (it looks transposed: the file must hold A x C)" if transposed else ""),
        )
    seen_names: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen_names:
            raise DataError(
                f"{split_path}['allclasses_names']",
                f"class name {name!r} is listed twice (columns {seen_names[name] + 1} and "
                f"{i + 1}); every class needs its own name",
            )
        seen_names[name] = i
    return names


def _distinct_classes(att: np.ndarray, names: tuple[str, ...], where: str) -> None:
    """Two classes with the same semantic vector cannot be told apart by any ZSL model."""
    _, first, inverse = np.unique(att.T, axis=0, return_index=True, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    for column in range(att.shape[1]):
        twin = int(first[inverse[column]])
        if twin != column:
            raise DataError(
                where,
                f"classes {names[twin]} and {names[column]} (columns {twin + 1} and "
                f"{column + 1}) have identical semantic vectors: no model can tell them apart",
            )


def _features_and_labels(
    feats: Mapping[str, Any], feat_path: Path, n_classes: int, classes_from: str
) -> tuple[np.ndarray, np.ndarray]:
    """Features as N x D float32 rows and 0-based labels, checked against the class count."""
    features = numeric(get_key(feats, "features", feat_path), f"{feat_path}['features']")
    if features.ndim != 2:
        raise DataError(f"{feat_path}['features']", f"expected D x N, got shape {features.shape}")
    raw_labels = get_key(feats, "labels", feat_path)
    n_images = features.shape[1]
    if np.asarray(raw_labels).size != n_images:
        raise DataError(
            f"{feat_path}['labels']",
            f"{np.asarray(raw_labels).size} labels but 'features' has {n_images} columns (images)",
        )
    labels = index_vector(
        raw_labels,
        f"{feat_path}['labels']",
        n_classes,
        f"{n_classes} classes = columns of {classes_from}",
    )
    features = features.astype(np.float32, copy=False)
    check_finite(features, f"{feat_path}['features']")  # before transposing: index as in the file
    features = np.ascontiguousarray(features.T)
    check_informative(features, f"{feat_path}['features']")

    return features, labels


#: the last feature file read: both protocols of a run (and ``zsl-data verify``) read the same
#: file, which then costs one read and one copy in memory; the arrays are never written to
_FEATURE_CACHE: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def mat_features(
    feat_path: Path, n_classes: int, classes_from: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Features, 0-based labels and image files of a ``.mat`` feature file, read once per
    (file, inode, size, modification and change times, class count)."""
    stat = feat_path.stat() if feat_path.is_file() else None
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns) if stat else None
    full = (str(feat_path.resolve()), stamp, n_classes, classes_from)
    if stat is None or full not in _FEATURE_CACHE:
        feats = read_mat(feat_path)
        features, labels = _features_and_labels(feats, feat_path, n_classes, classes_from)
        features.setflags(write=False)
        image_files = strings(feats["image_files"]) if "image_files" in feats else None
        _FEATURE_CACHE.clear()
        _FEATURE_CACHE[full] = (features, labels, image_files)
    features, labels, image_files = _FEATURE_CACHE[full]
    return features, labels, image_files


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise DataError(str(path), f"cannot read .npy file ({type(err).__name__}: {err})") from None


def npy_features(
    feat_path: Path, n_classes: int, classes_from: str
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped N x D float32 rows and 0-based labels of a ``.npy`` feature file."""
    features = _load_npy(feat_path, mmap=True)
    if features.ndim != 2 or features.dtype != np.float32:
        raise DataError(
            str(feat_path),
            f"expected N x D float32 rows, got shape {features.shape} of {features.dtype}",
        )
    label_path = labels_path(feat_path)
    raw_labels = _load_npy(label_path, mmap=False)
    if raw_labels.size != features.shape[0]:
        raise DataError(
            str(label_path),
            f"{raw_labels.size} labels but {feat_path.name} has {features.shape[0]} rows (images)",
        )
    labels = index_vector(
        raw_labels, str(label_path), n_classes, f"{n_classes} classes = columns of {classes_from}"
    )
    check_finite(features, str(feat_path))
    check_informative(features, str(feat_path))
    return features, labels
