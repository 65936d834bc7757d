"""The protocol's honesty guarantees: the cross-split invariants, no test image in the
validation protocol, and selection warnings a reader must see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import UNSEEN, VAL_CLASSES, write_xlsa17

from zsl.cli.train import run as main
from zsl.data.errors import DataError
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.models.base import ZSLModule
from zsl.run.selection import Selection, ValFit, choose, make_trial, selection_warnings


def _col(idx0: np.ndarray) -> np.ndarray:
    return (np.asarray(idx0) + 1).astype(np.float64).reshape(-1, 1)


def test_val_loc_holding_test_unseen_images_is_refused(tmp_path: Path) -> None:
    """The leak of a split file whose validation images are the test-unseen ones."""

    def swap(splits: dict[str, Any], feats: dict[str, Any]) -> None:
        splits["val_loc"] = splits["test_unseen_loc"].copy()

    tiny = write_xlsa17(tmp_path / "data", edit=swap)
    with pytest.raises(DataError) as info:
        load_xlsa17(tiny.root, tiny.name, protocol="val")
    message = str(info.value)
    assert "'val_loc', 'trainval_loc'" in message
    assert "validation classes must be trainval classes" in message
    assert "009.class_8" in message  # the first test-unseen class, by name


def test_validation_class_outside_trainval_is_refused_in_both_protocols(tmp_path: Path) -> None:
    """Class 5 is a validation class; drop it from trainval/test_seen: it is not seen."""

    def drop(splits: dict[str, Any], feats: dict[str, Any]) -> None:
        labels0 = np.asarray(feats["labels"]).ravel().astype(int) - 1
        for key in ("trainval_loc", "test_seen_loc"):
            idx0 = np.asarray(splits[key]).ravel().astype(int) - 1
            splits[key] = _col(idx0[labels0[idx0] != VAL_CLASSES[0]])

    tiny = write_xlsa17(tmp_path / "data", edit=drop)
    for protocol in ("val", "test"):
        with pytest.raises(DataError, match=r"'val_loc', 'trainval_loc'.*006.class_5"):
            load_xlsa17(tiny.root, tiny.name, protocol=protocol)  # type: ignore[arg-type]


def test_train_class_that_is_test_unseen_is_refused(tmp_path: Path) -> None:
    def leak(splits: dict[str, Any], feats: dict[str, Any]) -> None:
        labels0 = np.asarray(feats["labels"]).ravel().astype(int) - 1
        unseen = np.flatnonzero(labels0 == UNSEEN[0])
        train = np.asarray(splits["train_loc"]).ravel().astype(int) - 1
        splits["train_loc"] = _col(np.concatenate([train, unseen[:2]]))

    tiny = write_xlsa17(tmp_path / "data", edit=leak)
    with pytest.raises(
        DataError, match=r"'train_loc', 'trainval_loc'|'train_loc', 'test_unseen_loc'"
    ):
        load_xlsa17(tiny.root, tiny.name, protocol="val")


def test_val_protocol_removes_test_images_and_says_how_many(tmp_path: Path) -> None:
    tiny = write_xlsa17(tmp_path / "data")
    strict = load_xlsa17(tiny.root, tiny.name, protocol="val")
    literal = load_xlsa17(tiny.root, tiny.name, protocol="val", exclude_test_from_val=False)
    test_seen = np.asarray(tiny.splits["test_seen_loc"]).ravel().astype(int) - 1
    # the tiny files list every image of the train/val classes, 2 test-seen images per class
    assert dict(strict.removed_test_images) == {"train_loc": 10, "val_loc": 6}
    assert dict(literal.removed_test_images) == {}
    for key in ("train_loc", "val_loc"):
        assert not np.isin(strict.locs[key], test_seen).any()
        assert np.isin(literal.locs[key], test_seen).sum() == strict.removed_test_images[key]


def test_no_test_seen_image_reaches_a_validation_fit_or_the_gamma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spy on every training step and evaluation step of a val-protocol run (iterative and
    closed-form models): no feature row of a test_seen_loc (or test_unseen_loc) image."""
    tiny = write_xlsa17(tmp_path / "data")
    seen_rows: list[np.ndarray] = []
    original_training_step = ZSLModule.training_step
    original_eval_step = ZSLModule._eval_step

    def spy_training_step(self: ZSLModule, batch: Any, batch_idx: int) -> Any:
        seen_rows.append(batch.features.detach().cpu().numpy())
        if self.closed_form:
            seen_rows.append(self.training_examples().features.cpu().numpy())
        return original_training_step(self, batch, batch_idx)

    def spy_eval_step(self: ZSLModule, batch: Any) -> None:
        seen_rows.append(batch.features.detach().cpu().numpy())
        original_eval_step(self, batch)

    monkeypatch.setattr(ZSLModule, "training_step", spy_training_step)
    monkeypatch.setattr(ZSLModule, "_eval_step", spy_eval_step)
    for model in ("ale", "eszsl"):
        metrics = main(
            [
                "data=xlsa17",
                f"data.root={tiny.root}",
                "data.name=TINY",
                "data.protocol=val",
                "data.preprocess=none",
                f"model={model}",
                "trainer.max_epochs=2",
                "logger=csv",
                f"output_dir={tmp_path / model}",
                "trainer.enable_progress_bar=false",
            ]
        )
        assert metrics["val_removed_test_images"] == {"train_loc": 10, "val_loc": 6}
        selection = json.loads((tmp_path / model / "selection.json").read_text())
        assert selection["removed_test_images"] == {"train_loc": 10, "val_loc": 6}
    rows = np.concatenate(seen_rows)
    test_idx = np.concatenate(
        [
            np.asarray(tiny.splits[k]).ravel().astype(int) - 1
            for k in ("test_seen_loc", "test_unseen_loc")
        ]
    )
    forbidden = tiny.features[test_idx].astype(np.float32)
    hits = (rows[:, None, :] == forbidden[None, :, :]).all(axis=2)
    assert rows.shape[0] > 0 and not hits.any()


