"""Synthetic features at a real benchmark's shapes, for benchmarks that ship only split files.

Many copies of the xlsa17 release (and ``../shared/data`` for SUN, AWA1, AWA2, APY and FLO)
hold ``att_splits.mat`` without ``res101.mat``. :func:`synthesize_features` keeps everything
real that the split file gives: the class semantic matrix, the class names, the image count
and every split index. It draws what the file lacks: which class columns are train,
validation and test-unseen classes (in the published class counts of the "proposed split",
Xian et al., TPAMI 2018), a label for every image consistent with the splits its index is in,
and ``dim``-d features from the class attributes through the same non-linear feature model as
:mod:`zsl.data.synthetic`. The result reads through the ordinary loader in both protocols, so
the whole pipeline can be run and timed at true sizes. The numbers it gives are **not** results
on that benchmark: a provenance file beside the features marks the data as synthetic, runs on it
record ``synthetic_features: true`` and ``zsl-benchmark`` labels their rows.

Output per benchmark: ``<out>/<DATASET>/att_splits.mat`` (a link to the real file, or a copy),
``res101_synthetic.npy`` + ``res101_synthetic_labels.npy`` (memory-mapped, see
:func:`zsl.data.formats.xlsa17.write_features_npy`) and ``res101_synthetic.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsl.data.errors import DataError
from zsl.data.formats.matfile import read_mat
from zsl.data.formats.xlsa17 import is_synthetic, provenance_path, write_features_npy
from zsl.data.formats.xlsa17_arrays import read_semantics, split_vector
from zsl.data.synthetic import SyntheticSpec, _features

__all__ = ["FEATURE_FILE", "XLSA17_CLASSES", "is_synthetic", "synthesize_features"]

#: the feature file written (and what ``data.feature_file`` names to read it)
FEATURE_FILE = "res101_synthetic.npy"
#: (train, validation, test-unseen) class counts of the xlsa17 proposed split
XLSA17_CLASSES: dict[str, tuple[int, int, int]] = {
    "CUB": (100, 50, 50),
    "SUN": (580, 65, 72),
    "AWA1": (27, 13, 10),
    "AWA2": (27, 13, 10),
    "APY": (15, 5, 12),
    "FLO": (62, 20, 20),
}
GENERATOR_VERSION = 1
SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


@dataclass(frozen=True)
class StandIn:
    """What :func:`synthesize_features` wrote for one benchmark."""

    folder: Path
    n_images: int
    feature_dim: int
    classes: tuple[int, int, int]


def _labels(
    locs: dict[str, np.ndarray],
    n_images: int,
    groups: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """A class per image: test-unseen images get unseen classes, val_loc images validation
    classes, every other image train classes; balanced within each group, in shuffled order."""
    group = np.full(n_images, 0)  # 0 train, 1 val, 2 unseen
    group[locs["val_loc"]] = 1
    group[locs["test_unseen_loc"]] = 2
    labels = np.empty(n_images, dtype=np.int64)
    for code, name in enumerate(("train", "val", "unseen")):
        images = rng.permutation(np.flatnonzero(group == code))
        classes = groups[name]
        if images.size < classes.size:
            raise DataError(
                f"{name} images",
                f"{images.size} images cannot cover {classes.size} {name} classes",
            )
        labels[images] = classes[np.arange(images.size) % classes.size]
    return labels


def synthesize_features(
    root: str | Path,
    dataset: str,
    out: str | Path,
    dim: int = 2048,
    seed: int = 0,
    classes: tuple[int, int, int] | None = None,
    split_file: str = "att_splits.mat",
) -> StandIn:
    """Write synthetic ``dim``-d features for ``<root>/<dataset>/<split_file>`` under
    ``<out>/<dataset>/`` (see the module docstring); ``classes`` = (train, val, unseen) class
    counts, by default the proposed split's. Reuses an existing, identical generation."""
    split_path = Path(root) / dataset / split_file
    counts = classes or XLSA17_CLASSES.get(dataset.upper())
    if counts is None:
        raise DataError(dataset, "unknown class counts; pass classes=(train, val, unseen)")
    folder = Path(out) / dataset
    feature_path = folder / FEATURE_FILE
    record = {
        "synthetic": True,
        "generator_version": GENERATOR_VERSION,
        "split_file": str(split_path.resolve()),
        "feature_dim": dim,
        "seed": seed,
        "classes": dict(zip(("train", "val", "unseen"), counts, strict=True)),
    }
    if provenance_path(feature_path).is_file() and feature_path.is_file():
        if json.loads(provenance_path(feature_path).read_text()) == record:
            n = int(np.load(feature_path, mmap_mode="r").shape[0])
            return StandIn(folder, n, dim, counts)
    att, locs, n_images = _read_splits(split_path, counts)
    n_classes = att.shape[1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_classes)
    n_train, n_val, _ = counts
    groups = {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "unseen": np.sort(order[n_train + n_val :]),
    }
    labels = _labels(locs, n_images, groups, rng)
    features = _features(rng, SyntheticSpec(feature_dim=dim), att.T.astype(np.float64), labels)

    folder.mkdir(parents=True, exist_ok=True)
    _link_split_file(split_path, folder / split_file)
    write_features_npy(feature_path, features, labels)
    provenance_path(feature_path).write_text(json.dumps(record, indent=2) + "\n")
    return StandIn(folder, n_images, dim, counts)


def _read_splits(
    split_path: Path, counts: tuple[int, int, int]
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """The A x C semantics, the 0-based splits of every key and the image count (the largest
    index any split lists) of a split file, checked against the class ``counts``."""
    splits = read_mat(split_path)
    att, _ = read_semantics(splits, split_path, "att")
    n_classes = att.shape[1]
    if sum(counts) != n_classes:
        raise DataError(
            str(split_path), f"{n_classes} classes, but the counts {counts} add up to {sum(counts)}"
        )
    missing = [key for key in SPLIT_KEYS if key not in splits]
    if missing:
        raise DataError(str(split_path), f"missing split keys {missing}")
    n_images = max(int(np.max(splits[key])) for key in SPLIT_KEYS)
    locs = {
        key: split_vector(splits[key], f"{split_path}[{key!r}]", n_images, "the splits")
        for key in SPLIT_KEYS
    }
    return att, locs, n_images


def _link_split_file(split_path: Path, link: Path) -> None:
    """``link`` -> ``split_path`` (a symbolic link, or a copy where links are not possible)."""
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(split_path.resolve())
    except OSError:  # no symlinks here: copy the (small) split file
        shutil.copyfile(split_path, link)
