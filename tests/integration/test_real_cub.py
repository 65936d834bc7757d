"""Real-data checks on CUB with the shared VGG fc7 features (skipped when the data is absent).

These run the full ``train.py`` path (selection on validation classes, one test fit) and
hold the numbers the issues promise on this data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zsl.cli.train import run as main
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.data.splits import make_split

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def _cub(shared_data: Path) -> tuple[str, Path]:
    root = shared_data / "xlsa17"
    if not (root / "CUB" / "vgg_fc7.mat").is_file():
        pytest.skip(f"{root / 'CUB' / 'vgg_fc7.mat'} not found")
    return str(root), root


def test_cub_vgg_loads_with_the_documented_split_sizes(shared_data: Path) -> None:
    root, _ = _cub(shared_data)
    test = load_xlsa17(root, "CUB", "vgg_fc7.mat", "test")
    assert test.features.shape == (11788, 4096) and test.semantics.shape == (200, 312)
    split = make_split(test, "test")
    assert (split.seen_classes.size, split.unseen_classes.size) == (150, 50)
    assert (split.train_idx.size, split.eval_seen_idx.size, split.eval_unseen_idx.size) == (
        7057,
        1764,
        2967,
    )
    # the first image of CUB is a Black-footed Albatross: 1-based labels index class names
    assert test.class_names[test.labels[0]] == "001.Black_footed_Albatross"
    val = make_split(load_xlsa17(root, "CUB", "vgg_fc7.mat", "val"), "val")
    assert (val.seen_classes.size, val.unseen_classes.size) == (100, 50)
    assert not np.intersect1d(val.unseen_classes, split.unseen_classes).size


def test_eszsl_on_cub_vgg_reaches_the_reference_numbers(shared_data: Path, tmp_path: Path) -> None:
    root, _ = _cub(shared_data)
    metrics = main(
        [
            "data=cub",
            f"data.root={root}",
            "data.feature_file=vgg_fc7.mat",
            "model=eszsl",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            f"output_dir={tmp_path / 'eszsl'}",
        ]
    )
    # independent NumPy implementations on the same file: ZSL T1 52.4, GZSL H 16.6
    assert metrics["zsl_t1"] >= 51.0, metrics
    assert metrics["gzsl_h"] >= 16.0, metrics
    assert metrics["gzsl_h_cal"] > metrics["gzsl_h"], metrics  # calibration fixes the seen bias
