"""zsl as a library: every registered model and shipped config through the builders, a
checkpoint of every model loaded back, the README's notebook example run verbatim, the
Hydra front-end (--help, multirun) and a non-editable install run from another folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from zsl.cli.compose import compose, compose_spec
from zsl.conf import CONFIG_DIR, available
from zsl.data.datamodule import ZSLDataModule
from zsl.data.formats import read_dataset
from zsl.data.synthetic import SyntheticSpec, ensure_synthetic
from zsl.models import MODELS, get_model_class
from zsl.models.generative.base import GenerativeZSL
from zsl.run.builders import make_datamodule, make_model, make_trainer
from zsl.run.callbacks import EvaluationRecorder
from zsl.run.spec import RunSpec

REPO = Path(__file__).resolve().parents[2]

#: a small synthetic benchmark (300-d features: f-CLSWGAN's shipped cls_pca is 256)
SMALL = [
    "data.synthetic.n_classes=12",
    "data.synthetic.n_unseen=3",
    "data.synthetic.n_val=3",
    "data.synthetic.n_attributes=300",
    "data.synthetic.feature_dim=300",
    "data.synthetic.min_per_class=20",
    "data.synthetic.max_per_class=30",
    "logger=csv",
    "trainer.enable_progress_bar=false",
]
#: what a model needs beyond the shipped config to run on that benchmark offline: CLIP
#: scores features against semantics of the same size and loads no weights with logit_scale
EXTRA = {"clip": ["+model.params.logit_scale=100.0"]}


def _cfg(name: str, data_dir: Path, *more: str) -> RunSpec:
    return compose_spec(
        [f"model={name}", f"data.root={data_dir}", *SMALL, *EXTRA.get(name, []), *more]
    )


@pytest.mark.parametrize("group", ["data", "model", "trainer", "logger", "experiment"])
def test_every_shipped_config_composes(group: str) -> None:
    names = available(group)
    assert names, f"no configs in {CONFIG_DIR / group}"
    for name in names:
        extra = ["data.name=MINE"] if (group, name) == ("data", "xlsa17") else []
        if group == "trainer" and name == "gpu" and not torch.cuda.is_available():
            continue  # composing works; Lightning refuses the accelerator later
        cfg = compose([f"{group}={name}", *extra])
        assert cfg.model.name in MODELS


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_fits_tests_and_loads_from_checkpoint(name: str, tmp_path: Path) -> None:
    """Builders -> fit -> one test pass -> checkpoint -> load_from_checkpoint -> score."""
    cfg = _cfg(name, tmp_path / "data", "trainer.max_epochs=1")
    # the benchmark as stored (CLIP's image/text embedding of it is tested with a tiny CLIP in
    # test_clip_extract.py; here it scores the 300-d features against 300-d semantics)
    assert cfg.data.synthetic is not None and cfg.data.root is not None
    spec = SyntheticSpec(**cfg.data.synthetic)
    ensure_synthetic(Path(cfg.data.root) / cfg.data.name, spec, cfg.data.feature_file)
    raw = read_dataset("xlsa17", cfg.data.root, cfg.data.name, cfg.data.feature_file, "test")
    dm = make_datamodule(cfg, "test", data=raw)
    model = make_model(cfg, dm, cfg.model.grid_points()[0])
    model.gamma.fill_(0.0)
    recorder = EvaluationRecorder()
    trainer = make_trainer(
        cfg.trainer, type(model), 1, validate=False, callbacks=[recorder], root_dir=tmp_path
    )
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    assert recorder.test is not None
    assert 0.0 <= recorder.test.metrics["zsl_t1"] <= 100.0
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)

    loaded = get_model_class(name).load_from_checkpoint(ckpt)
    assert torch.equal(loaded.seen_ids, model.seen_ids)
    assert torch.equal(loaded.unseen_ids, model.unseen_ids)
    loaded.eval()
    batch = dm.evaluation_examples().features[:7]
    if isinstance(loaded, GenerativeZSL):  # its classifier is trained at evaluation time
        loaded.bind(dm)
        loaded.on_eval_start()
        model.on_eval_start()
    with torch.no_grad():
        scores = loaded.all_scores(batch)
        expected = model.eval().all_scores(batch)
    assert scores.shape == (7, dm.class_space.n_classes)
    assert torch.equal(torch.isinf(scores), torch.isinf(expected))
    if not isinstance(loaded, GenerativeZSL):
        torch.testing.assert_close(scores, expected)


CLASSICAL = sorted(n for n in MODELS if MODELS[n].startswith("zsl.models.classical."))


@pytest.fixture(scope="module")
def synthetic_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in synthetic benchmark as shipped (``data=synthetic``), generated once."""
    return tmp_path_factory.mktemp("synthetic_default")


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSICAL)
def test_every_classical_model_beats_chance_on_the_synthetic_default(
    name: str, synthetic_default: Path
) -> None:
    """The shipped config's default parameters and epoch budget, on the shipped synthetic
    benchmark (50 classes, 10 unseen, 256-d features): ZSL T1 at least twice chance."""
    cfg = compose_spec(
        [f"model={name}", f"data.root={synthetic_default}", "logger=csv"]
        + ["trainer.enable_progress_bar=false"]
    )
    dm = make_datamodule(cfg, "test")
    model = make_model(cfg, dm, cfg.model.grid_points(use_grid=False)[0])
    recorder = EvaluationRecorder()
    trainer = make_trainer(
        cfg.trainer,
        type(model),
        int(cfg.model.max_epochs),
        validate=False,
        callbacks=[recorder],
        root_dir=synthetic_default / name,
    )
    trainer.fit(model, dm)
    with pytest.warns(UserWarning, match="no calibration gamma"):
        trainer.test(model, dm, verbose=False)
    assert recorder.test is not None
    chance = 100.0 / SyntheticSpec().n_unseen
    assert recorder.test.metrics["zsl_t1"] > 2 * chance, recorder.test.metrics


