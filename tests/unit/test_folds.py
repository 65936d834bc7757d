"""Class-wise k-fold selection (``model.search.folds``, :mod:`zsl.run.folds`): the folds
partition the val protocol's classes, never touch a test image, are used by default only when
the files' validation split is small, and selection chooses on the folds' averaged histories."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyXlsa17, tiny_cli_args

from zsl.data.formats import read_dataset
from zsl.data.types import ZSLData
from zsl.errors import ConfigError
from zsl.run.folds import AUTO_FOLDS, average_histories, fold_data, plan_folds

pytestmark = pytest.mark.usefixtures("one_thread")


def val_data(tiny: TinyXlsa17) -> ZSLData:
    return read_dataset("xlsa17", str(tiny.root), tiny.name, "res101.mat", "val", "att", True)


def test_folds_partition_the_val_protocol_classes(tiny: TinyXlsa17) -> None:
    data = val_data(tiny)
    pool = np.union1d(data.locs["train_loc"], data.locs["val_loc"])
    classes = np.unique(data.labels[pool])
    held = []
    for fold in range(3):
        part = fold_data(data, 3, fold, seed=0)
        train, val = part.locs["train_loc"], part.locs["val_loc"]
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.union1d(train, val), pool)  # the same images only
        val_classes = np.unique(part.labels[val])
        assert np.intersect1d(val_classes, part.labels[train]).size == 0  # class-wise
        held.append(val_classes)
    np.testing.assert_array_equal(np.sort(np.concatenate(held)), classes)  # each class once
    # a different seed, another partition; the same seed, the same one
    again = fold_data(data, 3, 0, seed=0)
    np.testing.assert_array_equal(again.locs["val_loc"], fold_data(data, 3, 0, 0).locs["val_loc"])
    other = [np.unique(data.labels[fold_data(data, 3, 0, s).locs["val_loc"]]) for s in range(6)]
    assert len({tuple(c) for c in other}) > 1


def test_folds_never_hold_a_test_image(tiny: TinyXlsa17) -> None:
    data = val_data(tiny)
    test = np.concatenate([data.guard_locs[k] for k in data.guard_locs if k.startswith("test")])
    for fold in range(2):
        part = fold_data(data, 2, fold)
        assert np.intersect1d(part.locs["val_loc"], test).size == 0
        assert np.intersect1d(part.locs["train_loc"], test).size == 0


def test_auto_uses_folds_only_on_a_small_validation_split(tiny: TinyXlsa17) -> None:
    data = val_data(tiny)  # 3 validation classes: small
    plan = plan_folds("auto", data)
    assert plan.small and plan.folds == AUTO_FOLDS and "3 class-wise folds" in plan.note
    assert plan_folds(1, data).folds == 1 and "small" in plan_folds(1, data).note
    assert plan_folds(4, data).folds == 4
    labels = np.arange(400) % 10  # 9 validation classes of 40 images: 9 < 10 is small

    large = ZSLData(
        "BIG",
        np.zeros((400, 4), np.float32),
        labels,
        np.eye(10, dtype=np.float32),
        tuple(str(c) for c in range(10)),
        {"train_loc": np.flatnonzero(labels < 1), "val_loc": np.flatnonzero(labels >= 1)},
    )
    assert plan_folds("auto", large).folds == AUTO_FOLDS
    labels = np.arange(440) % 11  # 10 validation classes of 40 images: not small
    locs = {"train_loc": np.flatnonzero(labels < 1), "val_loc": np.flatnonzero(labels >= 1)}
    large = replace(large, labels=labels, semantics=np.eye(11, dtype=np.float32), locs=locs)
    assert plan_folds("auto", large).folds == 1 and plan_folds("auto", large).note == ""
    thin = {
        "train_loc": locs["train_loc"],
        "val_loc": np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(1, 11)]),
    }
    assert plan_folds("auto", replace(large, locs=thin)).folds == AUTO_FOLDS  # 4 per class
    four = {"train_loc": np.flatnonzero(labels < 2), "val_loc": np.flatnonzero(labels == 2)}
    four["val_loc"] = np.concatenate([four["val_loc"], np.flatnonzero(labels == 3)])
    assert plan_folds("auto", replace(large, locs=four)).folds == 2  # 4 classes: 2 folds
    three = {"train_loc": np.flatnonzero(labels < 2), "val_loc": np.flatnonzero(labels == 2)}
    plan = plan_folds("auto", replace(large, locs=three))
    assert plan.folds == 1 and "too few" in plan.note
    with pytest.raises(ConfigError, match="too few"):
        plan_folds(7, data)  # 8 classes cannot leave 2 training classes to 7 folds
    with pytest.raises(ConfigError, match="folds must be auto or an integer"):
        plan_folds(0, data)


def test_average_histories_keeps_the_epochs_every_fold_reached() -> None:
    a = [{"epoch": 1, "zsl_t1": 10.0}, {"epoch": 2, "zsl_t1": 30.0}, {"epoch": 3, "zsl_t1": 5.0}]
    b = [{"epoch": 1, "zsl_t1": 20.0}, {"epoch": 2, "zsl_t1": 10.0}]
    assert average_histories([a, b]) == [
        {"epoch": 1, "zsl_t1": 15.0},
        {"epoch": 2, "zsl_t1": 20.0},
    ]
    with pytest.raises(RuntimeError, match="no validation results"):
        average_histories([a, []])


def test_a_run_selects_on_the_folds_average(tiny: TinyXlsa17, tmp_path: Path) -> None:
    """A 3-fold run: every fold's trials are recorded apart, the selected point is the best
    of the averaged histories (not of any one fold), the gamma is their mean, and the run
    records the folds; rerunning with resume reuses the recorded fold trials."""
    from zsl.cli.train import run as main

    run_dir = tmp_path / "run"
    args = tiny_cli_args(tiny.root, run_dir, "model=eszsl")
    args = [a for a in args if not a.startswith("model.search.folds")]
    metrics = main([*args, "model.search.folds=3"])
    assert metrics is not None and metrics["selection_folds"] == 3
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["folds"] == 3
    n_points = len(selection["trials"])
    folds = []
    for fold in range(3):
        files = sorted((run_dir / "trials" / f"fold{fold}").glob("*.json"))
        assert len(files) == n_points
        folds.append(
            [
                json.loads((run_dir / "trials" / f"fold{fold}" / f"{i}.json").read_text())
                for i in range(n_points)
            ]
        )
    means = [np.mean([f[i]["metrics"]["zsl_t1"] for f in folds]) for i in range(n_points)]
    best = int(np.argmax(means))
    assert selection["best"]["params"] == selection["trials"][best]["params"]
    assert selection["best"]["metrics"]["zsl_t1"] == pytest.approx(means[best])
    gamma = np.mean([f[best]["metrics"]["gamma"] for f in folds])
    assert metrics["gamma"] == pytest.approx(gamma, rel=1e-5)
    single = main([*args, "model.search.folds=1", f"output_dir={tmp_path / 'one'}"])
    assert single is not None and single["selection_folds"] == 1
    assert not (tmp_path / "one" / "trials" / "fold0").exists()
