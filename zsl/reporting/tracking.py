"""Experiment tracking through Lightning's loggers: Weights & Biases (``logger=wandb``, the
default), CSV (``logger=csv``, also the fallback), TensorBoard (``logger=tensorboard``) and
MLflow (``logger=mlflow``).

* W&B online gives up after ``logger.init_timeout`` seconds (default :data:`WANDB_INIT_TIMEOUT`,
  30) when the server cannot be reached, and the run goes on with W&B offline (one warning
  line; upload later with ``wandb sync``); if W&B cannot start at all, CSV.
* W&B stages some artifact files (e.g. the JSON of a logged table) as copies under its data
  directory, ``~/.local/share/wandb/artifacts/staging`` by default, and removes them only after
  an upload, so an offline run would leave them in the home directory for good. Unless
  ``WANDB_DATA_DIR`` is set, :func:`make_logger` points it at ``<run dir>/wandb/data`` for the
  run: the copies stay with the run they belong to (``wandb sync`` uploads them from there).
* TensorBoard writes its event files to ``<run dir>/tensorboard`` (``tensorboard --logdir
  <run dir>/tensorboard``); tables become text summaries (markdown), the summary metrics
  scalars; checkpoints and run files are not copied (they are in the run directory already).
* MLflow logs to ``logger.tracking_uri``, by default the local file store ``file:<run
  dir>/mlruns`` (offline; MLflow's telemetry is switched off, and ``MLFLOW_ALLOW_FILE_STORE``,
  which MLflow 3 needs for a file store, is set for the run), in the experiment
  ``logger.experiment_name`` with the run directory's name as the run name. Tables, the
  checkpoints and the run files become artifacts of the MLflow run, the summary metrics
  metrics; an MLflow that cannot start (e.g. an unreachable server) falls back to CSV, and
  a failed artifact upload is one warning line, never a failed run.
* TensorBoard and MLflow need the extra ``pip install 'zsl-lightning[loggers]'``: without
  their package :func:`make_logger` raises :class:`~zsl.errors.ConfigError` before training.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from zsl import dist
from zsl.errors import ConfigError

#: the values of ``logger.name`` (one config file each in ``zsl/conf/logger``)
LOGGERS = ("wandb", "csv", "tensorboard", "mlflow")
#: how to install the packages of the optional loggers (TensorBoard, MLflow)
LOGGERS_EXTRA = "pip install 'zsl-lightning[loggers]'"
#: the MLflow experiment of a config without ``logger.experiment_name``
MLFLOW_EXPERIMENT = "zsl"
#: MLflow's environment variable for the tracking URI (``mlflow.set_tracking_uri`` sets it)
_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

#: seconds W&B online may take to start before the run falls back to offline
WANDB_INIT_TIMEOUT = 30.0
#: wandb's environment variable for its data directory (the artifact staging area lives there)
_DATA_DIR_ENV = "WANDB_DATA_DIR"
#: the value :func:`make_logger` gave ``WANDB_DATA_DIR`` (None: the user's own, or unset)
_own_data_dir: str | None = None
#: environment variables :func:`make_logger` set for the run (name -> value); :func:`finish`
#: removes them again
_own_env: dict[str, str] = {}


def wandb_mode(requested: str) -> str:
    """``auto`` -> online when an API key is configured, else offline."""
    if requested != "auto":
        return requested
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def previous_wandb_id(run_dir: Path) -> str | None:
    """The id of the newest W&B run already in ``run_dir/wandb`` (an interrupted run's)."""
    pattern = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(\w+)$")
    found = [m for p in (run_dir / "wandb").glob("*run-*") if (m := pattern.match(p.name))]
    return max(found, key=lambda m: m.group(1)).group(2) if found else None


def make_logger(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> Logger:
    """The run's logger; W&B online that cannot reach its server within ``init_timeout``
    seconds falls back to W&B offline, and W&B that cannot start at all to a CSV logger (one
    warning line each).

    The W&B group defaults to the run directory's name. A resumed run (``resume`` set)
    continues the interrupted W&B run when online (same id); offline W&B cannot resume a run
    (wandb ignores ``resume`` offline and two offline runs with one id overwrite each other
    at sync), so it starts a new run in the same group, tagged ``resumed``. W&B's artifact
    staging goes to ``<run_dir>/wandb/data`` unless ``WANDB_DATA_DIR`` is set (module doc).

    ``logger=tensorboard`` and ``logger=mlflow`` are described in the module doc; without
    their package this raises :class:`~zsl.errors.ConfigError` (one line, before training)."""
    lcfg = cfg.logger
    if lcfg.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if lcfg.name == "tensorboard":
        return _make_tensorboard(run_dir)
    if lcfg.name == "mlflow":
        return _make_mlflow(cfg, run_dir)
    if lcfg.name != "wandb":
        raise ConfigError(f"logger.name: unknown logger {lcfg.name!r}; use {', '.join(LOGGERS)}")
    mode = wandb_mode(lcfg.mode)
    init_timeout = float(lcfg.get("init_timeout") or WANDB_INIT_TIMEOUT)
    # before any start: a failed online start may leave a run folder of its own
    previous = previous_wandb_id(run_dir) if cfg.get("resume") else None
    _stage_in(run_dir)
    try:
        try:
            return _start_wandb(cfg, run_dir, config, mode, init_timeout, previous)
        except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
            if mode != "online":
                raise
            warnings.warn(
                f"W&B could not start online ({_one_line(err)}; logger.init_timeout="
                f"{init_timeout:g} s); logging offline instead, upload later with: wandb sync "
                f"{run_dir / 'wandb'}/offline-run-*",
                stacklevel=2,
            )
        return _start_wandb(cfg, run_dir, config, "offline", init_timeout, previous, quiet=True)
    except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
        warnings.warn(
            f"W&B could not start ({_one_line(err)}); logging to CSV instead",
            stacklevel=2,
        )
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")


def _require(module: str, logger_name: str) -> None:
    """Import ``module`` (the package a logger needs); ConfigError in one line when it is
    missing or cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name == module
        detail = "" if missing else f" (importing it failed: {_one_line(err)})"
        raise ConfigError(
            f"logger={logger_name} needs the {module} package{detail}: {LOGGERS_EXTRA}"
        ) from None


def _make_tensorboard(run_dir: Path) -> TensorBoardLogger:
    """A TensorBoard logger writing its event files to ``run_dir/tensorboard``."""
    _require("tensorboard", "tensorboard")
    return TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
    )


def mlflow_tracking_uri(cfg: DictConfig, run_dir: Path) -> str:
    """``logger.tracking_uri``, or the local file store ``file:<run_dir>/mlruns`` when it is
    null or empty (``MLFLOW_TRACKING_URI`` is not read: a run is offline unless configured)."""
    uri = cfg.logger.get("tracking_uri")
    return str(uri) if uri else f"file:{(run_dir / 'mlruns').absolute()}"


def _mlflow_tags(value: Any) -> dict[str, str]:
    """``logger.tags`` as MLflow tags: a mapping as it is, a list as ``{tag: "true"}``."""
    if value is None:
        return {}
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return {str(tag): "true" for tag in value}
    return {str(value): "true"}


def _make_mlflow(cfg: DictConfig, run_dir: Path) -> Logger:
    """An MLflow logger with its run started (rank zero), named after ``run_dir`` in the
    experiment ``logger.experiment_name``; CSV (one warning line) when MLflow cannot start."""
    lcfg = cfg.logger
    uri = mlflow_tracking_uri(cfg, run_dir)
    # before mlflow is first imported: its import starts the telemetry client otherwise
    _set_env("MLFLOW_DISABLE_TELEMETRY", "true")
    if urlparse(uri).scheme in ("", "file"):
        _set_env("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without
    try:
        _require("mlflow", "mlflow")
    except ConfigError:
        _restore_env()
        raise
    experiment = str(lcfg.get("experiment_name") or MLFLOW_EXPERIMENT)
    tags = _mlflow_tags(lcfg.get("tags"))
    uri_env = os.environ.get(_TRACKING_URI_ENV)
    if cfg.get("resume"):
        tags["zsl.resumed"] = "true"
    try:
        logger = MLFlowLogger(
            experiment_name=experiment, run_name=run_dir.name, tracking_uri=uri, tags=tags
        )
        if dist.is_global_zero():
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)  # the experiment first: Lightning warns when it creates it
            if client.get_experiment_by_name(experiment) is None:
                client.create_experiment(experiment)
            _ = logger.experiment  # start the run now so failures surface here
            if uri_env is None and os.environ.get(_TRACKING_URI_ENV) == uri:
                _own_env[_TRACKING_URI_ENV] = uri  # set by mlflow.set_tracking_uri: finish unsets
    except Exception as err:  # noqa: BLE001 - an MLflow failure must not stop training
        warnings.warn(
            f"MLflow could not start ({_one_line(err)}; logger.tracking_uri={uri}); logging "
            "to CSV instead",
            stacklevel=3,
        )
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    return logger


def _set_env(name: str, value: str) -> None:
    """Set the environment variable ``name`` for the run unless the user set it; :func:`finish`
    removes it again (:func:`_restore_env`)."""
    current = os.environ.get(name)
    if current is not None and current != _own_env.get(name):
        return  # the user's choice
    os.environ[name] = value
    _own_env[name] = value


def _restore_env() -> None:
    """Undo :func:`_set_env` (a variable changed since is left as it is)."""
    for name, value in _own_env.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    _own_env.clear()


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (wandb's messages add lines of advice about its own
    settings, which here are ``logger.*``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else repr(err)}"


def _stage_in(run_dir: Path) -> None:
    """Point wandb's data directory (its artifact staging area) into ``run_dir/wandb/data``,
    unless the user set ``WANDB_DATA_DIR`` themselves; :func:`finish` puts it back."""
    global _own_data_dir
    current = os.environ.get(_DATA_DIR_ENV)
    if current is not None and current != _own_data_dir:
        return  # the user's choice
    _own_data_dir = str((run_dir / "wandb" / "data").absolute())
    os.environ[_DATA_DIR_ENV] = _own_data_dir


def _unstage() -> None:
    """Undo :func:`_stage_in` (nothing when the user set ``WANDB_DATA_DIR``)."""
    global _own_data_dir
    if _own_data_dir is not None and os.environ.get(_DATA_DIR_ENV) == _own_data_dir:
        del os.environ[_DATA_DIR_ENV]
    _own_data_dir = None


def _start_wandb(
    cfg: DictConfig,
    run_dir: Path,
    config: dict[str, Any],
    mode: str,
    init_timeout: float,
    previous: str | None,
    quiet: bool = False,
) -> WandbLogger:
    """A started W&B logger in ``mode`` (raises whatever wandb raises); ``previous``: the id
    of the interrupted run a resumed run continues (see :func:`make_logger`)."""
    lcfg = cfg.logger
    tags = list(lcfg.get("tags") or [])
    run_id = None
    if previous is not None and mode == "online":
        run_id = previous  # WandbLogger passes resume="allow": the same run continues
    elif previous is not None:
        tags.append("resumed")
        config = {**config, "resumed_wandb_run": previous}
    logger = WandbLogger(
        project=lcfg.project,
        entity=lcfg.get("entity"),
        group=lcfg.get("group") or run_dir.name,
        tags=tags,
        id=run_id,
        name=run_dir.name,
        save_dir=str(run_dir),
        mode=mode,
        config=config,
        settings=_wandb_settings(init_timeout),
    )
    # Lightning always passes anonymous=None, which wandb answers with a deprecation warning
    init_args = getattr(logger, "_wandb_init", None)
    if isinstance(init_args, dict) and init_args.get("anonymous") is None:
        init_args.pop("anonymous", None)
    _ = logger.experiment  # start now so failures surface here, not mid-training
    if mode == "offline" and not quiet and dist.is_global_zero():
        print(f"W&B is offline; upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*")
    return logger


def _wandb_settings(init_timeout: float = WANDB_INIT_TIMEOUT) -> Any:
    """wandb settings: quiet, no system stats, and ``init_timeout`` seconds to start."""
    import wandb

    return wandb.Settings(silent=True, x_disable_stats=True, init_timeout=init_timeout)


def log_summary(logger: Logger, metrics: dict[str, Any]) -> None:
    """Final metrics into the W&B run summary, else as metrics of the logger (CSV log,
    TensorBoard scalars, MLflow metrics); rank zero only, numbers only outside W&B."""
    if not dist.is_global_zero():
        return
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(metrics)
        return
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if isinstance(logger, MLFlowLogger):
        _mlflow_call(logger, "log the summary metrics", lambda *_: logger.log_metrics(numbers))
    else:
        logger.log_metrics(numbers)


def log_table(logger: Logger, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table (e.g. validation scores of every selection point): a W&B Table, a TensorBoard
    text summary (a markdown table) or the MLflow artifact ``tables/<key>.json``
    (``{"columns": [...], "data": [[...], ...]}``); nothing for CSV."""
    if isinstance(logger, WandbLogger):
        logger.log_table(key=key, columns=columns, data=rows)
    elif not dist.is_global_zero():
        return
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_text(key, _markdown_table(columns, rows))
    elif isinstance(logger, MLFlowLogger):
        text = json.dumps({"columns": columns, "data": rows}, indent=1, default=_plain)
        _mlflow_call(
            logger,
            f"log the table {key}",
            lambda client, run_id: client.log_text(run_id, text, f"tables/{key}.json"),
        )


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know (NumPy and torch scalars, paths): a number when
    it is one, else its text."""
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - anything without a float value is written as text
        return str(value)


def _markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """``columns`` and ``rows`` as a markdown table (what TensorBoard's text tab renders)."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |"]
    lines.append("|" + " --- |" * len(columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _mlflow_call(logger: MLFlowLogger, action: str, call: Callable[[Any, str], object]) -> None:
    """``call(client, run_id)`` on the logger's MLflow client and run; a failure (e.g. the
    tracking server gone) is one warning line, not a failed run (the run's own files are in
    its directory)."""
    try:
        client, run_id = logger.experiment, logger.run_id
        if run_id is not None:  # None: not rank zero
            call(client, run_id)
    except Exception as err:  # noqa: BLE001 - tracking must not fail a finished run
        warnings.warn(f"MLflow could not {action}: {_one_line(err)}", stacklevel=3)


def attach_files(logger: Logger, paths: list[Path]) -> None:
    """Copy run files (resolved config, metrics, plots) into the W&B run and register them
    for upload, so an offline run directory is self-contained until ``wandb sync``; for
    MLflow, log them as artifacts under ``files/``; nothing for CSV and TensorBoard (the files
    are in the run directory). Rank zero only (the other ranks of a DDP run hold no run)."""
    if not dist.is_global_zero():
        return
    if isinstance(logger, MLFlowLogger):
        files = [str(path) for path in paths if path.is_file()]

        def log_files(client: Any, run_id: str) -> None:
            for file in files:
                client.log_artifact(run_id, file, "files")

        _mlflow_call(logger, "log the run's files", log_files)
        return
    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    files_dir = Path(run.dir)
    for path in paths:
        if path.is_file():
            # W&B keeps its own config.yaml in files/: never overwrite it
            name = "resolved_config.yaml" if path.name == "config.yaml" else path.name
            target = files_dir / name
            shutil.copyfile(path, target)
            run.save(str(target), base_path=str(files_dir), policy="now")


def log_checkpoint(
    logger: Logger, path: Path, aliases: list[str], metadata: dict[str, Any]
) -> None:
    """A checkpoint as a version of the W&B model artifact ``model-<run id>`` (type
    ``model``), or as the MLflow artifacts ``checkpoints/<first alias>/<file name>`` and
    ``.../metadata.json`` (the aliases and ``metadata``); nothing for CSV and TensorBoard,
    on other ranks or for a missing file.

    W&B: the file is referenced where it is (``policy="immutable"``, no copy): an offline run
    records the artifact in its transaction log and ``wandb sync`` uploads the file from the
    run directory, so keep ``checkpoints/`` and ``model.ckpt`` until the run is synced. MLflow
    copies the file into its artifact store (the run's ``mlruns`` folder by default)."""
    if not dist.is_global_zero() or not path.is_file():
        return
    if isinstance(logger, MLFlowLogger):
        folder = f"checkpoints/{aliases[0] if aliases else path.stem}"
        text = json.dumps(
            {"file": path.name, "aliases": aliases, "metadata": metadata},
            indent=1,
            default=_plain,
        )

        def log(client: Any, run_id: str) -> None:
            client.log_artifact(run_id, str(path), folder)
            client.log_text(run_id, text, f"{folder}/metadata.json")

        _mlflow_call(logger, f"log the checkpoint {path.name}", log)
        return
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
    artifact.add_file(str(path), name=path.name, policy="immutable")
    run.log_artifact(artifact, aliases=aliases)


def finish(logger: Logger, exit_code: int = 0) -> None:
    """Close the run (W&B: mark it finished, or failed with ``exit_code`` != 0; MLflow: the
    run's status FINISHED or FAILED; TensorBoard: flush and close the event file) and put
    back the environment :func:`make_logger` changed."""
    status = "success" if exit_code == 0 else "failed"
    if isinstance(logger, WandbLogger):
        import wandb

        logger.finalize(status)
        wandb.finish(exit_code=exit_code)
    elif isinstance(logger, MLFlowLogger):
        try:
            logger.finalize(status)  # rank zero only
        except Exception as err:  # noqa: BLE001 - tracking must not fail a finished run
            warnings.warn(f"MLflow could not close the run: {_one_line(err)}", stacklevel=2)
    elif isinstance(logger, TensorBoardLogger):
        logger.finalize(status)
    else:
        logger.save()
    _unstage()
    _restore_env()
