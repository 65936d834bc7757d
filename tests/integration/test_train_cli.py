"""End-to-end runs of ``python train.py`` on the tiny xlsa17 fixture dataset.

The three successful runs are started together (one module-scoped fixture) because each
subprocess spends most of its time importing torch and Lightning; the failure checks call
``zsl.cli.train.main`` in-process (they stop before any training starts).
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import N_CLASSES, REPO_ROOT, write_xlsa17
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

PERCENT_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")
TEST_KEYS = ["trainval_loc", "test_seen_loc", "test_unseen_loc"]


@dataclass
class CliRun:
    args: list[str]
    data_root: Path
    run_dir: Path
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (
            f"python train.py {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout (tail) ---\n{self.stdout[-3000:]}\n--- stderr (tail) ---\n"
            f"{self.stderr[-5000:]}"
        )

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "metrics.json").read_text())


def cli_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "data=cub",
        f"data.root={root}",
        "data.name=TINY",
        "data.feature_file=res101.mat",
        "logger=csv",
        "trainer.max_epochs=3",
        "model.search.folds=1",  # 3 validation classes: one split, not 3 folds
        f"output_dir={run_dir}",
        *extra,
    ]


def cli_env(home: Path) -> dict[str, str]:
    """W&B strictly offline and silent, its caches inside the test's temporary folder."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_ARTIFACT_DIR=str(home / "artifacts"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    base = tmp_path_factory.mktemp("cli")
    full = write_xlsa17(base / "data")
    val_only = write_xlsa17(base / "data_val_only", drop_split_keys=TEST_KEYS)
    planned = {  # name -> (data root, run dir, extra overrides)
        "test_csv": (full.root, base / "run_test", []),
        "val_csv": (val_only.root, base / "run_val", ["data.protocol=val"]),
        "wandb": (full.root, base / "run_wandb", ["logger=wandb", "logger.mode=offline"]),
    }
    env = cli_env(base / "wandb_home")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "train.py", *cli_args(root, run_dir, *extra)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (root, run_dir, extra) in planned.items()
    }
    runs = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            root, run_dir, _ = planned[name]
            args = list(proc.args)[2:]  # type: ignore[arg-type]
            runs[name] = CliRun(args, root, run_dir, proc.returncode, out, err)
    finally:
        for proc in procs.values():  # never leave a run behind (e.g. after a timeout)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return runs


def check_metrics(metrics: dict[str, Any], protocol: str) -> None:
    for key in PERCENT_KEYS:
        value = metrics[key]
        assert isinstance(value, float) and 0.0 <= value <= 100.0, (key, value)
    assert math.isfinite(metrics["wall_time_s"]) and 0.0 < metrics["wall_time_s"] < 600
    assert metrics["protocol"] == protocol
    assert metrics["dataset"] == "TINY" and metrics["model"] == "ale"
    assert 1 <= metrics["selected_epochs"] <= 3


def check_table(stdout: str, protocol: str) -> None:
    split = "validation classes" if protocol == "val" else "test split"
    assert f"ale on TINY ({split}, protocol {protocol})" in stdout
    for word in ("ZSL T1", "uncalibrated", "calibrated", "gamma=", "wall time"):
        assert word in stdout, f"{word!r} missing from the printed table"


