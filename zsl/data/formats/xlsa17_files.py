"""The files of an xlsa17-layout dataset folder: which feature files it holds, the files that
sit beside a feature file (``<stem>_labels.npy``, ``<stem>.json``) and the check that names
the feature files present when the requested one is missing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from zsl.data.errors import DataError

__all__ = [
    "SPLIT_FILES",
    "MissingFeatureFile",
    "check_feature_file",
    "feature_files",
    "is_synthetic",
    "labels_path",
    "provenance_path",
]


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