def test_test_pass_without_validated_gamma_reports_uncalibrated_only(tmp_path: Path) -> None:
    """A model tested before any gamma was chosen on validation never picks one on the test
    split: calibrated numbers are NaN and a warning says why."""
    cfg = _cfg("eszsl", tmp_path / "data")
    dm = make_datamodule(cfg, "test")
    model = make_model(cfg, dm, cfg.model.grid_points(use_grid=False)[0])
    recorder = EvaluationRecorder()
    trainer = make_trainer(cfg.trainer, type(model), 1, validate=False, callbacks=[recorder])
    trainer.fit(model, dm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.test(model, dm, verbose=False)
    assert recorder.test is not None and recorder.test.gamma_source == "none"
    metrics = recorder.test.metrics
    assert all(metrics[k] != metrics[k] for k in ("gamma", "gzsl_h_cal", "gzsl_u_cal"))  # NaN
    assert metrics["gzsl_h"] == metrics["gzsl_h"]
    assert any("no calibration gamma was selected" in str(w.message) for w in caught)


def test_plain_trainer_binds_the_datamodule_and_closed_form_uses_all_examples(
    tmp_path: Path,
) -> None:
    """Notebook use: no bind() call, a batched datamodule, and ESZSL still fits on the whole
    training set (the same weights as a full-batch fit)."""
    cfg = _cfg("eszsl", tmp_path / "data")
    full = make_datamodule(cfg, "val")
    cls = get_model_class("eszsl")
    space = full.class_space
    params = cfg.model.grid_points(use_grid=False)[0]
    a = cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
    pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    ).fit(a, full)
    batched = ZSLDataModule(
        name=str(cfg.data.name), root=str(cfg.data.root), protocol="val", batch_size=8
    )
    b = cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    pl.Trainer(**cls.trainer_arguments(), **kwargs).fit(b, batched)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- library-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no library example block"
    return match.group(1)


@pytest.mark.slow
def test_readme_library_example_runs_verbatim(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "validation ZSL T1" in out.stdout and "test ZSL T1" in out.stdout


def _train(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "disabled", **(env or {})},
        capture_output=True,
        text=True,
    )


def test_help_lists_the_config_groups(tmp_path: Path) -> None:
    out = _train(["--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    for group in ("data:", "model:", "trainer:", "logger:", "experiment:"):
        assert group in out.stdout
    assert "eszsl" in out.stdout and "cub" in out.stdout


@pytest.mark.slow
def test_multirun_over_models_gives_two_finished_runs(tmp_path: Path) -> None:
    out = _train(
        [
            "-m",
            "model=ale,eszsl",
            "data=synthetic",
            f"data.root={tmp_path / 'data'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            *SMALL,
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = sorted((tmp_path / "runs").glob("multirun_*/*/metrics.json"))
    assert [json.loads(p.read_text())["model"] for p in found] == ["ale", "eszsl"]


@pytest.mark.slow
def test_wheel_installs_and_trains_from_another_folder(tmp_path: Path) -> None:
    """pip install --no-deps --target T . (not editable), then python -m zsl from an unrelated
    folder with PYTHONPATH=T: the configs ship inside the package."""
    target = tmp_path / "T"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (target / "zsl" / "conf" / "data" / "cub.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "zsl", "model=eszsl", "output_dir=run", *SMALL],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    assert metrics["model"] == "eszsl" and metrics["dataset"] == "SYNTHETIC"
    assert (
        str(target)
        in subprocess.run(
            [sys.executable, "-c", "import zsl; print(zsl.__file__)"],
            cwd=elsewhere,
            env={**os.environ, "PYTHONPATH": str(target)},
            capture_output=True,
            text=True,
        ).stdout
    )


@pytest.mark.slow
def test_optuna_sweeper_searches_on_validation_classes(tmp_path: Path) -> None:
    out = _train(
        [
            "-m",
            "experiment=optuna_val",
            "model=ale",
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=2",
            f"data.root={tmp_path / 'data'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            *SMALL,
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted((tmp_path / "runs").glob("multirun_*/*/metrics.json"))
    assert len(runs) == 2
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["protocol"] == "val" and "per_class_accuracy" not in metrics
        assert not (path.parent / "model.ckpt").exists()  # the test split was never touched
    best = next((tmp_path / "runs").glob("multirun_*/optimization_results.yaml")).read_text()
    assert "model.params.lr" in best and "best_value" in best


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_processes(tmp_path: Path) -> None:
    out = _train(
        [
            "-m",
            "experiment=local_parallel",
            "model=eszsl,sae",
            f"data.root={tmp_path / 'data'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            *SMALL,
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = sorted((tmp_path / "runs").glob("multirun_*/*/metrics.json"))
    assert [json.loads(p.read_text())["model"] for p in found] == ["eszsl", "sae"]


def test_slurm_experiment_composes_the_submitit_launcher(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = _train(["--cfg", "hydra", "experiment=slurm", "model=ale"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SlurmLauncher" in out.stdout and "gpus_per_node: 1" in out.stdout


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    out = _train(["--cfg", "job", "data=cub", "model=sae"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: CUB" in out.stdout and "name: sae" in out.stdout and "hydra:" not in out.stdout
