"""``experiments/second_stage_check.py`` on the tiny benchmark: it loads the validation-fit
generator that a run's trial names, on the val protocol, and scores every classifier setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import load_experiment
from omegaconf import OmegaConf

from zsl.cli.compose import compose
from zsl.run.builders import load_data, make_datamodule, make_model
from zsl.run.config import run_spec, to_container

pytestmark = pytest.mark.usefixtures("one_thread")


def test_second_stage_check_scores_a_validation_generator(tiny, tmp_path: Path) -> None:
    script = load_experiment("second_stage_check")
    cfg = compose(
        [
            "data=xlsa17",
            f"data.name={tiny.name}",
            f"data.root={tiny.root}",
            "data.feature_file=res101.mat",
            "model=fvaegan",
            "model.params.hidden=16",
            "model.params.critic_hidden=16",
            "logger=csv",
            "trainer.enable_progress_bar=false",
        ]
    )
    spec = run_spec(cfg)
    dm = make_datamodule(spec, "val", load_data(spec, "val"))
    params = to_container(cfg.model.params)
    model = make_model(spec, dm, params)
    run = tmp_path / "run"
    (run / "trials").mkdir(parents=True)
    (run / "checkpoints" / "val-0").mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    torch.save({"state_dict": model.state_dict()}, run / "checkpoints" / "val-0" / "best.ckpt")
    record = {"params": params, "epochs": 3, "checkpoint": "checkpoints/val-0/best.ckpt"}
    (run / "trials" / "0.json").write_text(json.dumps(record))

    loaded, loaded_dm, _ = script.load_validation_generator(run, 0)
    assert loaded_dm.protocol == "val"  # never the test split
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, equal_nan=True)

    out = tmp_path / "out"
    result = script.main(
        [str(run), "--cls-steps", "5,20", "--synth-residual", "none,1", "--out-dir", str(out)]
    )
    rows = result["rows"]
    assert [(r["synth_residual"], r["cls_steps"]) for r in rows] == [
        (None, 5),
        (None, 20),
        (1.0, 5),
        (1.0, 20),
    ]
    for r in rows:
        assert all(0.0 <= r[m] <= 100.0 for m in script.METRICS)
    # the settings reach the classifier: its inputs or length differ, so do its scores
    assert len({tuple(r[m] for m in script.METRICS) for r in rows}) > 1
    assert result["spread"]["real"] > 0 and result["spread"]["generated"] >= 0
    text = (out / f"{tiny.name.lower()}_fvaegan_second_stage.md").read_text()
    assert text.count("\n| ") == 1 + 1 + len(rows)  # header, rule, one line per setting
    # the nested check: the same generator bound to fewer seen classes (inner), then carried
    inner, inner_dm, _ = script.load_validation_generator(run, 0, 0.5, 0)
    assert inner_dm.protocol == "val"
    assert 2 <= inner.seen_ids.numel() < loaded.seen_ids.numel()
    assert set(inner.seen_ids.tolist()) < set(loaded.seen_ids.tolist())
    torch.testing.assert_close(inner.unseen_ids, loaded.unseen_ids)
    for name, value in inner.state_dict().items():
        if not name.endswith("_ids"):
            torch.testing.assert_close(value, loaded.state_dict()[name], equal_nan=True)
    outer = (loaded, loaded_dm, _)
    check = script.nested(run, 0, 0.5, 0, "cls_steps", [5, 20], {"synth_residual": 1.0}, outer)
    assert check["inner_best"] in (5, 20)
    ratio = check["outer"]["universe"] / check["inner"]["universe"]
    assert check["rules"]["steps"]["cls_steps"] == check["inner_best"]
    assert check["rules"]["per_class"]["cls_steps"] == round(check["inner_best"] * ratio)
    assert check["outer_best"]["gzsl_h"] == max(r["gzsl_h"] for r in check["outer"]["rows"])
    # the synthetic count: the per-class rule keeps examples per unseen class relative to the
    # real examples per seen class, so it scales the ratio by inner / outer seen classes
    check = script.nested(run, 0, 0.5, 0, "synth_ratio", [1.0, 4.0], {"cls_steps": 5}, outer)
    best = check["inner_best"]
    assert best in (1.0, 4.0)
    assert check["rules"]["share"]["synth_ratio"] == best
    seen = check["inner"]["seen_classes"] / check["outer"]["seen_classes"]
    assert check["rules"]["per_class"]["synth_ratio"] == pytest.approx(best * seen, abs=1e-4)
    assert [r["synth_ratio"] for r in check["outer"]["rows"]] == [1.0, 4.0]
    shared = next(r for r in check["outer"]["rows"] if r["synth_ratio"] == best)
    assert check["rules"]["share"]["gzsl_h"] == shared["gzsl_h"]
    n_real = check["outer"]["real_seen"]
    per_unseen = loaded.n_synth_per_class  # the per-class rule's count, through the model
    loaded.second_stage = dataclasses.replace(loaded.second_stage, synth_ratio=best * seen)
    kept = per_unseen(n_real) / (n_real / check["outer"]["seen_classes"])
    loaded.second_stage = dataclasses.replace(loaded.second_stage, synth_ratio=best)
    inner_real = check["inner"]["real_seen"]
    inner_kept = (best * inner_real / loaded.unseen_ids.numel()) / (
        inner_real / check["inner"]["seen_classes"]
    )
    assert kept == pytest.approx(inner_kept, rel=0.1)
    with pytest.raises(SystemExit, match="trials/7.json"):
        script.load_validation_generator(run, 7)
