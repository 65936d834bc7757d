"""Checkpoints and resume pieces (``zsl.run.store``, trial records, the engine's callbacks in
``zsl.run.callbacks``): RNG/history round trips, monitors on validation metrics only, atomic
trial records, the ``resume=`` config rule and the SIGTERM guard. The end-to-end SIGTERM +
resume runs are in ``tests/integration/test_resume.py``."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TinyXlsa17
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import Strategy

import zsl.run.fitting as fitting
from zsl.cli.compose import compose
from zsl.reporting.loggers import previous_wandb_id
from zsl.run.builders import make_model, make_trainer
from zsl.run.callbacks import (
    EvaluationRecorder,
    FitCheckpoints,
    RngState,
    rng_state,
    set_rng_state,
)
from zsl.run.config import run_spec
from zsl.run.fitting import Session
from zsl.run.protocol import select_on_validation
from zsl.run.selection import Trial, ValFit, grid_points
from zsl.run.store import (
    ResumeError,
    TrainingInterrupted,
    load_trial,
    resume_config,
    run_dir_of,
    save_trial,
    sigterm_guard,
    write_json_atomic,
)


def draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(4), np.random.rand(4), random.random()


def same_draws(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rng_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    state = rng_state()
    expected = draws()
    torch.save({"rng": state}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"]
    draws()
    set_rng_state(loaded)
    assert same_draws(draws(), expected)


# ----------------------------------------------------------------------------- engine fits


def tiny_args(tiny: TinyXlsa17, *extra: str) -> list[str]:
    return [
        "data=cub",
        f"data.root={tiny.root}",
        "data.name=TINY",
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "model.search.folds=1",  # 3 validation classes: one split, not 3 folds
        *extra,
    ]


def tiny_session(tiny: TinyXlsa17, run_dir: Path, *extra: str) -> Session:
    return Session(run_spec(compose(tiny_args(tiny, *extra))), run_dir)


def test_checkpoint_round_trip_restores_history_and_rng(tiny: TinyXlsa17, tmp_path: Path) -> None:
    """A val-protocol fit's last.ckpt holds the validation history (EvaluationRecorder's
    state) and the RNG states (RngState's); a fresh fit resumed from it by a trainer with
    those callbacks gets both back; loading the checkpoint without a trainer
    (``load_from_checkpoint``, the module's own hook) leaves the global RNG alone."""
    session = tiny_session(tiny, tmp_path)
    params = grid_points(session.spec.model)[0]
    fitted = session.fit_validation(0, params, False)
    path = tmp_path / "checkpoints" / "val-0" / "last.ckpt"
    assert fitted.last_checkpoint == str(path.relative_to(tmp_path))
    ckpt = torch.load(path, weights_only=True)
    history = ckpt["callbacks"]["EvaluationRecorder"]["history"]
    assert ckpt["epoch"] == 1 and len(history) == 2
    assert history == fitted.history
    assert "zsl_eval_history" not in ckpt  # the history is the callback's state only
    set_rng_state(ckpt["zsl_rng_state"])
    expected = draws()

    dm = session.datamodule("val")
    fresh = make_model(session.spec, dm, params)
    recorder = EvaluationRecorder()
    trainer = make_trainer(
        session.spec.trainer,
        session.model_cls,
        2,
        False,
        validate=True,
        callbacks=[recorder, RngState()],
    )
    trainer.fit(fresh, dm, ckpt_path=str(path))  # nothing left
    assert recorder.history == fitted.history
    # the hook as a resuming trainer calls it (the fit above draws again once restored)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    resumed = make_model(session.spec, dm, params)
    RngState().on_load_checkpoint(trainer, resumed, ckpt)
    assert same_draws(draws(), expected)

    detached = make_model(session.spec, dm, params)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    unchanged = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    detached.on_load_checkpoint(ckpt)
    record = EvaluationRecorder()
    record.load_state_dict(ckpt["callbacks"]["EvaluationRecorder"])
    assert record.history == fitted.history
    assert same_draws(draws(), unchanged)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    loaded = session.model_cls.load_from_checkpoint(path)
    assert torch.equal(loaded.seen_ids, fresh.seen_ids)
    assert not same_draws(draws(), expected)  # the checkpoint's RNG states were not restored


def test_checkpoints_monitor_validation_metrics_only(
    tiny: TinyXlsa17, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every checkpoint callback the engine builds (selection fits and the final fit) monitors
    a ``val/`` metric or nothing: never a test metric."""
    trainers = []
    original = fitting.make_trainer

    def spy(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        trainers.append(trainer)
        return trainer

    monkeypatch.setattr(fitting, "make_trainer", spy)
    session = tiny_session(tiny, tmp_path, "model.search.metric=gzsl_h")
    params = grid_points(session.spec.model)[0]
    session.fit_validation(0, params, False)
    session.fit_final(params, 2, 0.0, False)
    found = [c for t in trainers for c in t.callbacks if isinstance(c, FitCheckpoints)]
    assert [c.metric for c in found] == ["gzsl_h", None]
    assert not [c for t in trainers for c in t.checkpoint_callbacks]  # no Lightning default
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ckpt"))
    assert written == [
        "checkpoints/final/last.ckpt",
        "checkpoints/val-0/best.ckpt",
        "checkpoints/val-0/last.ckpt",
        "model.ckpt",
    ]


def test_fit_checkpoints_write_best_once_and_last_by_time(
    tiny: TinyXlsa17, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 6-epoch selection fit with a long interval writes ``last.ckpt`` after epoch 1 and at
    the end only, and ``best.ckpt`` once (with ``last.ckpt`` at epoch 1 if epoch 1 was the best
    so far, and at the end): it holds the weights and epoch of the first best validation
    epoch, exactly as they were then."""
    writes: list[tuple[str, int]] = []
    weights: dict[int, torch.Tensor] = {}
    original_save = Strategy.save_checkpoint

    def spy(self: Strategy, checkpoint: dict[str, Any], path: Any, **kwargs: Any) -> None:
        writes.append((Path(str(path)).name, int(checkpoint["epoch"])))
        original_save(self, checkpoint, path, **kwargs)

    class Weights(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            weights[trainer.current_epoch] = pl_module.net.weight.detach().clone()

    monkeypatch.setattr(Strategy, "save_checkpoint", spy)
    session = tiny_session(
        tiny, tmp_path, "trainer.max_epochs=6", "trainer.checkpoint_interval_s=3600"
    )
    params = grid_points(session.spec.model)[0]
    fitted = session.fit_validation(0, params, False, Weights())
    lasts = [epoch for name, epoch in writes if name == "last.ckpt"]
    assert lasts == [0, 5]
    metric = search_metric_of(session)
    values = [entry[metric] for entry in fitted.history]
    best_epoch = values.index(max(values))  # the first epoch reaching the best value
    bests = [epoch for name, epoch in writes if name == "best.ckpt"]
    assert bests[-1] == best_epoch and len(bests) <= 2
    stored = torch.load(tmp_path / "checkpoints/val-0/best.ckpt", weights_only=True)
    assert stored["epoch"] == best_epoch
    assert torch.equal(stored["state_dict"]["net.weight"], weights[best_epoch])


def search_metric_of(session: Session) -> str:
    return session.spec.model.search.metric


@pytest.mark.parametrize("metric", ["test/zsl_t1", "val/zsl_t1"])
def test_fit_checkpoints_refuse_metric_keys(tmp_path: Path, metric: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        FitCheckpoints(tmp_path, metric, keep_last=True)


# ----------------------------------------------------------------------------- trials


def test_trial_records_round_trip_exactly(tmp_path: Path) -> None:
    metrics = {"zsl_t1": 0.1 + 0.2, "gzsl_h": 1 / 3, "gamma": -4.2e-3}
    trial = Trial({"lr": 0.003, "hidden": [8, 4]}, 3, metrics, [{"epoch": 3, **metrics}], 1.5)
    save_trial(tmp_path, 0, trial)
    assert load_trial(tmp_path, 0, {"lr": 0.003, "hidden": [8, 4]}) == trial
    assert load_trial(tmp_path, 1, {"lr": 0.003}) is None
    assert [p.name for p in tmp_path.iterdir()] == ["0.json"]  # no temporary files left
    with pytest.raises(ResumeError, match="grid changed"):
        load_trial(tmp_path, 0, {"lr": 0.01, "hidden": [8, 4]})


def test_write_json_atomic_keeps_old_content_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


class FakeSession:
    """What :func:`select_on_validation` uses of a :class:`Session`, with canned fits."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.spec, self.run_dir = run_spec(cfg, check=False), run_dir
        self.calls: list[int] = []

    def data(self, protocol: str) -> Any:
        """The benchmark: only what selection reads of it (no test images removed here; 20
        validation classes of 10 images: one split, no folds)."""
        labels = np.repeat(np.arange(30), 10)
        locs = {"train_loc": np.arange(100), "val_loc": np.arange(100, 300)}
        return SimpleNamespace(removed_test_images={}, labels=labels, locs=locs)

    def fit_validation(self, index: int, params: dict, logger: Any, *callbacks: Any) -> ValFit:
        self.calls.append(index)
        keys = ("gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")
        history = [{"epoch": 1, "zsl_t1": 10.0 * index, "gamma": 0.0, **dict.fromkeys(keys, 1.0)}]
        return ValFit(history, 0.0, f"checkpoints/val-{index}/best.ckpt")


def test_select_skips_recorded_points(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {
            "model": {
                "name": "ale",
                "params": {"lr": 0.1},
                "search": {"metric": "zsl_t1", "grid": {"lr": [0.1, 0.2, 0.3]}},
            },
            "selection": {"grid": True, "select_epochs": True, "stack_grid": False},
            "data": {"protocol": "test", "name": "TINY"},
        }
    )
    session = FakeSession(cfg, tmp_path)
    first = select_on_validation(session, None)  # type: ignore[arg-type]
    assert session.calls == [0, 1, 2] and first.best.checkpoint == "checkpoints/val-2/best.ckpt"
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["0.json", "1.json", "2.json"]
    (tmp_path / "trials" / "2.json").unlink()  # as if the run had stopped during point 2
    again = select_on_validation(session, None)  # type: ignore[arg-type]
    assert session.calls == [0, 1, 2, 2]
    assert again.trials == first.trials and again.best == first.best


# ----------------------------------------------------------------------------- resume=


def saved_run(tiny: TinyXlsa17, run_dir: Path) -> list[str]:
    args = tiny_args(tiny, f"output_dir={run_dir}")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose(args)))
    return args


def test_resume_config_rule(tiny: TinyXlsa17, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = saved_run(tiny, run_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    for argv in ([f"resume={run_dir}"], [*args, f"resume={run_dir}"]):
        cfg = resume_config(compose(argv), argv)
        assert cfg.resume == str(run_dir)
        cfg.resume = None
        assert cfg == saved
    argv = [*args, "seed=1", "trainer.max_epochs=5", f"resume={run_dir}"]
    with pytest.raises(ResumeError, match=r"changes.*seed \(0 -> 1\).*trainer.max_epochs"):
        resume_config(compose(argv), argv)


def test_resume_target_resolution(tiny: TinyXlsa17, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    saved_run(tiny, run_dir)
    ckpt = run_dir / "checkpoints" / "val-0" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.touch()
    assert run_dir_of(ckpt) == run_dir and run_dir_of(run_dir) == run_dir
    with pytest.raises(ResumeError, match="no such run directory"):
        run_dir_of(tmp_path / "missing")
    with pytest.raises(ResumeError, match="no run directory with a config.yaml"):
        run_dir_of(tmp_path)
    (run_dir / "metrics.json").write_text("{}")
    argv = [f"resume={ckpt}"]
    with pytest.raises(ResumeError, match="already finished"):
        resume_config(compose(argv), argv)


def test_main_reports_resume_errors(tmp_path: Path) -> None:
    from zsl.cli.train import run as main

    with pytest.raises(SystemExit, match="^resume error: resume=.*no such run directory"):
        main([f"resume={tmp_path / 'missing'}"])


def test_previous_wandb_id_is_the_newest(tmp_path: Path) -> None:
    assert previous_wandb_id(tmp_path) is None
    for name in ("offline-run-20250101_120000-aaa111", "run-20250102_080000-bbb222", "latest-run"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert previous_wandb_id(tmp_path) == "bbb222"


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_guard_raises_outside_lightning_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted), sigterm_guard():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this at once
    assert signal.getsignal(signal.SIGTERM) is before


class SigtermAtTestEnd(Callback):
    """Sends SIGTERM to this process during the last (only) test batch."""

    def on_test_batch_end(self, *args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_in_the_last_test_batch_is_not_lost(
    tiny: TinyXlsa17, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning only raises between batches; a SIGTERM during the last evaluation batch lets
    ``trainer.test`` return normally. The engine still stops (before writing model.ckpt)."""
    original = fitting.make_trainer

    def with_killer(*args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        callbacks = [*(callbacks or []), SigtermAtTestEnd()]
        return original(*args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(fitting, "make_trainer", with_killer)
    session = tiny_session(tiny, tmp_path)
    params = grid_points(session.spec.model)[0]
    with pytest.raises(TrainingInterrupted, match="during the test evaluation"):
        session.fit_final(params, 1, 0.0, False)
    assert not (tmp_path / "model.ckpt").exists()
    assert (tmp_path / "checkpoints" / "final" / "last.ckpt").is_file()


def test_joint_fits_record_their_trials_before_the_separate_fits(
    tiny: TinyXlsa17, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points fitted in one shared fit are recorded in ``trials/`` as soon as that fit ends, so
    a run stopped in a later separate fit does not refit them on resume."""
    session = tiny_session(tiny, tmp_path, "model=segzsl", "+model.search.grid.kl_weight=[0.5,1.0]")
    points = grid_points(session.spec.model)  # (6.4, 0.5), (6.4, 1.0), (12.8, 0.5), (12.8, 1.0)
    history = [{"epoch": 1, "zsl_t1": 10.0, "gzsl_h": 5.0, "gamma": 0.0}]
    trials_dir = tmp_path / "trials"
    save_trial(trials_dir, 3, Trial(points[3], 1, history[0], history))  # (12.8, 1.0) is done
    shared: list[list[int]] = []

    def fit_shared(indices: list[int], pts: Any, logger: Any) -> dict[int, ValFit]:
        shared.append(indices)
        return {i: ValFit(history, 1.0) for i in indices}

    def fit_validation(index: int, *args: Any) -> ValFit:
        assert (trials_dir / "0.json").is_file() and (trials_dir / "2.json").is_file()
        raise KeyboardInterrupt(f"stopped in the separate fit of point {index}")

    monkeypatch.setattr(session, "fit_shared", fit_shared)
    monkeypatch.setattr(session, "fit_validation", fit_validation)
    with pytest.raises(KeyboardInterrupt, match="point 1"):
        select_on_validation(session, False)  # type: ignore[arg-type]
    assert shared == [[0, 2]]  # point 1's partner (3) was recorded: point 1 fits alone
