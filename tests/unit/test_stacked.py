"""Grid points fitted together (``zsl.run.stacked``: stacked weights, or one shared fit of
points that train identically) select exactly what separate fits select: the same validation
history of every point, the same chosen point, epochs and gamma, the same test numbers, and
each point's ``best.ckpt`` holds the very weights of its separate fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TinyXlsa17

from zsl.cli.train import run as train_main
from zsl.models.classical.ale import ALE
from zsl.models.generative import stage
from zsl.models.generative.cadavae import CADAVAE
from zsl.models.generative.clswgan import CLSWGAN
from zsl.run.spec import TrainerSpec
from zsl.run.stacked import GridStack, can_stack, shared_groups

GRIDS = {
    "ale": ["model.search.grid.lr=[0.001,0.01,0.1]"],
    "devise": ["model.search.grid.lr=[0.003,0.03]", "+model.search.grid.margin=[0.1,1.0]"],
    "sje": ["model.search.grid.lr=[0.003,0.03]"],
    "latem": ["model.search.grid.lr=[0.003,0.03]"],
    # generative (grid synth_ratio 6.4 / 12.8): points that differ only in the second stage
    # share one generator's training
    "segzsl": [
        "model.params.hidden=32",
        "model.params.regressor_hidden=32",
        "model.params.second_stage.cls_pca=null",
        "model.min_steps_per_epoch=2",
    ],
    # f-CLSWGAN's grid (cls_pca 128/256, used whole on 16-d features, x gen_ema 0.995/0.998)
    # is one fit: each view keeps its own generator average
    "clswgan": [
        "model.params.gen_hidden=32",
        "model.params.critic_hidden=32",
        "model.params.pretrain_epochs=2",
        "model.min_steps_per_epoch=2",
    ],
    # CADA-VAE's unseen_spread only widens synthetic latents: its 3 x 2 grid is one fit
    "cadavae": [
        "model.params.feature_hidden=[32,32]",
        "model.params.attribute_hidden=[32,16]",
        "model.min_steps_per_epoch=2",
    ],
    "tfvaegan": [
        "+model.search.grid.kl_weight=[0.5,1.0]",
        "model.params.hidden=32",
        "model.params.critic_hidden=32",
        "model.params.decoder_hidden=32",
        "model.params.second_stage.cls_pca=null",
        "model.params.second_stage.cls_steps=20",
        "model.min_steps_per_epoch=2",
    ],
}
#: the directory of each joint fit (its last.ckpt): points in grid order
JOINT = {"segzsl": ["val-0-1"], "tfvaegan": ["val-0-2", "val-1-3"]}


def run(
    tiny: TinyXlsa17, out: Path, model: str, stack: bool, *extra: str, epochs: int = 4
) -> dict[str, Any]:
    metrics = train_main(
        [
            "data=cub",
            f"data.root={tiny.root}",
            f"data.name={tiny.name}",
            f"model={model}",
            *GRIDS[model],
            f"trainer.max_epochs={epochs}",
            "data.batch_size=16",
            "logger=csv",
            f"output_dir={out}",
            "trainer.enable_progress_bar=false",
            f"selection.stack_grid={str(stack).lower()}",
            "keep_checkpoints=true",  # every point's checkpoints are compared below
            "model.search.folds=1",  # the checkpoint folders of one split are compared
            *extra,
        ]
    )
    assert metrics is not None
    return metrics


def without_times(selection: dict[str, Any]) -> dict[str, Any]:
    for trial in [selection["best"], *selection["trials"]]:
        trial.pop("seconds")
    return selection


@pytest.mark.parametrize(
    ("model", "extra"),
    [pytest.param(model, (), id=model) for model in GRIDS]
    # bfloat16 products (trainer.precision=bf16-mixed): each point's products as in its own fit
    + [
        pytest.param(model, ("trainer.precision=bf16-mixed",), id=f"{model}-bf16")
        for model in ("ale", "segzsl")
    ],
)
def test_stacked_selection_equals_separate_fits(
    tiny: TinyXlsa17, tmp_path: Path, model: str, extra: tuple[str, ...]
) -> None:
    apart, together = tmp_path / "apart", tmp_path / "together"
    a, b = run(tiny, apart, model, False, *extra), run(tiny, together, model, True, *extra)
    for metrics in (a, b):
        metrics.pop("wall_time_s"), metrics.pop("cpu_time_s"), metrics.pop("provenance")
    assert a == b  # every float of the test evaluation and the selection record
    sel_a = without_times(json.loads((apart / "selection.json").read_text()))
    sel_b = without_times(json.loads((together / "selection.json").read_text()))
    assert sel_a == sel_b  # every point's history, epoch by epoch
    n_points = len(sel_a["trials"])
    joint = JOINT.get(model, ["val-" + "-".join(map(str, range(n_points)))])
    assert n_points > 1 and all((together / "checkpoints" / d).is_dir() for d in joint)
    assert not any((apart / "checkpoints" / d).exists() for d in joint)
    for index in range(n_points):
        mine = torch.load(together / f"checkpoints/val-{index}/best.ckpt", weights_only=True)
        theirs = torch.load(apart / f"checkpoints/val-{index}/best.ckpt", weights_only=True)
        assert mine["epoch"] == theirs["epoch"]
        # the model's own entries (a generator's class, for zsl-generate)
        assert mine.get("zsl_model_class") == theirs.get("zsl_model_class")
        assert mine["state_dict"].keys() == theirs["state_dict"].keys()
        for key, value in theirs["state_dict"].items():  # gamma: NaN in both
            torch.testing.assert_close(
                mine["state_dict"][key], value, rtol=0, atol=0, equal_nan=True
            )


@pytest.mark.parametrize(
    ("model", "weights_per_pass", "draws_per_pass", "classifiers_per_pass"),
    # CADA-VAE: 6 points with the host's weights, 3 distinct unseen_spread, each with a 2- and
    # a 3-epoch classifier (one sequence of updates); f-CLSWGAN: 4 points, two generator
    # averages (gen_ema), two cls_pca that are both "use the features whole" on the tiny
    # features (one classifier per average)
    [("cadavae", 1, 3, 3), ("clswgan", 2, 2, 2)],
)
def test_a_shared_fit_embeds_and_draws_once_per_weights_and_settings(
    tiny: TinyXlsa17,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    weights_per_pass: int,
    draws_per_pass: int,
    classifiers_per_pass: int,
) -> None:
    """In a validation pass of a shared fit, the points with the same weights embed the real
    seen examples once, those with the same synthesis settings draw their synthetic examples
    once, and classifiers that differ only in their number of updates are one sequence of
    updates; the equality of the results with separate fits is the test above."""
    calls = {"fit": 0, "real": 0, "draw": 0}

    def counted(name: str, original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    # the second stage's classifiers (f-CLSWGAN's pre-trained one is not counted)
    monkeypatch.setattr(stage, "SoftmaxFit", counted("fit", stage.SoftmaxFit))
    model_cls = {"cadavae": CADAVAE, "clswgan": CLSWGAN}[model]
    monkeypatch.setattr(model_cls, "embed_seen", counted("real", model_cls.embed_seen))
    monkeypatch.setattr(
        model_cls, "_synthetic_examples", counted("draw", model_cls._synthetic_examples)
    )
    run(tiny, tmp_path / "run", model, True)
    trials = json.loads((tmp_path / "run" / "selection.json").read_text())["trials"]
    passes = len(trials[0]["history"])
    assert passes > 0 and all(len(t["history"]) == passes for t in trials)
    # every validation pass, then the test's (one point)
    assert calls["fit"] == classifiers_per_pass * passes + 1
    assert calls["real"] == weights_per_pass * passes + 1
    assert calls["draw"] == draws_per_pass * passes + 1


def stopped_history(history: list[dict[str, Any]], metric: str, patience: int) -> list[Any]:
    """The prefix of a full-budget ``history`` that early stopping keeps: up to the first
    epoch that is ``patience`` epochs past the best so far (strict improvements)."""
    best, wait = None, 0
    for n, entry in enumerate(history, start=1):
        value = entry[metric]
        best, wait = (value, 0) if best is None or value > best else (best, wait + 1)
        if wait >= patience:
            return history[:n]
    return history


@pytest.mark.parametrize(("model", "patience"), [("ale", 1), ("segzsl", 2)])
def test_patience_stops_each_point_as_its_own_fit_would(
    tiny: TinyXlsa17, tmp_path: Path, model: str, patience: int
) -> None:
    epochs = 8
    full = run(tiny, tmp_path / "full", model, True, "++model.search.patience=null", epochs=epochs)
    stop = [f"++model.search.patience={patience}"]
    apart = run(tiny, tmp_path / "apart", model, False, *stop, epochs=epochs)
    together = run(tiny, tmp_path / "together", model, True, *stop, epochs=epochs)
    for metrics in (full, apart, together):
        metrics.pop("wall_time_s"), metrics.pop("cpu_time_s"), metrics.pop("provenance")
    assert apart == together
    sel = {
        name: without_times(json.loads((tmp_path / name / "selection.json").read_text()))
        for name in ("full", "apart", "together")
    }
    assert sel["apart"] == sel["together"]
    metric = sel["full"]["metric"]
    lengths = []
    for whole, stopped in zip(sel["full"]["trials"], sel["together"]["trials"], strict=True):
        assert stopped["history"] == stopped_history(whole["history"], metric, patience)
        lengths.append(len(stopped["history"]))
    # some point stopped early while another trained on: the stack shrank mid-fit
    assert min(lengths) < max(lengths)


def test_stacked_best_checkpoint_loads_as_the_model(tiny: TinyXlsa17, tmp_path: Path) -> None:
    run(tiny, tmp_path / "run", "ale", True)
    loaded = ALE.load_from_checkpoint(tmp_path / "run/checkpoints/val-1/best.ckpt")
    assert loaded.hp.lr == 0.01 and loaded.seen_ids.numel() > 0


def test_points_share_a_fit_only_when_training_agrees_and_weights_stay_float32() -> None:
    from zsl.models.generative.segzsl import SEGZSL

    def point(ratio: float, lr: float = 1e-3, seed: int = 0) -> dict[str, Any]:
        return {"lr": lr, "second_stage": {"synth_ratio": ratio, "eval_seed": seed}}

    points = [point(6.4), point(12.8), point(6.4, lr=3e-3), point(12.8, seed=1), point(3.2)]
    fp32 = TrainerSpec(precision="32-true")
    assert shared_groups(SEGZSL, [0, 1, 2, 3, 4], points, fp32) == [[0, 1, 4]]
    assert shared_groups(SEGZSL, [1, 2, 3, 4], points, fp32) == [[1, 4]]  # pending only
    # autocast (the weights stay float32): the views evaluate in the host's step context
    assert shared_groups(SEGZSL, [0, 1, 4], points, TrainerSpec(precision="bf16-mixed")) == [
        [0, 1, 4]
    ]
    assert shared_groups(SEGZSL, [0, 1, 4], points, TrainerSpec(precision="bf16-true")) == []
    assert shared_groups(ALE, [0, 1, 4], points, fp32) == []  # every parameter trains
    spread = [
        {"unseen_spread": s, "lr": 1e-3, "second_stage": {"cls_epochs": e}}
        for s in (0, 1)
        for e in (2, 3)
    ]
    assert shared_groups(CADAVAE, [0, 1, 2, 3], spread, fp32) == [[0, 1, 2, 3]]
    assert shared_groups(CADAVAE, [0, 1, 2, 3], [*spread[:3], {**spread[3], "lr": 3e-3}], fp32) == [
        [0, 1, 2]
    ]


def test_only_stackable_models_without_clipping_stack() -> None:
    from zsl.models.classical.eszsl import ESZSL
    from zsl.models.generative.cadavae import CADAVAE

    assert can_stack(ALE, 3, TrainerSpec(gradient_clip_val=None))
    assert not can_stack(ALE, 1, TrainerSpec())
    assert not can_stack(ALE, 3, TrainerSpec(gradient_clip_val=1.0))
    assert not can_stack(ESZSL, 3, TrainerSpec()) and not can_stack(CADAVAE, 3, TrainerSpec())
    with pytest.raises(ValueError, match="one class"):
        GridStack([])


def test_patience_state_is_in_the_checkpointed_callback_state() -> None:
    """A resumed fit continues each point's count of epochs since its best: a point that had
    stopped stays stopped, one that had not keeps its count."""
    from zsl.run.callbacks import EarlyStop
    from zsl.run.stacked import StackRecorder

    folders, indices = [Path("val-0"), Path("val-1")], [0, 1]
    before = StackRecorder("zsl_t1", folders, indices, None, patience=2)
    before.best_scores, before.waits = [0.5, 0.4], [2, 1]
    after = StackRecorder("zsl_t1", folders, indices, None, patience=2)
    after.load_state_dict(before.state_dict())
    assert after.active() == [False, True] and after.waits == [2, 1]
    stop = EarlyStop("zsl_t1", 3)
    stop.best, stop.wait = 0.5, 2
    resumed = EarlyStop("zsl_t1", 3)
    resumed.load_state_dict(stop.state_dict())
    assert (resumed.best, resumed.wait) == (0.5, 2)


@pytest.mark.parametrize("stack", [False, True])
def test_a_fit_resumed_after_its_early_stop_trains_no_further(
    tiny: TinyXlsa17, tmp_path: Path, stack: bool
) -> None:
    """A run killed after a fit's early stop but before the fit was recorded resumes from
    that fit's last.ckpt: no epoch is added, and the run ends as the uninterrupted one."""
    out, epochs = tmp_path / "run", 8
    first = run(tiny, out, "ale", stack, "++model.search.patience=1", epochs=epochs)
    before = without_times(json.loads((out / "selection.json").read_text()))
    lengths = [len(trial["history"]) for trial in before["trials"]]
    assert max(lengths) < epochs if stack else min(lengths) < epochs  # stopped early
    for record in [*(out / "trials").glob("*.json"), out / "selection.json", out / "metrics.json"]:
        record.unlink()
    again = train_main([f"resume={out}"])
    assert again is not None
    after = without_times(json.loads((out / "selection.json").read_text()))
    assert after == before
    for metrics in (first, again):
        metrics.pop("wall_time_s"), metrics.pop("cpu_time_s"), metrics.pop("provenance")
    assert again == first