def _fit(history: list[float]) -> ValFit:
    return ValFit([{"epoch": i + 1, "zsl_t1": v} for i, v in enumerate(history)], 1.0)


def test_epoch_cap_and_flat_signal_are_warned_and_recorded() -> None:
    rising = make_trial({"lr": 0.1}, _fit([10.0, 20.0, 30.0]), "zsl_t1")
    assert rising.epochs == 3 and rising.epoch_cap and not rising.flat
    peaked = make_trial({"lr": 0.2}, _fit([10.0, 25.0, 20.0]), "zsl_t1")
    assert peaked.epochs == 2 and not peaked.epoch_cap
    flat = make_trial({"lr": 0.3}, _fit([25.0, 25.0, 25.0]), "zsl_t1")
    assert flat.epochs == 1 and flat.flat

    cap = selection_warnings(choose([rising, peaked], "zsl_t1"), "ale")
    assert len(cap) == 1 and "ale" in cap[0] and "last of the budget (3)" in cap[0]
    assert (
        "flat validation signal" in selection_warnings(Selection(flat, [flat], "zsl_t1"), "sje")[0]
    )
    tied = selection_warnings(
        choose([flat, make_trial({"lr": 0.4}, _fit([25.0]), "zsl_t1")], "zsl_t1"), "dap"
    )
    assert any("all 2 grid points tie" in w for w in tied)
    # a closed-form fit (one epoch) is never "at the cap"
    assert not make_trial({}, _fit([40.0]), "zsl_t1").epoch_cap


def _tiny_args(tiny: Any, run_dir: Path, *extra: str) -> list[str]:
    return [
        "data=xlsa17",
        f"data.root={tiny.root}",
        "data.name=TINY",
        "model=ale",
        "trainer.max_epochs=2",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "selection.grid=false",
        "model.search.folds=1",  # 3 validation classes: one split, not folds
        f"output_dir={run_dir}",
        *extra,
    ]


@pytest.mark.parametrize("damage", ["truncated", "foreign", "other dataset"])
def test_resume_refuses_a_checkpoint_it_cannot_continue(tmp_path: Path, damage: str) -> None:
    """An interrupted run whose last.ckpt is truncated, of another model or of another class
    space: resume= stops with one line naming the file, and keeps the run directory."""
    import torch

    tiny = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    main([*_tiny_args(tiny, run_dir), "keep_checkpoints=true"])
    # as if SIGTERM had stopped the validation fit: no record of point 0, no final results
    for name in ("metrics.json", "selection.json", "model.ckpt"):
        (run_dir / name).unlink()
    (run_dir / "trials" / "0.json").unlink()
    last = run_dir / "checkpoints" / "val-0" / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:500])
    else:
        state = torch.load(last, map_location="cpu", weights_only=True)
        if damage == "foreign":
            state["state_dict"] = {"net.other": torch.zeros(3)}
        else:
            state["state_dict"]["seen_ids"] = state["state_dict"]["seen_ids"] + 1
        torch.save(state, last)
    with pytest.raises(SystemExit) as info:
        main([f"resume={run_dir}"])
    message = str(info.value.code)
    expected = {
        "truncated": "cannot be read as a checkpoint",
        "foreign": "holds the weights of another model (ALE expected)",
        "other dataset": "was written for another class space",
    }[damage]
    assert message.startswith(f"resume error: {last}") and expected in message, message
    assert "\n" not in message and (run_dir / "config.yaml").is_file()
