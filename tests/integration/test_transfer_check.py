"""``experiments/transfer_check.py`` on the tiny benchmark: the nested split keeps a fraction of
the train classes and every validation class, and each rule's outer epoch follows
``transfer_epochs`` from the epoch the inner fit selected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import TRAIN_CLASSES, VAL_CLASSES, load_experiment, write_xlsa17

from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.run.selection import transfer_epochs


def load_script():  # type: ignore[no-untyped-def]
    return load_experiment("transfer_check")


def test_inner_split_keeps_a_fraction_of_the_train_classes(tmp_path: Path) -> None:
    script = load_script()
    ds = write_xlsa17(tmp_path / "data")
    data = load_xlsa17(ds.root, "TINY", "res101.mat", protocol="val")
    inner = script.inner_split(data, 0.6, seed=0)
    kept = inner.classes_of("train_loc")
    assert len(kept) == 3 and set(kept) < set(TRAIN_CLASSES)
    train = data.locs["train_loc"]
    np.testing.assert_array_equal(inner.locs["train_loc"], train[np.isin(data.labels[train], kept)])
    np.testing.assert_array_equal(inner.locs["val_loc"], data.locs["val_loc"])
    assert set(inner.classes_of("val_loc")) == set(VAL_CLASSES)


def test_transfer_check_reports_both_rules(tmp_path: Path) -> None:
    script = load_script()
    ds = write_xlsa17(tmp_path / "data")
    result = script.main(
        ["--root", str(ds.root), "--dataset", "cub", "--feature-file", "res101.mat"]
        + ["--model", "ale", "--epochs", "4", "--inner-fraction", "0.6"]
        + ["--out-dir", str(tmp_path / "out"), "--name", "tiny", "data.name=TINY"]
        + ["data.batch_size=4"]
    )
    assert result["inner_seen_classes"] == 3 and result["outer_seen_classes"] == 5
    assert result["inner_batches_per_epoch"] < result["outer_batches_per_epoch"]
    assert len(result["inner_history"]) == len(result["outer_history"]) == 4
    chosen = result["inner_selected_epoch"]
    for rule, row in result["rules"].items():
        expected = transfer_epochs(
            chosen, result["inner_batches_per_epoch"], result["outer_batches_per_epoch"], rule
        )
        assert row["outer_epoch"] == min(4, expected)
        at = next(h for h in result["outer_history"] if h["epoch"] == row["outer_epoch"])
        assert row[result["metric"]] == at[result["metric"]]
    saved = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert saved["rules"] == result["rules"]
    assert "| steps |" in (tmp_path / "out" / "tiny.md").read_text()


def test_transfer_check_gives_a_rescaled_schedule_its_own_outer_fit(tmp_path: Path) -> None:
    """CADA-VAE counts its warm-ups in epochs: the steps rule is scored on an outer fit whose
    warm-ups are rescaled by inner / outer batches per epoch, the epochs rule on the plain one."""
    script = load_script()
    ds = write_xlsa17(tmp_path / "data")
    small = ["model.params.feature_hidden=[16,16]", "model.params.attribute_hidden=[16,16]"]
    small += ["model.params.latent_dim=4", "model.params.n_seen_per_class=5"]
    small += ["model.params.second_stage.n_synth=5", "model.params.second_stage.synth_ratio=null"]
    small += ["model.params.second_stage.cls_min_steps=5", "model.min_steps_per_epoch=0"]
    result = script.main(
        ["--root", str(ds.root), "--dataset", "cub", "--feature-file", "res101.mat"]
        + ["--model", "cadavae", "--epochs", "3", "--inner-fraction", "0.6"]
        + ["--out-dir", str(tmp_path / "out"), "--name", "tiny", "data.name=TINY"]
        + ["data.batch_size=4", *small]
    )
    ratio = result["inner_batches_per_epoch"] / result["outer_batches_per_epoch"]
    assert ratio < 1
    steps = result["rules"]["steps"]
    assert steps["params"]["warmup_scale"] == result["params"]["warmup_scale"] * ratio
    curve = result["outer_steps_history"]
    assert len(curve) == 3 and curve != result["outer_history"]
    at = next(h for h in curve if h["epoch"] == steps["outer_epoch"])
    assert steps[result["metric"]] == at[result["metric"]]
    assert "outer, steps rule" in (tmp_path / "out" / "tiny.md").read_text()
