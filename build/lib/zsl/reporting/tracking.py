"""Experiment tracking: Weights & Biases through Lightning's WandbLogger, CSV as fallback."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from zsl import dist


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
    """The run's logger; if W&B cannot start, warn and fall back to a CSV logger.

    The W&B group defaults to the run directory's name. A resumed run (``resume`` set)
    continues the interrupted W&B run when online (same id); offline W&B cannot resume a run
    (wandb ignores ``resume`` offline and two offline runs with one id overwrite each other
    at sync), so it starts a new run in the same group, tagged ``resumed``."""
    lcfg = cfg.logger
    if lcfg.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if lcfg.name != "wandb":
        raise ValueError(f"unknown logger {lcfg.name!r}; use wandb or csv")
    mode = wandb_mode(lcfg.mode)
    tags = list(lcfg.get("tags") or [])
    previous = previous_wandb_id(run_dir) if cfg.get("resume") else None
    run_id = None
    if previous is not None and mode == "online":
        run_id = previous  # WandbLogger passes resume="allow": the same run continues
    elif previous is not None:
        tags.append("resumed")
        config = {**config, "resumed_wandb_run": previous}
    try:
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
            settings=_wandb_settings(),
        )
        _ = logger.experiment  # start now so failures surface here, not mid-training
        if mode == "offline" and dist.is_global_zero():
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
    """Final metrics into the W&B run summary (or the CSV log); rank zero only."""
    if not dist.is_global_zero():
        return
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
    for upload, so an offline run directory is self-contained until ``wandb sync``. Rank zero
    only (the other ranks of a DDP run hold no W&B run)."""
    if not isinstance(logger, WandbLogger) or not dist.is_global_zero():
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
    ``model``); nothing for other loggers, on other ranks or for a missing file.

    The file is referenced where it is (``policy="immutable"``, no copy): an offline run
    records the artifact in its transaction log and ``wandb sync`` uploads the file from the
    run directory, so keep ``checkpoints/`` and ``model.ckpt`` until the run is synced."""
    if not isinstance(logger, WandbLogger) or not dist.is_global_zero() or not path.is_file():
        return
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
    artifact.add_file(str(path), name=path.name, policy="immutable")
    run.log_artifact(artifact, aliases=aliases)


def finish(logger: Logger, exit_code: int = 0) -> None:
    """Close the run (W&B: mark it finished, or failed with ``exit_code`` != 0)."""
    if isinstance(logger, WandbLogger):
        import wandb

        logger.finalize("success" if exit_code == 0 else "failed")
        wandb.finish(exit_code=exit_code)
    else:
        logger.save()
