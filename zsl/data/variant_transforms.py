"""The array transforms behind the transfer-suite variants (:mod:`zsl.data.variants`).

Each ``*_variant`` function reads an xlsa17 source folder (``att_splits.mat`` and a feature
file, ``sent_splits.mat`` for the sentences) and returns what a variant folder holds: the split
file's content and, where the variant writes its own features, the feature file's content
(None: the source features are kept). They take the variant's numbers as arguments and know
nothing of the registry, the caching or the writing, which :mod:`zsl.data.variants` does.
The PCA whitening (:class:`PCAWhitening`, :func:`fit_pca_whitening`) is here too.

Index arrays stay MATLAB's 1-based column vectors, in the source's integer type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from zsl.data.errors import DataError
from zsl.data.formats.matfile import get_key, matlab_cell, numeric, read_mat, strings
from zsl.data.formats.xlsa17_arrays import index_vector

__all__ = [
    "LOC_KEYS",
    "SENTENCE_FILE",
    "SPLIT_FILE",
    "Content",
    "PCAWhitening",
    "VariantContent",
    "attribute_subset_variant",
    "few_shot_variant",
    "fit_pca_whitening",
    "pca_variant",
    "sentence_variant",
]

SPLIT_FILE = "att_splits.mat"
SENTENCE_FILE = "sent_splits.mat"
LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")
#: rows whitened at a time (float64 blocks of at most 4096 x D)
_BLOCK = 4096

#: the content of one ``.mat`` file, by key
Content = dict[str, Any]
#: a variant's split file content and its feature file content (None: the source's kept)
VariantContent = tuple[Content, Content | None]


# ----------------------------------------------------------------------------- PCA whitening


@dataclass(frozen=True)
class PCAWhitening:
    """A fitted PCA whitening: ``(x - mean) @ components / sqrt(variances)``. ``components``
    (D x k) has orthonormal columns in decreasing order of variance, each signed so that its
    largest-magnitude entry is positive (the fit is deterministic)."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Whitened N x k float32 rows of the N x D ``rows`` (computed in float64 blocks)."""
        scale = self.components / np.sqrt(self.variances)
        out = np.empty((rows.shape[0], scale.shape[1]), dtype=np.float32)
        for start in range(0, rows.shape[0], _BLOCK):
            block = np.asarray(rows[start : start + _BLOCK], dtype=np.float64) - self.mean
            out[start : start + _BLOCK] = block @ scale
        return out


def fit_pca_whitening(rows: np.ndarray, dim: int) -> PCAWhitening:
    """PCA of the N x D ``rows`` (the training images only) keeping ``dim`` directions, with
    variances of the biased covariance (divided by N): the whitened ``rows`` then have zero mean
    and identity covariance. Refuses (ValueError) when the rows span fewer than ``dim``
    directions."""
    x = np.asarray(rows, dtype=np.float64)
    n, d = x.shape
    if not 1 <= dim <= min(d, n - 1):
        raise ValueError(
            f"PCA to {dim} dimensions needs at least {dim} feature dimensions and {dim + 1} "
            f"training images, got {d} and {n}"
        )
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / n
    values, vectors = scipy.linalg.eigh(cov, subset_by_index=(d - dim, d - 1))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    if values[-1] <= 1e-10 * max(float(values[0]), np.finfo(np.float64).tiny):
        rank = int(np.sum(values > 1e-10 * values[0]))
        raise ValueError(
            f"the training features span only {rank} directions; cannot whiten to {dim}"
        )
    peaks = np.argmax(np.abs(vectors), axis=0)
    vectors = vectors * np.sign(vectors[peaks, np.arange(dim)])
    return PCAWhitening(mean, vectors, values)


# ----------------------------------------------------------------------------- shared reading


def _splits(src: Path) -> tuple[Content, Path]:
    """The source split file's semantics, names and 1-based split columns, as written back."""
    path = src / SPLIT_FILE
    mat = read_mat(path)
    content: Content = {
        "allclasses_names": matlab_cell(strings(get_key(mat, "allclasses_names", path)))
    }
    for key in ("att", "original_att"):
        if key in mat:
            content[key] = numeric(mat[key], f"{path}[{key!r}]").astype(np.float64)
    for key in LOC_KEYS:
        content[key] = np.asarray(get_key(mat, key, path)).reshape(-1, 1)
    return content, path


def _labels_and_trainval(
    src: Path, feature_file: str, splits: Content
) -> tuple[np.ndarray, np.ndarray]:
    """0-based image labels of the source features and 0-based ``trainval_loc``."""
    path = src / feature_file
    feats = read_mat(path)
    n_classes = len(splits["allclasses_names"])
    labels = np.asarray(get_key(feats, "labels", path))
    labels0 = index_vector(labels, f"{path}['labels']", n_classes, f"{n_classes} classes")
    trainval0 = index_vector(
        splits["trainval_loc"], f"{src / SPLIT_FILE}['trainval_loc']", labels0.size, "images"
    )
    return labels0, trainval0


