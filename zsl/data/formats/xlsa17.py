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

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsl.data.errors import DataError
from zsl.data.formats.matfile import (
    check_finite,
    check_informative,
    get_key,
    loc_column,
    matlab_cell,
    numeric,
    read_mat,
    savemat_atomic,
    strings,
)
from zsl.data.splits import check_cross_splits, check_split_integrity, exclude_test_images
from zsl.data.types import PROTOCOL_KEYS, ProtocolName, ZSLData

Protocol = ProtocolName


def _index_vector(raw: Any, where: str, upper: int, what: str = "") -> np.ndarray:
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


def _split_vector(raw: Any, where: str, n_images: int, feature_file: str) -> np.ndarray:
    """A split's image indices: in range and each image listed once."""
    idx = _index_vector(raw, where, n_images, f"{n_images} images in {feature_file}")
    values, counts = np.unique(idx, return_counts=True)
    if values.size != idx.size:
        first = int(values[counts > 1][0]) + 1
        raise DataError(
            where,
            f"{idx.size - values.size} duplicate image indices (first: 1-based index {first}); "
            "every image must be listed once",
        )
    return idx


def _semantics(
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
    n_classes = att.shape[1]
    if "allclasses_names" in splits:
        names = strings(splits["allclasses_names"])
        if len(names) != n_classes:
            transposed = att.shape[0] == len(names)
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
    else:  # FLO ships without names
        names = tuple(f"class_{i + 1:03d}" for i in range(n_classes))
    empty = np.flatnonzero(~np.any(att != 0, axis=0))
    if empty.size:
        raise DataError(
            att_where,
            f"{empty.size} class(es) have an all-zero semantic vector, which no model can score "
            f"or normalise: {', '.join(f'{names[c]} (column {c + 1})' for c in empty[:5])}",
        )
    _distinct_classes(att, names, att_where)

    return att, names


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
    labels = _index_vector(
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


def _cached_features(
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


def labels_path(feature_path: Path) -> Path:
    """The labels file beside a ``.npy`` feature file: ``<stem>_labels.npy``."""
    return feature_path.with_name(f"{feature_path.stem}_labels.npy")


def provenance_path(feature_path: Path) -> Path:
    """The provenance file beside a feature file: ``<stem>.json``."""
    return feature_path.with_name(f"{feature_path.stem}.json")


def is_synthetic(feature_path: Path) -> bool:
    """True when ``feature_path`` has a provenance file saying its features were generated
    (:mod:`zsl.data.standin`)."""
    path = provenance_path(feature_path)
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("synthetic"))
    except (OSError, ValueError):
        return False


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(str(path), "file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise DataError(str(path), f"cannot read .npy file ({type(err).__name__}: {err})") from None


def _npy_features_and_labels(
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
    labels = _index_vector(
        raw_labels, str(label_path), n_classes, f"{n_classes} classes = columns of {classes_from}"
    )
    check_finite(features, str(feat_path))
    check_informative(features, str(feat_path))
    return features, labels


#: files of a dataset folder that hold no features
SPLIT_FILES = ("att_splits.mat", "sent_splits.mat")


def feature_files(folder: Path, split_file: str = "att_splits.mat") -> list[str]:
    """The feature files of a dataset folder, sorted: its ``.mat`` and ``.npy`` files other
    than the split files (``att_splits.mat``, ``sent_splits.mat``, ``split_file``) and the
    labels of ``.npy`` features (``<stem>_labels.npy``)."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    skip = {*SPLIT_FILES, split_file}
    found = []
    for path in entries:
        name = path.name
        if name.startswith(".") or name in skip or name.endswith("_labels.npy"):
            continue
        if path.suffix in (".mat", ".npy") and path.is_file():
            found.append(name)
    return sorted(found)


class MissingFeatureFile(DataError):
    """The feature file is not there; the message names the feature files the dataset folder
    has and how to choose one (``option``: ``data.feature_file=`` for ``train.py``,
    ``--feature-file `` for ``zsl-data``)."""

    def __init__(
        self, path: Path, folder: Path, present: Sequence[str], option: str = "data.feature_file="
    ) -> None:
        self.path, self.folder, self.present = Path(path), Path(folder), list(present)
        here = "the dataset folder" + ("" if self.path.parent == self.folder else f" {folder}")
        if not self.present:
            hint = f"{here} has no feature file (.mat or .npy other than {', '.join(SPLIT_FILES)})"
        elif len(self.present) == 1:
            hint = f"{here} has {self.present[0]}: use {option}{self.present[0]}"
        else:
            listed = ", ".join(self.present)
            hint = f"{here} has feature files {listed}: use {option}<one of them>"
        super().__init__(str(path), f"file not found; {hint}")


def check_feature_file(
    root: str | Path,
    dataset: str,
    feature_file: str = "res101.mat",
    split_file: str = "att_splits.mat",
    option: str = "data.feature_file=",
) -> Path:
    """The path of ``feature_file`` (relative names resolve in ``<root>/<dataset>``), or a
    :class:`MissingFeatureFile` naming the feature files that are there. Reads no file, so it
    answers at once: called before anything is loaded."""
    folder = Path(root) / dataset
    path = Path(feature_file) if Path(feature_file).is_absolute() else folder / feature_file
    if not path.is_file():
        raise MissingFeatureFile(path, folder, feature_files(folder, split_file), option)
    return path


def load_xlsa17(
    root: str | Path,
    dataset: str,
    feature_file: str = "res101.mat",
    protocol: Protocol = "test",
    semantics_key: str = "att",
    split_file: str = "att_splits.mat",
    exclude_test_from_val: bool = True,
) -> ZSLData:
    """Read and validate ``<root>/<dataset>/{split_file, feature_file}`` for one protocol.

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
    att, names = _semantics(splits, split_path, semantics_key)
    n_classes = att.shape[1]
    classes_from = f"{split_path.name}[{semantics_key!r}]"
    if feat_path.suffix == ".npy":
        features, labels = _npy_features_and_labels(feat_path, n_classes, classes_from)
        image_files = None
    else:
        features, labels, image_files = _cached_features(feat_path, n_classes, classes_from)
    n_images = features.shape[0]
    locs = {
        key: _split_vector(
            get_key(splits, key, split_path), f"{split_path}[{key!r}]", n_images, feat_path.name
        )
        for key in PROTOCOL_KEYS[protocol]
    }
    other = "test" if protocol == "val" else "val"
    guard = {
        key: _split_vector(splits[key], f"{split_path}[{key!r}]", n_images, feat_path.name)
        for key in PROTOCOL_KEYS[other]
        if key in splits
    }
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


def read(
    root: str | Path,
    dataset: str,
    feature_file: str = "res101.mat",
    protocol: Protocol = "test",
    semantics_key: str = "att",
    exclude_test_from_val: bool = True,
) -> ZSLData:
    """The format registry's reader (:func:`zsl.data.formats.read_dataset`)."""
    return load_xlsa17(
        root,
        dataset,
        feature_file,
        protocol,
        semantics_key,
        exclude_test_from_val=exclude_test_from_val,
    )


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
