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

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import (
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from zsl import dist
from zsl.reporting.loggers import (
    LOGGERS,
    make_logger,
    mlflow_tracking_uri,
    one_line,
    reset_run_environment,
)
from zsl.reporting.settings import LoggerSpec

__all__ = [
    "LOGGERS",
    "LoggerSpec",
    "attach_files",
    "finish",
    "log_checkpoint",
    "log_summary",
    "log_table",
    "make_logger",
    "mlflow_tracking_uri",
]


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
        warnings.warn(f"MLflow could not {action}: {one_line(err)}", stacklevel=3)


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
            warnings.warn(f"MLflow could not close the run: {one_line(err)}", stacklevel=2)
    elif isinstance(logger, TensorBoardLogger):
        logger.finalize(status)
    else:
        logger.save()
    reset_run_environment()