@pytest.mark.parametrize(("model", "stack"), [("ale", True), ("cadavae", True), ("segzsl", False)])
def test_validation_from_skips_early_epochs_and_trains_the_same(
    tiny: TinyXlsa17, tmp_path: Path, model: str, stack: bool
) -> None:
    """``model.search.validate_from`` only removes the early validation passes: every point's
    history is the every-epoch history from the first validated epoch on (training does not
    depend on evaluation), for separate, stacked and shared fits."""
    epochs = 4
    whole_budget, start = "++model.search.patience=null", "++model.search.validate_from"
    full = run(tiny, tmp_path / "full", model, stack, f"{start}=0", whole_budget)
    late = run(tiny, tmp_path / "late", model, stack, f"{start}=0.4", whole_budget)
    sel = {
        name: without_times(json.loads((tmp_path / name / "selection.json").read_text()))
        for name in ("full", "late")
    }
    first = 2  # ceil(0.4 * 4)
    for whole, later in zip(sel["full"]["trials"], sel["late"]["trials"], strict=True):
        assert [e["epoch"] for e in later["history"]] == list(range(first, epochs + 1))
        assert later["history"] == [e for e in whole["history"] if e["epoch"] >= first]
    if sel["full"]["best"]["epochs"] >= first:  # the same choice: the same final fit and test
        for metrics in (full, late):
            metrics.pop("wall_time_s"), metrics.pop("cpu_time_s"), metrics.pop("provenance")
        assert full == late
