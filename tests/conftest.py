"""Shared fixtures: a tiny xlsa17-format dataset written with ``scipy.io.savemat``.

The tiny benchmark has 12 classes: 0-7 are seen (5, 6, 7 are the validation classes of the
``val`` protocol, so ``train_loc`` holds classes 0-4 and ``val_loc`` classes 5-7) and 8-11 are
unseen. Every class has 10 images; images are stored in a shuffled order so that a wrong
1-based/0-based conversion shows up as wrong labels. Everything on disk is MATLAB-style:
``att`` is A x C, ``features`` D x N, labels and locs are 1-based column vectors.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per test process: `make test` runs TEST_WORKERS of them side by side, and
    # more threads than cores spin in OpenMP (set before NumPy and torch read it)
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.io  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent

N_CLASSES = 12
SEEN = tuple(range(8))
VAL_CLASSES = (5, 6, 7)
TRAIN_CLASSES = tuple(c for c in SEEN if c not in VAL_CLASSES)
UNSEEN = tuple(range(8, 12))
PER_CLASS = 10
TEST_SEEN_PER_CLASS = 2
FEATURE_DIM = 16
N_ATTRIBUTES = 6
#: overrides of a small built-in synthetic benchmark (12 classes, 32-d features)
SMALL_SYNTHETIC = [
    "data.synthetic.n_classes=12",
    "data.synthetic.n_unseen=3",
    "data.synthetic.n_val=3",
    "data.synthetic.feature_dim=32",
    "data.synthetic.n_attributes=16",
    "data.synthetic.min_per_class=20",
    "data.synthetic.max_per_class=30",
    "model.search.folds=1",  # its 3 validation classes would select on 3 folds by default
]


def tiny_cli_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """``train.py`` arguments of a two-epoch ALE run on the tiny dataset under ``root`` (CSV
    logger, no progress bar) into ``run_dir``."""
    return [
        "data=cub",
        f"data.root={root}",
        "data.name=TINY",
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "model.search.folds=1",  # 3 validation classes: one split, not 3 folds (test_folds.py)
        f"output_dir={run_dir}",
        *extra,
    ]


@dataclass
class TinyXlsa17:
    """What :func:`write_xlsa17` wrote (arrays as on disk, MATLAB layout, 1-based)."""

    root: Path
    name: str
    splits: dict[str, Any]
    feats: dict[str, Any]
    labels0: np.ndarray  # [N] 0-based class id of every image (the truth)

    @property
    def features(self) -> np.ndarray:
        """[N, D] image rows of the feature matrix as written (after any edits)."""
        return np.asarray(self.feats["features"]).T

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def split_path(self) -> Path:
        return self.folder / "att_splits.mat"

    @property
    def feature_path(self) -> Path:
        return self.folder / "res101.mat"

    @property
    def n_images(self) -> int:
        return int(self.labels0.size)


def _cell(strings: Iterable[str]) -> np.ndarray:
    """A MATLAB cell column of strings (what ``allclasses_names`` / ``image_files`` are)."""
    items = list(strings)
    cell = np.empty((len(items), 1), dtype=object)
    for i, s in enumerate(items):
        cell[i, 0] = s
    return cell


def _col(idx0: np.ndarray, dtype: Any) -> np.ndarray:
    """0-based index vector -> 1-based MATLAB column vector."""
    return (np.asarray(idx0, dtype=np.int64) + 1).astype(dtype).reshape(-1, 1)


def write_xlsa17(
    root: Path,
    name: str = "TINY",
    *,
    seed: int = 0,
    loc_dtype: Any = np.uint16,
    with_names: bool = True,
    drop_split_keys: Iterable[str] = (),
    drop_feature_keys: Iterable[str] = (),
    split_overrides: dict[str, Any] | None = None,
    feature_overrides: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> TinyXlsa17:
    """Write ``<root>/<name>/{att_splits.mat,res101.mat}`` of the tiny benchmark.

    Knobs to corrupt it: ``drop_*_keys`` removes keys, ``*_overrides`` replaces arrays as
    they are saved (MATLAB layout), ``edit(splits, feats)`` mutates both dicts in place last.
    """
    rng = np.random.default_rng(seed)
    n = N_CLASSES * PER_CLASS
    labels0 = rng.permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))
    att = rng.uniform(0.0, 1.0, size=(N_ATTRIBUTES, N_CLASSES))
    att /= np.linalg.norm(att, axis=0, keepdims=True)
    proj = rng.normal(size=(N_ATTRIBUTES, FEATURE_DIM))
    features = (att.T @ proj)[labels0] * 3.0 + 0.3 * rng.normal(size=(n, FEATURE_DIM))
    features = np.abs(features).astype(np.float32)  # post-ReLU-like, non-negative

    trainval, test_seen, test_unseen, train, val = [], [], [], [], []
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels0 == c)
        if c in UNSEEN:
            test_unseen.extend(members)
            continue
        held = rng.choice(members, size=TEST_SEEN_PER_CLASS, replace=False)
        test_seen.extend(held)
        trainval.extend(np.setdiff1d(members, held))
        (val if c in VAL_CLASSES else train).extend(members)

    splits: dict[str, Any] = {
        "att": att,
        "original_att": att * 100.0,
        "allclasses_names": _cell(f"{c + 1:03d}.class_{c}" for c in range(N_CLASSES)),
        "trainval_loc": _col(np.sort(trainval), loc_dtype),
        "test_seen_loc": _col(np.sort(test_seen), loc_dtype),
        "test_unseen_loc": _col(np.sort(test_unseen), loc_dtype),
        "train_loc": _col(np.sort(train), loc_dtype),
        "val_loc": _col(np.sort(val), loc_dtype),
    }
    feats: dict[str, Any] = {
        "features": features.T.copy(),  # D x N
        "labels": _col(labels0, np.float64),  # N x 1, 1-based, double as in res101.mat
        "image_files": _cell(f"images/{labels0[i]:03d}/img_{i:04d}.jpg" for i in range(n)),
    }
    if not with_names:
        del splits["allclasses_names"]
    for key in drop_split_keys:
        del splits[key]
    for key in drop_feature_keys:
        del feats[key]
    splits.update(split_overrides or {})
    feats.update(feature_overrides or {})
    if edit is not None:
        edit(splits, feats)

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(folder / "att_splits.mat"), splits)
    scipy.io.savemat(str(folder / "res101.mat"), feats)
    return TinyXlsa17(root, name, splits, feats, labels0)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyXlsa17:
    """The intact tiny benchmark under ``tmp_path/data/TINY``."""
    return write_xlsa17(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    """The real shared data folder (``$ZSL_SHARED_DATA`` or ``../shared/data``); skips if absent."""
    env = os.environ.get("ZSL_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not (path / "xlsa17").is_dir():
        source = "$ZSL_SHARED_DATA" if env else "../shared/data (relative to the repo root)"
        pytest.skip(f"real ZSL data not found at {path} (from {source}); set ZSL_SHARED_DATA")
    return path


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` imported as a module (the scripts are not a package)."""
    path = REPO_ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny ops are much faster single-threaded (and OpenMP spinning on a shared CPU is slow);
    modules of tiny models use it as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_datamodule(tiny: TinyXlsa17, protocol: str = "test", batch_size: int = 16) -> Any:
    """A set-up datamodule of the tiny benchmark with raw (unnormalised) features."""
    from zsl.data.datamodule import ZSLDataModule

    dm = ZSLDataModule(
        tiny.name, str(tiny.root), "res101.mat", protocol, preprocess="none", batch_size=batch_size
    )
    dm.setup()
    return dm


def tiny_trainer(tmp_path: Path, epochs: int, validate: bool = False, **kwargs: Any) -> Any:
    """A quiet CPU Lightning trainer for tiny fits: no logger, checkpoints, bars or sanity
    pass; validation every epoch only with ``validate``; extra Trainer arguments in ``kwargs``."""
    import pytorch_lightning as pl

    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        default_root_dir=str(tmp_path),
        deterministic=True,
        **kwargs,
    )
