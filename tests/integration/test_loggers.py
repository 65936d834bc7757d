"""``logger=tensorboard`` and ``logger=mlflow``: tiny in-process runs (offline, everything
inside temporary folders), read back with the loggers' own readers, and the one-line config
error when a logger's package is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, tiny_cli_args, write_xlsa17

from zsl.cli.train import run
from zsl.errors import ConfigError
from zsl.reporting import tracking
from zsl.reporting.settings import LoggerSpec

pytestmark = pytest.mark.slow

#: summary metrics every test-protocol run logs (``final/<key>``)
FINAL_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal", "gamma")
#: environment variables the MLflow logger may set for a run (and must put back)
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HOME, the XDG folders and the temporary folder inside ``tmp_path/home``, the working
    directory ``tmp_path/cwd``, no MLflow settings from the environment; after the test, the
    repository has no new top-level entry (e.g. ``mlruns``, ``lightning_logs``)."""
    home = tmp_path / "home"
    for var, sub in (
        ("HOME", ""),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_CONFIG_HOME", ".config"),
        ("TMPDIR", "tmp"),
    ):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setattr(tempfile, "tempdir", str(home / "tmp"))  # gettempdir() caches it
    for var in MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    repo_before = set(os.listdir(REPO_ROOT))
    yield home
    assert set(os.listdir(REPO_ROOT)) - repo_before == set()


def tiny_run(tmp_path: Path, logger: str) -> tuple[dict, Path]:
    """A two-epoch ALE run with ``logger=<logger>`` on the tiny dataset: (metrics, run dir)."""
    tiny = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = [a for a in tiny_cli_args(tiny.root, run_dir) if not a.startswith("logger=")]
    metrics = run([*args, f"logger={logger}"])
    assert metrics is not None
    return metrics, run_dir


def outside_run_dir(tmp_path: Path, run_dir: Path) -> list[Path]:
    """Files written under ``tmp_path`` but neither in the run directory nor in the data."""
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file()
        and not p.is_relative_to(run_dir)
        and not p.is_relative_to(tmp_path / "data")
        # matplotlib's font cache (the plots) is not the loggers'
        and "matplotlib" not in p.parts
    ]


