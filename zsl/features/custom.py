"""``zsl-custom``: your own images and attributes -> a complete xlsa17 dataset folder.

Input: an image folder with one sub-folder per class, a CSV with one row per class (header
row ``class,<attribute names...>``, first column the sub-folder name) and the list of unseen
classes. Output, in one command, ``<output>/att_splits.mat`` and ``<output>/<feature file>``
laid out exactly like the xlsa17 release, so every model trains on it with
``python train.py data=cub data.root=<parent of output> data.name=<output folder name>
data.feature_file=<feature file>``.

Splits (all seeded, 1-based MATLAB column vectors, like the proposed split):

* ``test_unseen_loc``: every image of the unseen classes;
* ``test_seen_loc``: a ``test_seen_fraction`` of the images of every seen class (at least one),
  the rest is ``trainval_loc``;
* ``val_loc``: every image of the validation classes (a ``val_fraction`` of the seen classes,
  or the ones named), ``train_loc``: every image of the other seen classes.

``att`` holds the CSV values per class with L2-normalised columns; ``original_att`` the raw ones.

:func:`build_custom_dataset` is one linear recipe (check the inputs, split, write the split
file, extract, report) of about 70 lines, kept in one function so it reads in order.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsl.data.errors import DataError
from zsl.data.formats.matfile import matlab_cell
from zsl.data.formats.xlsa17 import write_splits
from zsl.features.backbones import DEFAULT_BACKBONE, BackboneSpec
from zsl.features.extract import extract_to_file
from zsl.features.images import ImageFolder, list_image_folder


@dataclass(frozen=True)
class AttributeTable:
    """The class x attribute CSV."""

    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]
    values: np.ndarray  # [C, A] float64, rows in class_names order

    def row(self, name: str) -> np.ndarray:
        return self.values[self.class_names.index(name)]


def read_attribute_csv(path: str | Path) -> AttributeTable:
    """Read ``class,<attr 1>,...,<attr A>`` rows; every cell after the first must be numeric."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(str(path), "attribute CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(
            str(path), "expected a header row 'class,<attribute names...>' and one row per class"
        )
    header, body = rows[0], rows[1:]
    names: list[str] = []
    values: list[list[float]] = []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{line}", f"{len(row)} cells, the header has {len(header)}")
        name = row[0].strip()
        if name in names:
            raise DataError(f"{path}:{line}", f"class {name!r} appears twice")
        try:
            values.append([float(cell) for cell in row[1:]])
        except ValueError as err:
            raise DataError(f"{path}:{line}", f"non-numeric attribute value ({err})") from None
        names.append(name)
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise DataError(str(path), "attribute values must be finite")
    return AttributeTable(tuple(names), tuple(h.strip() for h in header[1:]), arr)


def parse_class_list(spec: str | Path) -> list[str]:
    """A file with one class per line, or a comma-separated list of class names."""
    path = Path(spec).expanduser()
    if path.is_file():
        items = path.read_text().splitlines()
    else:
        items = str(spec).split(",")
    return [item.strip() for item in items if item.strip()]


def _ids(names: Sequence[str], folder: ImageFolder, what: str) -> np.ndarray:
    unknown = [n for n in names if n not in folder.class_names]
    if unknown:
        raise DataError(
            what,
            f"{unknown[:5]} are not class folders of {folder.root} (e.g. {folder.class_names[:3]})",
        )
    if len(set(names)) != len(names):
        raise DataError(what, "a class is listed twice")
    return np.asarray(sorted(folder.class_names.index(n) for n in names), dtype=np.int64)


