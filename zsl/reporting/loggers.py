"""Starting a run's logger (``logger`` config group): W&B with its online-to-offline fallback
and artifact staging, CSV, TensorBoard and MLflow (see :mod:`zsl.reporting.tracking` for what
each logger receives)."""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf
from pytorch_lightning.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from zsl import dist
from zsl.errors import ConfigError
from zsl.reporting.settings import LoggerSpec

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


def make_logger(
    settings: LoggerSpec, run_dir: Path, config: dict[str, Any], resume: bool = False
) -> Logger:
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
    if settings.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if settings.name == "tensorboard":
        return _make_tensorboard(run_dir)
    if settings.name == "mlflow":
        return _make_mlflow(settings, run_dir, resume)
    if settings.name != "wandb":
        raise ConfigError(
            f"logger.name: unknown logger {settings.name!r}; use {', '.join(LOGGERS)}"
        )
    mode = wandb_mode(settings.mode)
    init_timeout = float(settings.init_timeout or WANDB_INIT_TIMEOUT)
    # before any start: a failed online start may leave a run folder of its own
    previous = previous_wandb_id(run_dir) if resume else None
    _stage_in(run_dir)
    try:
        try:
            return _start_wandb(settings, run_dir, config, mode, init_timeout, previous)
        except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
            if mode != "online":
                raise
            warnings.warn(
                f"W&B could not start online ({one_line(err)}; logger.init_timeout="
                f"{init_timeout:g} s); logging offline instead, upload later with: wandb sync "
                f"{run_dir / 'wandb'}/offline-run-*",
                stacklevel=2,
            )
        return _start_wandb(
            settings, run_dir, config, "offline", init_timeout, previous, quiet=True
        )
    except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
        warnings.warn(
            f"W&B could not start ({one_line(err)}); logging to CSV instead",
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
        detail = "" if missing else f" (importing it failed: {one_line(err)})"
        raise ConfigError(
            f"logger={logger_name} needs the {module} package{detail}: {LOGGERS_EXTRA}"
        ) from None


def _make_tensorboard(run_dir: Path) -> TensorBoardLogger:
    """A TensorBoard logger writing its event files to ``run_dir/tensorboard``."""
    _require("tensorboard", "tensorboard")
    return TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
    )


def mlflow_tracking_uri(settings: LoggerSpec, run_dir: Path) -> str:
    """``logger.tracking_uri``, or the local file store ``file:<run_dir>/mlruns`` when it is
    null or empty (``MLFLOW_TRACKING_URI`` is not read: a run is offline unless configured)."""
    uri = settings.tracking_uri
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


def _make_mlflow(settings: LoggerSpec, run_dir: Path, resume: bool) -> Logger:
    """An MLflow logger with its run started (rank zero), named after ``run_dir`` in the
    experiment ``logger.experiment_name``; CSV (one warning line) when MLflow cannot start."""
    uri = mlflow_tracking_uri(settings, run_dir)
    # before mlflow is first imported: its import starts the telemetry client otherwise
    _set_env("MLFLOW_DISABLE_TELEMETRY", "true")
    if urlparse(uri).scheme in ("", "file"):
        _set_env("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without
    try:
        _require("mlflow", "mlflow")
    except ConfigError:
        _restore_env()
        raise
    experiment = str(settings.experiment_name or MLFLOW_EXPERIMENT)
    tags = _mlflow_tags(settings.tags)
    uri_env = os.environ.get(_TRACKING_URI_ENV)
    if resume:
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
            f"MLflow could not start ({one_line(err)}; logger.tracking_uri={uri}); logging "
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


def one_line(err: BaseException) -> str:
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
    settings: LoggerSpec,
    run_dir: Path,
    config: dict[str, Any],
    mode: str,
    init_timeout: float,
    previous: str | None,
    quiet: bool = False,
) -> WandbLogger:
    """A started W&B logger in ``mode`` (raises whatever wandb raises); ``previous``: the id
    of the interrupted run a resumed run continues (see :func:`make_logger`)."""
    tags = list(settings.tags or [])
    run_id = None
    if previous is not None and mode == "online":
        run_id = previous  # WandbLogger passes resume="allow": the same run continues
    elif previous is not None:
        tags.append("resumed")
        config = {**config, "resumed_wandb_run": previous}
    logger = WandbLogger(
        project=settings.project,
        entity=settings.entity,
        group=settings.group or run_dir.name,
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


def reset_run_environment() -> None:
    """Undo what :func:`make_logger` set for the run: W&B's staging folder and the MLflow
    environment variables."""
    _unstage()
    _restore_env()
