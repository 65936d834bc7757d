"""Experiment tracking: Weights & Biases through Lightning's WandbLogger, CSV as fallback."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger


def wandb_mode(requested: str) -> str:
    """``auto`` -> online when an API key is configured, else offline."""
    if requested != "auto":
        return requested
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def make_logger(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> Logger:
    """The run's logger; if W&B cannot start, warn and fall back to a CSV logger."""
    lcfg = cfg.logger
    if lcfg.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if lcfg.name != "wandb":
        raise ValueError(f"unknown logger {lcfg.name!r}; use wandb or csv")
    mode = wandb_mode(lcfg.mode)
    try:
        logger = WandbLogger(
            project=lcfg.project,
            entity=lcfg.get("entity"),
            group=lcfg.get("group"),
            tags=list(lcfg.get("tags") or []),
            name=run_dir.name,
            save_dir=str(run_dir),
            mode=mode,
            config=config,
            settings=_wandb_settings(),
        )
        _ = logger.experiment  # start now so failures surface here, not mid-training
        if mode == "offline":
            print(
                f"W&B is offline; upload later with: wandb sync {run_dir / 'wandb'}/offline-run-*"
            )
        return logger
    except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
        warnings.warn(
            f"W&B could not start ({type(err).__name__}: {err}); logging to CSV instead",
            stacklevel=2,
        )
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(silent=True, x_disable_stats=True, init_timeout=120)


def log_summary(logger: Logger, metrics: dict[str, Any]) -> None:
    """Final metrics into the W&B run summary (or the CSV log)."""
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(metrics)
    else:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def log_table(logger: Logger, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table (e.g. validation scores of every selection point) as a W&B Table."""
    if isinstance(logger, WandbLogger):
        logger.log_table(key=key, columns=columns, data=rows)


def attach_files(logger: Logger, paths: list[Path]) -> None:
    """Copy run files (resolved config, metrics, plots) into the W&B run and register them
    for upload, so an offline run directory is self-contained until ``wandb sync``."""
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


def finish(logger: Logger) -> None:
    if isinstance(logger, WandbLogger):
        import wandb

        logger.finalize("success")
        wandb.finish()
    else:
        logger.save()
