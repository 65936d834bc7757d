"""``python train.py [group=option ...] [key=value ...]`` (console script ``zsl-train``).

A thin Hydra front-end over the engine (:func:`zsl.run.protocol.run_protocol`): it composes
the config (``zsl/conf``), checks it, calls the engine, prints the table and maps failures to
one line and an exit status. Hydra's own flags work: ``--help``, ``--cfg job``, ``-m``
(multirun over models, datasets, seeds), and its sweeper and launcher plugins
(``hydra/sweeper=optuna``, ``hydra/launcher=joblib``, ``hydra/launcher=submitit_slurm``).
"""

from __future__ import annotations

import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zsl.cli.compose import compose
from zsl.data.errors import DataError
from zsl.errors import (
    ConfigError,
    LeakageError,
    ModelLoadError,
    ResumeError,
    RunDirError,
    RunLockedError,
    TrainingInterrupted,
)
from zsl.run.config import fix_grid_axes, run_spec
from zsl.run.lock import RunLock
from zsl.run.spec import RunSpec

# torch and Lightning are imported when a run needs them (zsl.dist, zsl.run.store and the
# engine), so --help, --cfg job and config errors answer at once

if TYPE_CHECKING:
    from zsl.run.protocol import RunResult

#: Hydra's own flags: with one of these, Hydra handles the command line itself
HYDRA_FLAGS = ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def prepare(cfg: DictConfig, argv: list[str]) -> RunSpec:
    """The run spec that runs, built and validated once (:class:`zsl.run.spec.RunSpec`): the
    interrupted run's own config with ``resume=``, else ``cfg`` with the values typed for grid
    parameters fixing their axes (:func:`zsl.run.config.fix_grid_axes`)."""
    notes = fix_grid_axes(cfg, argv)
    if cfg.get("resume"):
        from zsl.run.store import resume_config

        cfg = resume_config(cfg, argv)
        notes = []
    # before torch and Lightning are imported: config errors answer at once
    spec = run_spec(cfg, strict=not cfg.get("resume"))
    notes += [
        f"{key} in {spec.resume}/config.yaml is not read by this version: ignored"
        for key in spec.ignored
    ]
    from zsl import dist

    if dist.is_global_zero():
        for note in notes:
            print(f"note: {note}", flush=True)
    return spec


def run_dir_for(spec: RunSpec) -> Path:
    """The run directory: a DDP worker's inherited one, ``resume``'s, ``output_dir``, the
    Hydra job folder of a multirun, else ``<paths.runs_dir>/<data>_<model>_<time>``."""
    from zsl import dist
    from zsl.run.store import make_run_dir

    inherited = None if dist.is_global_zero() else dist.inherited_run_dir()
    if inherited is not None:
        return inherited
    output_dir = spec.output_dir
    if not output_dir and HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            output_dir = hc.runtime.output_dir
    if not dist.is_global_zero():
        return Path(output_dir) if output_dir else Path(spec.paths.runs_dir)
    stem = f"{spec.data.name}_{spec.model.name}"
    return make_run_dir(output_dir, spec.paths.runs_dir, stem, spec.resume)


