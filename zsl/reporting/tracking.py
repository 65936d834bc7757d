"""Experiment tracking: Weights & Biases through Lightning's WandbLogger, CSV as fallback.

* W&B online gives up after ``logger.init_timeout`` seconds (default :data:`WANDB_INIT_TIMEOUT`,
  30) when the server cannot be reached, and the run goes on with W&B offline (one warning
  line; upload later with ``wandb sync``); if W&B cannot start at all, CSV.
* W&B stages some artifact files (e.g. the JSON of a logged table) as copies under its data
  directory, ``~/.local/share/wandb/artifacts/staging`` by default, and removes them only after
  an upload, so an offline run would leave them in the home directory for good. Unless
  ``WANDB_DATA_DIR`` is set, :func:`make_logger` points it at ``<run dir>/wandb/data`` for the
  run: the copies stay with the run they belong to (``wandb sync`` uploads them from there).
"""

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

#: seconds W&B online may take to start before the run falls back to offline
WANDB_INIT_TIMEOUT = 30.0
#: wandb's environment variable for its data directory (the artifact staging area lives there)
_DATA_DIR_ENV = "WANDB_DATA_DIR"
#: the value :func:`make_logger` gave ``WANDB_DATA_DIR`` (None: the user's own, or unset)
_own_data_dir: str | None = None


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
    staging goes to ``<run_dir>/wandb/data`` unless ``WANDB_DATA_DIR`` is set (module doc)."""
    lcfg = cfg.logger
    if lcfg.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if lcfg.name != "wandb":
        raise ValueError(f"unknown logger {lcfg.name!r}; use wandb or csv")
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
    _unstage()