def test_train_test_protocol(cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs["test_csv"]
    assert run.returncode == 0, run.explain()
    metrics = run.metrics()
    check_metrics(metrics, "test")
    per_class = metrics["per_class_accuracy"]
    assert len(per_class) == N_CLASSES
    assert {e["split"] for e in per_class.values()} == {"seen", "unseen"}
    assert all(0.0 <= e["accuracy"] <= 100.0 for e in per_class.values())
    check_table(run.stdout, "test")
    cfg = OmegaConf.load(run.run_dir / "config.yaml")
    assert cfg.data.name == "TINY" and cfg.model.name == "ale" and cfg.trainer.max_epochs == 3
    assert cfg.logger.name == "csv"
    assert "${" not in (run.run_dir / "config.yaml").read_text()  # saved resolved
    selection = json.loads((run.run_dir / "selection.json").read_text())
    assert selection["best"]["epochs"] == metrics["selected_epochs"]
    assert metrics["final_epochs"] == metrics["selected_epochs"]  # ALE: the epochs rule
    assert (run.run_dir / "csv").is_dir()


def test_val_protocol_never_needs_test_keys(cli_runs: dict[str, CliRun]) -> None:
    """att_splits.mat has no trainval/test_seen/test_unseen keys at all: the val protocol
    (selection + report on validation classes) still runs to the end."""
    run = cli_runs["val_csv"]
    assert run.returncode == 0, run.explain()
    check_metrics(run.metrics(), "val")
    check_table(run.stdout, "val")
    assert (run.run_dir / "config.yaml").is_file()


def test_second_run_into_same_output_dir_fails(cli_runs: dict[str, CliRun]) -> None:
    from zsl.cli.train import run as main

    run = cli_runs["test_csv"]
    assert run.returncode == 0, run.explain()
    before = {p: p.stat().st_mtime_ns for p in run.run_dir.rglob("*")}
    with pytest.raises(SystemExit, match="already exists and is not empty.*output_dir"):
        main(cli_args(run.data_root, run.run_dir))
    assert {p: p.stat().st_mtime_ns for p in run.run_dir.rglob("*")} == before  # untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=nope", "unknown model config 'nope'; available: "),
        ("model.name=nope", "unknown model 'nope'; available: "),
    ],
)
def test_unknown_model_fails_before_reading_data(
    tmp_path: Path, override: str, message: str
) -> None:
    from zsl.cli.train import run as main

    missing_root = tmp_path / "no_such_data_root"
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([*cli_args(missing_root, run_dir), override])
    text = str(info.value.code)
    assert text.startswith("config error: ") and message in text and "ale" in text
    assert "no_such_data_root" not in text and "not found" not in text
    assert not run_dir.exists()  # nothing was created either


# --------------------------------------------------------------------------- W&B offline


