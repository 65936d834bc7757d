"""Class-wise k-fold selection for small validation splits.

The xlsa17 files name one set of validation classes (``val_loc``). When it is small -- fewer
than :data:`SMALL_CLASSES` classes, or fewer than :data:`SMALL_IMAGES` images per validation
class -- one validation score is noisy enough to pick a grid point, an epoch or a calibration
gamma by chance. ``model.search.folds = k`` (``auto``: :data:`AUTO_FOLDS` below that size,
fewer where the classes cannot leave 2 training classes to each fold, 1 otherwise) partitions
the classes of the val protocol (those of ``train_loc`` and ``val_loc``, all of them seen
classes) into ``k`` seeded groups; fold ``f`` validates on the images of group
``f`` and trains on the others' (with the usual held-out share as validation-seen), and
selection averages the folds' validation histories epoch by epoch (:func:`average_histories`)
before it chooses, so every fold is a different set of validation classes and no class is
validated twice. Test images never enter: the pool is the val protocol's images, from which
the test images were removed. Each fold costs one more selection: ``k`` times its time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from zsl.data.types import ZSLData
from zsl.errors import ConfigError
from zsl.run.spec import check_folds

__all__ = [
    "AUTO_FOLDS",
    "SMALL_CLASSES",
    "SMALL_IMAGES",
    "FoldPlan",
    "average_histories",
    "fold_data",
    "plan_folds",
]

#: fewer validation classes than this makes the files' validation split small
SMALL_CLASSES = 10
#: fewer images per validation class (median) than this makes it small too
SMALL_IMAGES = 5
#: folds that ``model.search.folds=auto`` uses on a small validation split
AUTO_FOLDS = 3


@dataclass(frozen=True)
class FoldPlan:
    """How selection validates: ``folds`` class-wise folds (1: the files' split) and why."""

    folds: int
    n_val_classes: int
    images_per_class: float
    n_classes: int
    note: str

    @property
    def small(self) -> bool:
        """The files' validation split is below :data:`SMALL_CLASSES` / :data:`SMALL_IMAGES`."""
        return self.n_val_classes < SMALL_CLASSES or self.images_per_class < SMALL_IMAGES


def _pool(data: ZSLData) -> np.ndarray:
    """The val protocol's images (``train_loc`` and ``val_loc``), sorted."""
    return np.union1d(data.locs["train_loc"], data.locs["val_loc"])


def plan_folds(setting: int | str, data: ZSLData) -> FoldPlan:
    """The folds of ``model.search.folds`` (``auto`` or k >= 1) on the val-protocol ``data``,
    with the line the run prints about its validation split."""
    val_labels = data.labels[data.locs["val_loc"]]
    classes, counts = np.unique(val_labels, return_counts=True)
    per_class = float(np.median(counts)) if counts.size else 0.0
    n_classes = int(np.unique(data.labels[_pool(data)]).size)
    size = f"{classes.size} validation classes, a median {per_class:g} images per class"
    small = classes.size < SMALL_CLASSES or per_class < SMALL_IMAGES
    checked = check_folds(setting)
    if checked == "auto":  # as many folds as leave 2 training classes, at most AUTO_FOLDS
        folds = max(1, min(AUTO_FOLDS, n_classes - 2)) if small else 1
    else:
        folds = int(checked)
    if folds > 1 and n_classes < folds + 2:
        raise ConfigError(
            f"model.search.folds={folds}: the val protocol has {n_classes} classes, too few for "
            f"{folds} validation folds that each leave 2 training classes; use a smaller value"
        )
    if folds > 1:
        why = "small validation split" if setting == "auto" else "model.search.folds"
        note = (
            f"selection: {size} in the files' split; validating on {folds} class-wise folds "
            f"of the {n_classes} val-protocol classes instead ({why}), scores averaged"
        )
    elif small and setting == "auto":
        note = (
            f"selection: the files' validation split is small ({size}), with too few "
            f"classes ({n_classes}) for class-wise folds; selecting on it"
        )
    elif small:
        note = (
            f"selection: the files' validation split is small ({size}); "
            "model.search.folds=k averages k class-wise folds instead"
        )
    else:
        note = ""
    return FoldPlan(folds, int(classes.size), per_class, n_classes, note)


def fold_data(data: ZSLData, folds: int, fold: int, seed: int = 0) -> ZSLData:
    """The val-protocol ``data`` with ``train_loc``/``val_loc`` of fold ``fold`` of ``folds``:
    the pool's classes shuffled by ``seed`` and split into ``folds`` groups of near-equal size;
    group ``fold``'s images are the validation images, the rest the training images."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    pool = _pool(data)
    classes = np.unique(data.labels[pool])
    order = np.random.default_rng(seed).permutation(classes)
    held = np.sort(np.array_split(order, folds)[fold])
    is_val = np.isin(data.labels[pool], held)
    locs = dict(data.locs)
    locs["train_loc"], locs["val_loc"] = pool[~is_val], pool[is_val]
    return dataclasses.replace(data, locs=locs)


def average_histories(histories: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    """Epoch-by-epoch means of the folds' validation histories over the epochs every fold
    reached (a fold stopped early by patience ends the common part)."""
    if not histories or any(not h for h in histories):
        raise RuntimeError("a validation fold recorded no validation results")
    n = min(len(h) for h in histories)
    out = []
    for i in range(n):
        entries = [h[i] for h in histories]
        keys = set(entries[0]).intersection(*entries[1:])
        row = {k: float(np.mean([e[k] for e in entries])) for k in sorted(keys) if k != "epoch"}
        row["epoch"] = entries[0]["epoch"]
        out.append(row)
    return out