def _run(spec: RunSpec) -> RunResult:
    """Claim the run directory (:class:`zsl.run.lock.RunLock`: one process
    per run directory) and run the protocol. A new run that fails before any grid point was
    validated removes its directory, so rerunning the same command works; an interrupted run
    (SIGTERM, SIGINT) and one that failed later are kept for ``resume=``."""
    from zsl import dist
    from zsl.run.protocol import run_protocol
    from zsl.run.store import claim_new_run_dir, work_saved

    run_dir = run_dir_for(spec)
    new = not spec.resume
    lock = RunLock(run_dir)
    if dist.is_global_zero():
        lock.acquire()  # RunLockedError: another live run owns it (nothing here is ours)
        if lock.stale_holder:
            print(
                f"note: {run_dir} was locked by process {lock.stale_holder.get('pid', '?')}, "
                "which no longer runs; its lock is taken over",
                flush=True,
            )
        try:
            if new and spec.output_dir:
                claim_new_run_dir(run_dir)
        except BaseException:
            lock.release()
            raise
        print(f"run directory: {run_dir}")
    try:
        # the ddp strategy re-runs this command in its processes: they reuse this directory
        with dist.export_run_dir(run_dir):
            return run_protocol(spec, run_dir)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:  # a Ctrl-C outside the protocol's guard
        if new and not (run_dir / "config.yaml").is_file() and dist.is_global_zero():
            shutil.rmtree(run_dir, ignore_errors=True)
            raise TrainingInterrupted(
                "SIGINT received before the run started", signal.SIGINT
            ) from None
        raise TrainingInterrupted(
            f"SIGINT received; continue with: python train.py resume={run_dir}", signal.SIGINT
        ) from None
    except BaseException:
        if dist.is_global_zero():
            if new and not work_saved(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            elif (run_dir / "config.yaml").is_file():
                print(
                    f"the run directory {run_dir} is kept (validated grid points are saved); "
                    f"once the cause is fixed, continue with: python train.py resume={run_dir}",
                    file=sys.stderr,
                )
        raise
    finally:
        lock.release()


def train(cfg: DictConfig, argv: list[str]) -> dict[str, Any]:
    """Run one composed config; failures become ``SystemExit`` with one line. The config is
    checked (:func:`prepare`) before torch and Lightning are imported."""
    try:
        result = _train(cfg, argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {_one_line(err)}") from None
    except ResumeError as err:
        raise SystemExit(f"resume error: {_one_line(err)}") from None
    except (
        DataError,
        FileExistsError,
        NotADirectoryError,  # output_dir names an existing file
        RunDirError,
        RunLockedError,
        LeakageError,
        ModelLoadError,  # pre-trained weights (CLIP) not found or not loadable offline
        FloatingPointError,
    ) as err:
        raise SystemExit(f"error: {_one_line(err)}") from None
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None  # what a shell reports for the signal
    except Exception as err:
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        if isinstance(err, MisconfigurationException):  # Lightning's own checks
            raise SystemExit(f"config error: trainer: {_one_line(err)}") from None
        raise
    from zsl.reporting.table import print_table

    print_table(result.metrics, result.selection)
    return result.metrics


def _train(cfg: DictConfig, argv: list[str]) -> RunResult:
    spec = prepare(cfg, argv)
    from zsl import dist

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
    return _run(spec)


@hydra.main(version_base="1.3", config_path="pkg://zsl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """Hydra's task: one job of a run or of a multirun. Returns the validation objective
    (the selected point's ``model.search.metric``), which Hydra's Optuna sweeper maximises."""
    overrides = list(HydraConfig.get().overrides.task)
    OmegaConf.resolve(cfg)
    metrics = train(cfg, overrides)
    return float(metrics.get(str(metrics.get("selection_metric", "zsl_t1")), float("nan")))


def check_launcher(argv: list[str]) -> None:
    """A multirun on the SLURM launcher needs SLURM's commands here; refuse it in one line
    before Hydra starts (submitit would fail with a traceback)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    slurm = any(a == "experiment=slurm" or "submitit_slurm" in a for a in argv)
    if multirun and slurm:
        missing = [name for name in ("sbatch", "srun") if shutil.which(name) is None]
        if missing:
            raise SystemExit(
                f"error: the SLURM launcher (experiment=slurm, hydra/launcher=submitit_slurm) "
                f"needs {' and '.join(missing)} on PATH, not found here: run it on a SLURM "
                "login node, or use experiment=local_parallel to run the jobs on this machine"
            )


def run(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run ``python train.py <argv>`` in this process and return the run's metrics (None when
    Hydra handled the command line itself: ``--help``, ``--cfg``, ``-m``).

    A plain run is composed and checked here first, so bad input gets one ``config error:``
    line; then Hydra runs it (or, with Hydra flags, handles the whole command line). Failures
    raise ``SystemExit`` with one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HYDRA_FLAGS or a.startswith(("--cfg=", "--config")) for a in argv):
        check_launcher(argv)
        sys.argv = [sys.argv[0] or "train.py", *argv]
        _hydra_main()
        return None
    try:
        cfg = compose(argv)  # with check_data_files: before torch and Lightning are imported
    except ConfigError as err:
        raise SystemExit(f"config error: {_one_line(err)}") from None
    except DataError as err:
        raise SystemExit(f"error: {_one_line(err)}") from None
    return train(cfg, argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``train.py``, ``python -m zsl`` and ``zsl-train``: exit status 0 after
    a successful run (the metrics are in the run directory; :func:`run` returns them)."""
    run(argv)