def _unit_columns(matrix: np.ndarray) -> np.ndarray:
    """Columns (classes) scaled to unit L2 norm (the xlsa17 ``att`` convention)."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=0, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- the variants


def sentence_variant(src: Path) -> VariantContent:
    """CUB_SENT: ``original_att`` = the sentence file's ``original_att`` if it has one, else its
    ``att`` as stored (CUB's copy has only ``att``, with column norms near 20, not 1); ``att`` =
    that file's ``att`` with L2-normalised columns, as in every xlsa17 ``att`` (FLO's sentence
    ``att`` included). Class names must match ``att_splits.mat``: the image labels index them."""
    splits, split_path = _splits(src)
    path = src / SENTENCE_FILE
    sent = read_mat(path)
    names = strings(splits["allclasses_names"])
    if "allclasses_names" in sent and strings(sent["allclasses_names"]) != names:
        raise DataError(f"{path}['allclasses_names']", f"classes differ from those of {split_path}")
    att = numeric(get_key(sent, "att", path), f"{path}['att']").astype(np.float64)
    if att.ndim != 2 or att.shape[1] != len(names):
        raise DataError(f"{path}['att']", f"expected A x {len(names)}, got shape {att.shape}")
    original = sent.get("original_att", att)
    splits["original_att"] = numeric(original, f"{path}['original_att']").astype(np.float64)
    splits["att"] = _unit_columns(att)
    return splits, None


def pca_variant(src: Path, feature_file: str, dim: int) -> VariantContent:
    """CUB_PCA<k>: fit :func:`fit_pca_whitening` with ``dim`` directions on the
    ``trainval_loc`` images of ``feature_file``, apply it to every image. The feature file keeps
    ``labels`` and ``image_files`` and records the fit (``pca_mean``, ``pca_components`` D x k,
    ``pca_variances``)."""
    splits, split_path = _splits(src)
    path = src / feature_file
    feats = read_mat(path)
    raw = numeric(get_key(feats, "features", path), f"{path}['features']")
    if raw.ndim != 2:
        raise DataError(f"{path}['features']", f"expected D x N, got shape {raw.shape}")
    rows = raw.T  # N x D
    where = f"{split_path}['trainval_loc']"
    trainval0 = index_vector(splits["trainval_loc"], where, rows.shape[0], f"images of {path}")
    fit = fit_pca_whitening(rows[trainval0], dim)
    features: Content = {
        "features": np.ascontiguousarray(fit.apply(rows).T),
        "labels": np.asarray(get_key(feats, "labels", path)).reshape(-1, 1),
        "pca_mean": fit.mean.reshape(-1, 1),
        "pca_components": fit.components,
        "pca_variances": fit.variances.reshape(-1, 1),
    }
    if "image_files" in feats:
        features["image_files"] = matlab_cell(strings(feats["image_files"]))
    return splits, features


def few_shot_variant(
    name: str, src: Path, feature_file: str, shots: int, seed: int
) -> VariantContent:
    """CUB_FEW<n>: for every seen class in ascending class order, the source's ``trainval_loc``
    images of that class sorted by index, of which ``rng.choice(..., n, replace=False)`` with
    ``rng = np.random.default_rng(seed)`` are kept (all of them where a class has at most n;
    the generator is not drawn then). ``trainval_loc``, ``train_loc`` and ``val_loc`` keep the
    kept images only, in their order in the source; the test splits are unchanged. ``name``
    (the variant's) names it in errors."""
    splits, split_path = _splits(src)
    labels0, trainval0 = _labels_and_trainval(src, feature_file, splits)
    rng = np.random.default_rng(seed)
    kept = np.zeros(labels0.size, dtype=bool)
    for c in np.unique(labels0[trainval0]):
        members = np.sort(trainval0[labels0[trainval0] == c])
        if members.size > shots:
            members = rng.choice(members, size=shots, replace=False)
        kept[members] = True
    for key in ("trainval_loc", "train_loc", "val_loc"):
        column = splits[key]
        where = f"{split_path}[{key!r}]"
        chosen = column[kept[index_vector(column, where, labels0.size, "images")]]
        if chosen.size == 0:
            raise ValueError(f"{name}: {key} keeps no image")
        splits[key] = chosen.reshape(-1, 1)
    return splits, None


def attribute_subset_variant(
    name: str, src: Path, feature_file: str, n_attributes: int
) -> VariantContent:
    """CUB_ATT<n>: the n attributes with the largest variance of ``original_att`` across the
    seen classes (those of the ``trainval_loc`` images; ties to the lower index), in their
    source order. Variance across seen classes is the attributes' power to tell the training
    classes apart, measured without looking at an unseen class. ``original_att`` is restricted,
    ``att`` is it with L2-normalised columns; the 1-based source indices of the kept attributes
    are stored as ``variant_attributes``. Refuses a choice that leaves a class with an all-zero
    or a duplicate column: no model could score or tell it apart. ``name`` (the variant's)
    names it in errors."""
    splits, split_path = _splits(src)
    if "original_att" not in splits:
        raise DataError(f"{split_path}['original_att']", "missing key; the variant needs it")
    original = splits["original_att"]
    if n_attributes > original.shape[0]:
        raise ValueError(
            f"{name}: {n_attributes} attributes asked, the source has {original.shape[0]}"
        )
    labels0, trainval0 = _labels_and_trainval(src, feature_file, splits)
    seen = np.unique(labels0[trainval0])
    variance = original[:, seen].var(axis=1)
    chosen = np.sort(np.argsort(-variance, kind="stable")[:n_attributes])
    restricted = original[chosen]
    names = strings(splits["allclasses_names"])
    empty = np.flatnonzero(~np.any(restricted != 0, axis=0))
    if empty.size:
        listed = ", ".join(names[c] for c in empty[:5])
        raise ValueError(
            f"{name}: {empty.size} class(es) have all-zero values on the "
            f"{n_attributes} attributes kept ({listed}); choose more attributes"
        )
    _, first = np.unique(restricted.T, axis=0, return_index=True)
    if first.size < restricted.shape[1]:
        raise ValueError(
            f"{name}: {restricted.shape[1] - first.size} class(es) share their values on "
            f"the {n_attributes} attributes kept with another class; choose more attributes"
        )
    splits["original_att"] = restricted
    splits["att"] = _unit_columns(restricted)
    splits["variant_attributes"] = (chosen + 1).astype(np.float64).reshape(-1, 1)
    return splits, None
