"""``python train.py [group=option ...] [key=value ...]`` (console script ``zsl-train``).

A thin Hydra front-end over the engine (:func:`zsl.run.protocol.run_protocol`): it composes
the config (``zsl/conf``), checks it, calls the engine, prints the table and maps failures to
one line and an exit status. Hydra's own flags work: ``--help``, ``--cfg job``, ``-m``
(multirun over models, datasets, seeds), and its sweeper and launcher plugins
(``hydra/sweeper=optuna``, ``hydra/launcher=joblib``, ``hydra/launcher=submitit_slurm``).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zsl import dist
from zsl.cli.compose import compose
from zsl.data.errors import DataError
from zsl.errors import ConfigError, LeakageError, ModelLoadError, RunDirError
from zsl.run.config import validate
from zsl.run.store import ResumeError, TrainingInterrupted, make_run_dir, resume_config

if TYPE_CHECKING:
    from zsl.run.protocol import RunResult

#: Hydra's own flags: with one of these, Hydra handles the command line itself
HYDRA_FLAGS = ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def prepare(cfg: DictConfig, argv: list[str]) -> DictConfig:
    """The config that runs: the interrupted run's own with ``resume=``, else ``cfg``."""
    if cfg.get("resume"):
        cfg = resume_config(cfg, argv)
    validate(cfg)
    return cfg


def run_dir_for(cfg: DictConfig) -> Path:
    """The run directory: a DDP worker's inherited one, ``resume``'s, ``output_dir``, the
    Hydra job folder of a multirun, else ``<paths.runs_dir>/<data>_<model>_<time>``."""
    inherited = None if dist.is_global_zero() else dist.inherited_run_dir()
    if inherited is not None:
        return inherited
    output_dir = cfg.get("output_dir")
    if not output_dir and HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            output_dir = hc.runtime.output_dir
    if not dist.is_global_zero():
        return Path(output_dir) if output_dir else Path(cfg.paths.runs_dir)
    stem = f"{cfg.data.name}_{cfg.model.name}"
    return make_run_dir(output_dir, str(cfg.paths.runs_dir), stem, cfg.get("resume"))


def _run(cfg: DictConfig, argv: list[str]) -> RunResult:
    """Prepare the config, create the run directory and run the protocol. A new run that
    fails (other than by SIGTERM) removes its directory, so rerunning the same command works;
    an interrupted or resumed run keeps it."""
    from zsl.run.protocol import run_protocol

    cfg = prepare(cfg, argv)
    run_dir = run_dir_for(cfg)
    if dist.is_global_zero():
        print(f"run directory: {run_dir}")
    try:
        # the ddp strategy re-runs this command in its processes: they reuse this directory
        with dist.export_run_dir(run_dir):
            return run_protocol(cfg, run_dir)
    except TrainingInterrupted:
        raise
    except BaseException:
        if not cfg.get("resume") and dist.is_global_zero():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def train(cfg: DictConfig, argv: list[str]) -> dict[str, Any]:
    """Run one composed config; failures become ``SystemExit`` with one line."""
    from zsl.reporting.table import print_table

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    # Lightning's notes that do not apply to these models: closed-form fits have no optimizer
    # and one batch; checkpoints are the run's own (trusted) files
    warnings.filterwarnings("ignore", ".*configure_optimizers.*returned `None`.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*`weights_only` was not set.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    # DDP: the val/test metrics are computed from states gathered over all ranks (identical on
    # every rank), so Lightning's advice to sync them again does not apply
    warnings.filterwarnings("ignore", r".*self\.log\('(val|test)/.*sync_dist=True.*")
    dist.sync_lightning_rank()
    if not dist.is_global_zero() and dist.inherited_run_dir() is not None:
        dist.exit_with_parent(dist.inherited_parent())  # started by the ddp launcher
    try:
        result = _run(cfg, argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {_one_line(err)}") from None
    except ResumeError as err:
        raise SystemExit(f"resume error: {_one_line(err)}") from None
    except (
        DataError,
        FileExistsError,
        NotADirectoryError,  # output_dir names an existing file
        RunDirError,
        LeakageError,
        ModelLoadError,  # pre-trained weights (CLIP) not found or not loadable offline
        FloatingPointError,
    ) as err:
        raise SystemExit(f"error: {_one_line(err)}") from None
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(143) from None  # 128 + SIGTERM, what a shell reports for a kill
    except Exception as err:
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        if isinstance(err, MisconfigurationException):  # Lightning's own checks
            raise SystemExit(f"config error: trainer: {_one_line(err)}") from None
        raise
    print_table(result.metrics, result.selection)
    return result.metrics


@hydra.main(version_base="1.3", config_path="pkg://zsl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """Hydra's task: one job of a run or of a multirun. Returns the validation objective
    (the selected point's ``model.search.metric``), which Hydra's Optuna sweeper maximises."""
    overrides = list(HydraConfig.get().overrides.task)
    OmegaConf.resolve(cfg)
    metrics = train(cfg, overrides)
    return float(metrics.get(str(metrics.get("selection_metric", "zsl_t1")), float("nan")))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point of ``train.py``, ``python -m zsl`` and ``zsl-train``.

    A plain run is composed and checked here first, so bad input gets one ``config error:``
    line; then Hydra runs it (or, with Hydra flags, handles the whole command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HYDRA_FLAGS or a.startswith(("--cfg=", "--config")) for a in argv):
        sys.argv = [sys.argv[0] or "train.py", *argv]
        _hydra_main()
        return None
    try:
        cfg = compose(argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {_one_line(err)}") from None
    return train(cfg, argv)