def test_tensorboard_run_writes_event_files_in_the_run_directory(
    isolated: Path, tmp_path: Path
) -> None:
    """Event files in ``<run dir>/tensorboard`` with the final metrics and the selection
    table (a text summary); nothing written anywhere else."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = tiny_run(tmp_path, "tensorboard")
    log_dir = run_dir / "tensorboard"
    assert sorted(log_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for key in FINAL_KEYS:
        assert f"final/{key}" in scalars
        (value,) = [e.value for e in events.Scalars(f"final/{key}")]
        assert value == pytest.approx(metrics[key], rel=1e-5, abs=1e-5)
    assert any(tag.startswith("selection/point_1/") for tag in scalars)
    # add_text is stored as a tensor summary of the text plugin
    assert any(tag.startswith("selection/validation") for tag in events.Tags()["tensors"])
    assert outside_run_dir(tmp_path, run_dir) == []


def test_mlflow_run_logs_to_a_file_store_in_the_run_directory(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MLflow run named after the run directory in ``<run dir>/mlruns`` (experiment
    ``zsl``), FINISHED, with the final metrics and the run's files, tables and checkpoints as
    artifacts; nothing written anywhere else, the environment put back."""
    metrics, run_dir = tiny_run(tmp_path, "mlflow")
    store = run_dir / "mlruns"
    assert store.is_dir()
    assert all(os.environ.get(var) is None for var in MLFLOW_ENV)  # put back by finish
    assert outside_run_dir(tmp_path, run_dir) == []

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores so
    client = MlflowClient(f"file:{store}")
    experiment = client.get_experiment_by_name("zsl")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run_dir.name
    assert found.info.status == "FINISHED"
    mlflow_run = client.get_run(found.info.run_id)
    for key in FINAL_KEYS:
        assert mlflow_run.data.metrics[f"final/{key}"] == pytest.approx(
            metrics[key], rel=1e-5, abs=1e-5
        )
    assert any(k.startswith("selection/point_1/") for k in mlflow_run.data.metrics)
    run_id = found.info.run_id
    files = {Path(a.path).name for a in client.list_artifacts(run_id, "files")}
    assert {"config.yaml", "metrics.json", "selection.json"} <= files
    logged = json.loads(
        Path(
            client.download_artifacts(run_id, "files/metrics.json", str(tmp_path / "dl"))
        ).read_text()
    )
    assert logged["zsl_t1"] == metrics["zsl_t1"]
    table = json.loads(
        Path(
            client.download_artifacts(
                run_id, "tables/selection/validation.json", str(tmp_path / "dl")
            )
        ).read_text()
    )
    assert "zsl_t1" in table["columns"] and len(table["data"]) >= 1
    final = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints/final")}
    assert final == {"model.ckpt", "metadata.json"}


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_missing_logger_package_is_one_config_error_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without the logger's package the run stops before training with one ``config error``
    line naming the package and the extra; the new run directory is removed."""
    monkeypatch.setitem(sys.modules, name, None)  # ``import <name>`` fails like a missing one
    for var in MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    tiny = write_xlsa17(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = [a for a in tiny_cli_args(tiny.root, run_dir) if not a.startswith("logger=")]
    with pytest.raises(SystemExit) as stop:
        run([*args, f"logger={name}"])
    message = str(stop.value.code)
    assert message == (
        f"config error: logger={name} needs the {name} package: "
        "pip install 'zsl-lightning[loggers]'"
    )
    assert "\n" not in message
    out, err_text = capsys.readouterr()
    assert "fitting" not in out + err_text  # stopped before the first fit
    assert not run_dir.exists()
    assert all(os.environ.get(var) is None for var in MLFLOW_ENV)


def test_unknown_logger_name_is_a_config_error() -> None:
    """``logger.name`` outside the four known names: ConfigError listing them."""
    cfg = LoggerSpec(name="neptune")
    with pytest.raises(ConfigError, match="use wandb, csv, tensorboard, mlflow"):
        tracking.make_logger(cfg, Path("unused"), {})


#: a fresh interpreter starts an MLflow logger and writes what it finds
TELEMETRY_PROBE = """
import json, sys
from pathlib import Path
from zsl.reporting import tracking
from zsl.reporting.settings import LoggerSpec
cfg = LoggerSpec(name="mlflow", tracking_uri=None)
logger = tracking.make_logger(cfg, Path(sys.argv[1]), {})
from mlflow.telemetry import get_telemetry_client
print(json.dumps({"client": repr(get_telemetry_client()), "type": type(logger).__name__}))
tracking.finish(logger)
"""


def test_mlflow_telemetry_stays_off(tmp_path: Path) -> None:
    """MLflow 3 starts a telemetry client (network, ``~/.config/mlflow``) on import unless it
    is switched off or sees a CI/test environment: in a fresh interpreter with neither, the
    logger starts it switched off and nothing lands in the home directory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {  # from scratch: no CI or PYTEST_* variables that would switch telemetry off
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "TMPDIR": str(tmp_path),
    }
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, str(run_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe == {"client": "None", "type": "MLFlowLogger"}
    assert [p for p in home.rglob("*") if p.is_file()] == []
    assert (run_dir / "mlruns").is_dir()


def test_mlflow_that_cannot_start_falls_back_to_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tracking URI MLflow cannot use: one warning line and the CSV logger, the
    environment put back when the run finishes."""
    import warnings

    from pytorch_lightning.loggers import CSVLogger

    for var in MLFLOW_ENV:
        monkeypatch.delenv(var, raising=False)
    cfg = LoggerSpec(name="mlflow", tracking_uri="nosuch://host/x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = tracking.make_logger(cfg, tmp_path / "run", {})
    assert isinstance(logger, CSVLogger)
    messages = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("MLflow could not start (")
    assert messages[0].endswith("logger.tracking_uri=nosuch://host/x); logging to CSV instead")
    tracking.finish(logger)
    assert all(os.environ.get(var) is None for var in MLFLOW_ENV)