def wandb_records(path: Path) -> list[Any]:
    """Records of a ``.wandb`` transaction log (wandb 0.31 no longer ships a Python reader).

    The format is LevelDB's log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last); the payload of a record is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        chunk, pos = raw[pos : pos + length], pos + length
        if kind == 0:  # zero padding at the end of a partially written block
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_run_holds_config_and_final_metrics(cli_runs: dict[str, CliRun]) -> None:
    """What offline wandb 0.31 writes: the run directory ``wandb/offline-run-*/`` with
    ``files/`` (the files registered for upload: our resolved_config.yaml, metrics.json, ...)
    and ``run-<id>.wandb``, the transaction log that ``wandb sync`` replays. There is no
    ``files/wandb-summary.json`` before sync; the config and the summary (our ``final/*``
    metrics) are records of the transaction log, so the test reads them from there."""
    run = cli_runs["wandb"]
    assert run.returncode == 0, run.explain()
    assert "W&B could not start" not in run.stderr, run.explain()
    assert not (run.run_dir / "csv").exists()  # no silent fallback to the CSV logger
    metrics = run.metrics()
    check_metrics(metrics, "test")
    check_table(run.stdout, "test")

    offline = sorted((run.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run.run_dir / "wandb").iterdir())
    files = offline[0] / "files"
    # W&B keeps its own config.yaml in files/ for uploads; ours is resolved_config.yaml
    config_yaml = (files / "resolved_config.yaml").read_text()
    assert "ale" in config_yaml and "TINY" in config_yaml
    assert json.loads((files / "metrics.json").read_text()) == metrics
    summary_json = files / "wandb-summary.json"
    if summary_json.exists():  # written by some wandb versions before sync
        assert "final/zsl_t1" in json.loads(summary_json.read_text())

    logs = list(offline[0].glob("run-*.wandb"))
    assert len(logs) == 1
    records = wandb_records(logs[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds
    run_record = next(r.run for r in records if r.HasField("run"))
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"]["name"] == "ale" and config["data"]["name"] == "TINY"
    assert config["trainer"]["max_epochs"] == 3
    summary: dict[str, Any] = {}
    for record in records:
        if record.HasField("summary"):
            for item in record.summary.update:  # plain keys, or nested ones split at "/"
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    for key in (*PERCENT_KEYS, "wall_time_s"):
        assert summary[f"final/{key}"] == pytest.approx(metrics[key]), key
    assert "train/loss" in summary and "test/zsl_t1" in summary  # curves were logged too
    uploads = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert {"resolved_config.yaml", "metrics.json"} <= uploads
    # the run's plots travel with the W&B run too
    assert (files / "test_seen_unseen_curve.png").stat().st_size > 0
    assert (files / "test_per_class_accuracy.png").stat().st_size > 0
    exit_record = next(r.exit for r in records if r.HasField("exit"))
    assert exit_record.exit_code == 0


def test_wandb_offline_run_holds_model_artifacts(cli_runs: dict[str, CliRun]) -> None:
    """The selected point's best validation checkpoint and the final model.ckpt are versions
    of the model artifact ``model-<run id>`` in the offline run's transaction log; the files
    are referenced in the run directory (uploaded from there by ``wandb sync``)."""
    run = cli_runs["wandb"]
    assert run.returncode == 0, run.explain()
    (log,) = (run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    artifacts = [r.artifact for r in wandb_records(log) if r.HasField("artifact")]
    models = {
        alias: a for a in artifacts if a.type == "model" for alias in a.aliases if alias != "latest"
    }
    assert set(models) == {"val-best", "final"}, [(a.type, a.name) for a in artifacts]
    best = json.loads((run.run_dir / "selection.json").read_text())["best"]
    for alias, relative in (("val-best", best["checkpoint"]), ("final", "model.ckpt")):
        artifact = models[alias]
        assert artifact.name == f"model-{log.stem.removeprefix('run-')}"
        (entry,) = artifact.manifest.contents
        assert Path(entry.local_path).resolve() == (run.run_dir / relative).resolve()
        assert entry.size == (run.run_dir / relative).stat().st_size > 0
    assert json.loads(models["val-best"].metadata)["epochs"] == best["epochs"]


def test_steps_transfer_repeats_the_selected_number_of_updates(tmp_path: Path) -> None:
    """``model.search.transfer=steps``: the trainval fit runs the selected epochs scaled by the
    ratio of training batches per epoch (val protocol / trainval), and says so."""
    from zsl.cli.compose import compose_spec
    from zsl.cli.train import run as main
    from zsl.run.fitting import Session
    from zsl.run.selection import transfer_epochs

    ds = write_xlsa17(tmp_path / "data")
    args = cli_args(ds.root, tmp_path / "run", "data.batch_size=8", "trainer.max_epochs=6")
    args += ["logger=csv", "trainer.enable_progress_bar=false", "+model.search.transfer=steps"]
    args += ["selection.select_epochs=false"]  # all 6 epochs are "selected"
    metrics = main(args)
    session = Session(compose_spec(args), tmp_path / "unused")
    val_batches = len(session.datamodule("val").train_dataloader())
    test_batches = len(session.datamodule("test").train_dataloader())
    assert test_batches > val_batches  # trainval holds more images than the val training set
    expected = transfer_epochs(6, val_batches, test_batches, "steps")
    assert metrics["final_epochs"] == expected
    last = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert last["final_epochs"] == expected
    final = torch.load(tmp_path / "run" / "model.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == expected * test_batches, (expected, final["global_step"])
    assert metrics["selected_epochs"] == 6 and expected < 6


def test_steps_transfer_keeps_cadavae_warmups_in_updates(tmp_path: Path) -> None:
    """CADA-VAE under ``search.transfer: steps``: the trainval fit's warm-ups are rescaled by
    the batches-per-epoch ratio (``metrics.json``'s ``final_params``, the final checkpoint's
    hyper-parameters), the selected parameters are recorded as selected."""
    from zsl.cli.compose import compose_spec
    from zsl.cli.train import run as main
    from zsl.run.fitting import Session

    ds = write_xlsa17(tmp_path / "data")
    small = ["model.params.feature_hidden=[16,16]", "model.params.attribute_hidden=[16,16]"]
    small += ["model.params.latent_dim=4", "model.params.n_seen_per_class=5"]
    small += ["model.params.second_stage.n_synth=5", "model.params.second_stage.synth_ratio=null"]
    small += ["model.params.second_stage.cls_min_steps=5", "model.search.validate_from=0"]
    small += ["model.min_steps_per_epoch=0"]  # the tiny sets' own batches per epoch
    args = cli_args(ds.root, tmp_path / "run", "model=cadavae", "data.batch_size=8", *small)
    args += ["logger=csv", "trainer.enable_progress_bar=false", "++model.search.transfer=steps"]
    args += ["model.search.grid={}", "selection.select_epochs=false", "trainer.max_epochs=4"]
    metrics = main(args)
    session = Session(compose_spec(args), tmp_path / "unused")
    ratio = len(session.datamodule("val").train_dataloader()) / len(
        session.datamodule("test").train_dataloader()
    )
    assert ratio < 1
    selected = metrics["selected_params"]["warmup_scale"]
    assert metrics["final_params"]["warmup_scale"] == pytest.approx(selected * ratio)
    assert {k: v for k, v in metrics["final_params"].items() if k != "warmup_scale"} == {
        k: v for k, v in metrics["selected_params"].items() if k != "warmup_scale"
    }
    final = torch.load(tmp_path / "run" / "model.ckpt", map_location="cpu", weights_only=True)
    assert final["hyper_parameters"]["warmup_scale"] == pytest.approx(selected * ratio)


def test_wandb_offline_run_holds_every_grid_points_validation_epochs(
    cli_runs: dict[str, CliRun],
) -> None:
    """The validation fits log while they run: every grid point's per-epoch validation
    metrics are history rows of the offline W&B run (``selection/point_<i>/<metric>``)."""
    run = cli_runs["wandb"]
    assert run.returncode == 0, run.explain()
    selection = json.loads((run.run_dir / "selection.json").read_text())
    n_points = len(selection["trials"])
    assert n_points > 1  # ALE's shipped grid
    log = next((run.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    rows = [  # wandb 0.31 keeps the key in nested_key
        {
            (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in wandb_records(log)
        if r.HasField("history")
    ]
    for index in range(n_points):
        epochs = [
            row[f"selection/point_{index}/epoch"]
            for row in rows
            if f"selection/point_{index}/epoch" in row
        ]
        assert epochs == [1, 2, 3], (index, epochs)
        values = [
            row[f"selection/point_{index}/zsl_t1"]
            for row in rows
            if f"selection/point_{index}/zsl_t1" in row
        ]
        history = [h["zsl_t1"] for h in selection["trials"][index]["history"]]
        assert values == pytest.approx(history)


def test_progress_lines_name_every_grid_point_and_lightning_banners_show_once(
    cli_runs: dict[str, CliRun],
) -> None:
    run = cli_runs["test_csv"]
    assert run.returncode == 0, run.explain()
    lines = [line for line in run.stdout.splitlines() if line.startswith("point ")]
    finished = [line for line in lines if "· val zsl_t1" in line]
    assert [line.split()[1] for line in finished] == ["1/3", "2/3", "3/3"]
    assert "lr=0.001" in finished[0] and "best" in finished[-1]
    assert "ETA" not in finished[-1]  # every point has been fitted by then
    assert (run.stdout + run.stderr).count("GPU available") <= 1