def make_splits(
    labels: np.ndarray,
    n_classes: int,
    unseen: np.ndarray,
    val_classes: np.ndarray | None = None,
    val_fraction: float = 0.25,
    test_seen_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The five xlsa17 split arrays as sorted 0-based image indices (see the module doc)."""
    if not 0.0 < test_seen_fraction < 1.0:
        raise ValueError(f"test_seen_fraction must be in (0, 1), got {test_seen_fraction}")
    rng = np.random.default_rng(seed)
    seen = np.setdiff1d(np.arange(n_classes), unseen)
    if unseen.size == 0 or seen.size < 2:
        raise ValueError(
            f"need at least one unseen and two seen classes (one to train, one to validate); got "
            f"{unseen.size} unseen and {seen.size} seen"
        )
    if val_classes is None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = min(max(1, int(round(val_fraction * seen.size))), seen.size - 1)
        val_classes = np.sort(rng.choice(seen, size=n_val, replace=False))
    elif np.setdiff1d(val_classes, seen).size or val_classes.size in (0, seen.size):
        raise ValueError("validation classes must be a non-empty proper subset of the seen classes")
    splits: dict[str, list[int]] = {
        k: [] for k in ("trainval", "test_seen", "test_unseen", "train", "val")
    }
    for cls in range(n_classes):
        members = np.flatnonzero(labels == cls)
        if cls in unseen:
            splits["test_unseen"].extend(members)
            continue
        if members.size < 2:
            raise ValueError(
                f"seen class {cls} has {members.size} image(s); needs at least 2 "
                "(training and test_seen)"
            )
        k = min(max(1, int(round(test_seen_fraction * members.size))), members.size - 1)
        held = rng.choice(members, size=k, replace=False)
        splits["test_seen"].extend(held)
        splits["trainval"].extend(np.setdiff1d(members, held))
        splits["val" if cls in val_classes else "train"].extend(members)
    return {f"{k}_loc": np.sort(np.asarray(v, dtype=np.int64)) for k, v in splits.items()}


def _write_splits(
    out: Path,
    folder: ImageFolder,
    table: AttributeTable,
    locs: dict[str, np.ndarray],
    source: str,
) -> None:
    """``<out>/att_splits.mat``: L2-normalised ``att``, the raw CSV values as ``original_att``,
    class and attribute names and the 1-based splits (the xlsa17 writer)."""
    original = np.stack([table.row(c) for c in folder.class_names], axis=1)  # A x C
    norms = np.linalg.norm(original, axis=0, keepdims=True)
    if (norms == 0).any():
        zero = [folder.class_names[i] for i in np.flatnonzero(norms[0] == 0)]
        raise DataError(source, f"classes with all-zero attributes: {zero[:5]}")
    extra = {
        "original_att": original,
        "attribute_names": matlab_cell(list(table.attribute_names)),
    }
    write_splits(out, original / norms, folder.class_names, locs, extra)


def build_custom_dataset(
    images: str | Path,
    attributes: str | Path,
    unseen: Sequence[str],
    output: str | Path,
    *,
    val_classes: Sequence[str] | None = None,
    val_fraction: float = 0.25,
    test_seen_fraction: float = 0.2,
    seed: int = 0,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    feature_file: str | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Write ``<output>/att_splits.mat`` and ``<output>/<feature_file>``; returns the folder."""
    folder, table = _matched_inputs(images, attributes)
    unseen_ids = _ids(unseen, folder, "unseen classes")
    val_ids = _ids(val_classes, folder, "validation classes") if val_classes else None
    try:
        locs = make_splits(
            folder.labels,
            len(folder.class_names),
            unseen_ids,
            val_ids,
            val_fraction,
            test_seen_fraction,
            seed,
        )
    except ValueError as err:
        raise DataError(str(folder.root), str(err)) from None

    out = Path(output).expanduser()
    _write_splits(out, folder, table, locs, str(attributes))

    spec = BackboneSpec(backbone, weights)
    if feature_file is None:
        feature_file = "res101.mat" if backbone == "resnet101" else f"{backbone}.mat"
    paths = [p.resolve() for p in folder.paths]
    extract_to_file(
        out / feature_file,
        paths,
        folder.labels,
        [str(p) for p in paths],
        spec,
        overwrite=overwrite,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
    )
    print(_summary(out, folder, table, unseen_ids, locs, feature_file))
    return out


def _matched_inputs(
    images: str | Path, attributes: str | Path
) -> tuple[ImageFolder, AttributeTable]:
    """The image folder and the attribute table, which must list the same classes."""
    folder = list_image_folder(images)
    table = read_attribute_csv(attributes)
    missing = [c for c in folder.class_names if c not in table.class_names]
    extra = [c for c in table.class_names if c not in folder.class_names]
    if missing or extra:
        raise DataError(
            str(attributes),
            f"CSV classes must match the class folders of {folder.root}: no row for {missing[:5]}, "
            f"no folder for {extra[:5]}",
        )
    return folder, table


def _summary(
    out: Path,
    folder: ImageFolder,
    table: AttributeTable,
    unseen_ids: np.ndarray,
    locs: dict[str, np.ndarray],
    feature_file: str,
) -> str:
    """What was written, and the command that trains on it."""
    n_seen = len(folder.class_names) - unseen_ids.size
    return (
        f"{out}: {len(folder.class_names)} classes ({n_seen} seen, {unseen_ids.size} unseen), "
        f"{len(folder)} images, {len(table.attribute_names)} attributes; "
        + ", ".join(f"{k.removesuffix('_loc')} {v.size}" for k, v in locs.items())
        + "\n"
        f"train with: python train.py data=xlsa17 data.root={out.parent} data.name={out.name} "
        f"data.feature_file={feature_file}"
    )
