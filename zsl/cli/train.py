"""``python train.py [group=name ...] [a.b=value ...]``: select on validation, test once.

Flow: compose + validate the config (before any data is read) -> for every search point fit
the ``val`` protocol and record validation metrics per epoch -> pick the point, the epoch
count and the calibration gamma -> (``data.protocol=test``) refit on ``trainval`` and evaluate
the test split exactly once -> print a table, write ``config.yaml``, ``metrics.json`` and
``selection.json`` into the run directory. Checkpoints, per-point records and
``resume=<run dir>``: see :mod:`zsl.run.store`.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zsl import dist
from zsl.reporting import tracking
from zsl.run.store import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    TRIALS_DIR,
    ResumeError,
    TrainingInterrupted,
    last_checkpoint,
    resume_config,
    resume_path,
    sigterm_guard,
    validation_checkpoints,
)
from zsl.cli.config import ConfigError, compose, to_container
from zsl.data.datamodule import ZSLDataModule
from zsl.data.errors import DataError
from zsl.data.formats.xlsa17 import ZSLData, load_xlsa17
from zsl.models import get_model_class
from zsl.models.base import LeakageError, ModelLoadError, ZSLModule
from zsl.reporting.report import write_reports
from zsl.run.selection import (
    Selection,
    ValFit,
    grid_points,
    search_metric,
    select,
    transfer_epochs,
    transfer_rule,
)

REPORT_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")


def make_run_dir(cfg: DictConfig) -> Path:
    """The run directory; an existing non-empty one is never overwritten.

    Only global rank zero creates it. The other ranks of a DDP run (``train.py`` runs from the
    top in every process) take the one rank zero exported (:data:`zsl.dist.RUN_DIR_ENV`), else
    ``output_dir`` (torchrun / multi-node launches), and never create or write into it.
    """
    inherited = None if dist.is_global_zero() else dist.inherited_run_dir()
    if inherited is not None:
        return inherited
    if cfg.get("resume"):  # set by resume_config to the interrupted run's directory
        return Path(cfg.resume)
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.paths.runs_dir) / f"{cfg.data.name}_{cfg.model.name}_{stamp}"
    if not dist.is_global_zero():
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run directory {run_dir} already exists and is not empty; choose another output_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class Runner:
    """Builds datamodules, models and trainers from one composed config."""

    def __init__(self, cfg: DictConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.model_cls = get_model_class(cfg.model.name)
        self._data: dict[str, ZSLData] = {}

    def data(self, protocol: str) -> ZSLData:
        if protocol not in self._data:
            dcfg = self.cfg.data
            if dcfg.get("synthetic") is not None:
                from zsl.data.synthetic import SyntheticSpec, ensure_synthetic

                spec = SyntheticSpec(**OmegaConf.to_container(dcfg.synthetic))  # type: ignore
                ensure_synthetic(Path(dcfg.root) / dcfg.name, spec, dcfg.feature_file)
            data = load_xlsa17(
                dcfg.root,
                dcfg.name,
                dcfg.feature_file,
                protocol,
                dcfg.semantics_key,  # type: ignore
            )
            # identity except for models that embed the raw images themselves (CLIP)
            data = self.model_cls.adapt_data(
                data, to_container(self.cfg.model.params), to_container(dcfg)
            )
            self._data[protocol] = data
        return self._data[protocol]

    def datamodule(self, protocol: str) -> ZSLDataModule:
        dcfg = self.cfg.data
        dm = ZSLDataModule(
            name=dcfg.name,
            root=dcfg.root,
            feature_file=dcfg.feature_file,
            protocol=protocol,  # type: ignore[arg-type]
            preprocess=dcfg.preprocess,
            batch_size=0 if self.model_cls.closed_form else int(dcfg.batch_size),
            eval_batch_size=int(dcfg.eval_batch_size),
            val_seen_fraction=float(dcfg.val_seen_fraction),
            split_seed=int(dcfg.split_seed),
            data=self.data(protocol),
        )
        dm.setup()
        return dm

    def train_batches(self, protocol: str) -> int:
        """Training batches per epoch of ``protocol`` (the same on every DDP rank)."""
        return len(self.datamodule(protocol).train_dataloader())

    def model(self, dm: ZSLDataModule, params: dict[str, Any]) -> ZSLModule:
        space = dm.class_space
        try:
            model = self.model_cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
        except ValueError as err:  # the model's own checks of its hyper-parameters
            raise ConfigError(f"model.params ({self.cfg.model.name}): {err}") from err
        model.set_class_space(space)
        return model

    def trainer(
        self,
        max_epochs: int,
        logger: Logger | bool,
        validate: bool,
        callbacks: list[Callback] | None = None,
    ) -> pl.Trainer:
        tcfg = self.cfg.trainer
        callbacks = list(callbacks or [])
        try:
            return pl.Trainer(
                max_epochs=1 if self.model_cls.closed_form else max_epochs,
                accelerator=tcfg.accelerator,
                strategy=dist.make_strategy(str(tcfg.get("strategy", "auto"))),
                devices=tcfg.devices,
                num_nodes=int(tcfg.get("num_nodes", 1)),
                # the datamodule shards every batch itself (ShardedBatchSampler)
                use_distributed_sampler=False,
                precision=tcfg.precision,
                deterministic=tcfg.deterministic,
                logger=logger,
                callbacks=callbacks,
                # only our own ModelCheckpoints (Lightning would add a default one otherwise)
                enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                enable_progress_bar=bool(tcfg.enable_progress_bar),
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=1.0 if validate else 0,
                log_every_n_steps=int(tcfg.log_every_n_steps),
                gradient_clip_val=tcfg.get("gradient_clip_val"),
                default_root_dir=str(self.run_dir) if self.run_dir else None,
            )
        except ValueError as err:  # Lightning's checks of its arguments (e.g. precision)
            raise ConfigError(f"trainer: {err}") from err

    def fit_val(
        self,
        params: dict[str, Any],
        logger: Logger | bool = False,
        checkpoint_dir: Path | None = None,
    ) -> ZSLModule:
        """Fit on the val protocol, validating every epoch; returns the fitted model.

        With ``checkpoint_dir``: ``best.ckpt`` by ``val/<model.search.metric>`` and (iterative
        models) ``last.ckpt`` every epoch; a ``last.ckpt`` already there is resumed from."""
        pl.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        dm = self.datamodule("val")
        model = self.model(dm, params)
        callbacks: list[Callback] = []
        if checkpoint_dir is not None:
            keep_last = not self.model_cls.closed_form  # one epoch: nothing to resume
            callbacks += validation_checkpoints(
                checkpoint_dir, search_metric(self.cfg.model), keep_last
            )
        trainer = self.trainer(
            int(self.cfg.trainer.max_epochs), logger, validate=True, callbacks=callbacks
        )
        name = checkpoint_dir.name if checkpoint_dir is not None else ""
        self._fit(trainer, model, dm, checkpoint_dir, f"the validation fit {name}".strip())
        return model

    def fit_test(
        self,
        params: dict[str, Any],
        epochs: int,
        gamma: float,
        logger: Logger | bool,
        checkpoint_dir: Path | None = None,
    ) -> ZSLModule:
        """Refit on trainval for ``epochs`` and evaluate the test split once.

        With ``checkpoint_dir``: ``last.ckpt`` every epoch, resumed from if already there."""
        pl.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        dm = self.datamodule("test")
        model = self.model(dm, params)
        model.gamma.fill_(gamma)
        callbacks: list[Callback] = []
        if checkpoint_dir is not None and not self.model_cls.closed_form:
            callbacks.append(last_checkpoint(checkpoint_dir))
        trainer = self.trainer(epochs, logger, validate=False, callbacks=callbacks)
        self._fit(trainer, model, dm, checkpoint_dir, "the final trainval fit")
        _interruptible(
            trainer, lambda: trainer.test(model, dm, verbose=False), "the test evaluation"
        )
        if self.run_dir is not None:
            trainer.save_checkpoint(self.run_dir / "model.ckpt")
        return model

    @staticmethod
    def _fit(
        trainer: pl.Trainer,
        model: ZSLModule,
        dm: ZSLDataModule,
        checkpoint_dir: Path | None,
        what: str,
    ) -> None:
        """``trainer.fit``, resumed from ``checkpoint_dir/last.ckpt`` when an interrupted fit
        left one; a SIGTERM becomes :class:`TrainingInterrupted` naming where it stopped."""
        ckpt = resume_path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is not None:
            if dist.is_global_zero():
                print(f"resuming {what} from {ckpt}")
        _interruptible(
            trainer,
            lambda: trainer.fit(model, dm, ckpt_path=str(ckpt) if ckpt is not None else None),
            f"{what} (epoch {{epoch}}, step {{step}})",
        )


def _interruptible(trainer: pl.Trainer, stage: Callable[[], object], what: str) -> None:
    """Run a Lightning stage; a SIGTERM during it becomes :class:`TrainingInterrupted`.

    Lightning ends a SIGTERM'd stage after the current batch with ``SIGTERMException`` (a
    ``SystemExit`` with code 0), or lets it end normally when the signal came during its last
    batch; ``trainer.received_sigterm`` is set either way. ``what`` may name ``{epoch}``
    (1-based) and ``{step}``."""
    try:
        stage()
    except SIGTERMException:
        pass  # trainer.received_sigterm is set: reported below
    if trainer.received_sigterm:
        where = what.format(epoch=trainer.current_epoch + 1, step=trainer.global_step)
        raise TrainingInterrupted(f"SIGTERM received during {where}")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Selection on validation classes, then (test protocol) one final test evaluation.

    With ``cfg.resume`` set (by :func:`zsl.run.store.resume_config`) the run continues in
    ``run_dir``: recorded grid points are skipped and interrupted fits resume from their
    ``last.ckpt``. SIGTERM stops the run with :class:`TrainingInterrupted` (how to resume is
    in its message)."""
    start = time.perf_counter()
    runner = Runner(cfg, run_dir)
    config = to_container(cfg)
    if cfg.get("resume"):
        if dist.is_global_zero():
            print(f"resuming the run in {run_dir} with its config.yaml")
        # our own checkpoint and CSV log folders are expected to hold files now
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
    else:
        dist.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))  # rank zero only
    logger: Logger | None = None
    try:
        with sigterm_guard():
            logger = tracking.make_logger(cfg, run_dir, config)
            metrics, selection = _select_and_test(cfg, run_dir, runner, logger, start)
    except TrainingInterrupted as err:
        if logger is not None:
            tracking.finish(logger, exit_code=1)
        raise TrainingInterrupted(
            f"{err}. Finished grid points and the last epoch-end checkpoint are saved in "
            f"{run_dir}; continue with: python train.py resume={run_dir}"
        ) from None
    print_table(metrics, selection)
    return metrics


def _select_and_test(
    cfg: DictConfig, run_dir: Path, runner: Runner, logger: Logger, start: float
) -> tuple[dict[str, Any], Selection]:
    """The stages of :func:`run`: selection, the final fit and test, files and W&B."""
    protocol = cfg.data.protocol
    use_grid = bool(cfg.selection.grid)
    n_points = len(grid_points(cfg.model, use_grid))

    def fit_val(index: int, params: dict[str, Any]) -> ValFit:
        t0 = time.perf_counter()
        # with a single point the val fit is the run itself in the val protocol: log it
        log: Logger | bool = logger if (protocol == "val" and n_points == 1) else False
        directory = run_dir / CHECKPOINT_DIR / f"val-{index}"
        model = runner.fit_val(params, log, directory)
        best, last = directory / BEST, directory / LAST
        return ValFit(
            model.eval_history,
            time.perf_counter() - t0,
            str(best.relative_to(run_dir)) if best.is_file() else None,
            str(last.relative_to(run_dir)) if last.is_file() else None,
        )

    selection = select(
        cfg.model, fit_val, bool(cfg.selection.select_epochs), use_grid, run_dir / TRIALS_DIR
    )
    best = selection.best
    if best.checkpoint is not None:
        tracking.log_checkpoint(
            logger,
            run_dir / best.checkpoint,
            ["val-best"],
            {"params": best.params, "epochs": best.epochs, "validation": best.metrics},
        )
    cols, rows = selection.rows()
    tracking.log_table(logger, "selection/validation", cols, rows)
    dist.write_text(
        run_dir / "selection.json",
        json.dumps(
            {
                "metric": selection.metric,
                "best": asdict(best),
                "trials": [asdict(t) for t in selection.trials],
            },
            indent=2,
            default=float,
        ),
    )
    reports: list[Path] = []
    final_epochs = best.epochs
    if protocol == "val":
        metrics = dict(best.metrics)
        per_class = None
    else:
        rule = transfer_rule(cfg.model)
        if rule != "epochs" and not runner.model_cls.closed_form:  # only steps needs the sizes
            batches = (runner.train_batches("val"), runner.train_batches("test"))
            final_epochs = transfer_epochs(best.epochs, *batches, rule)
        model = runner.fit_test(
            best.params,
            final_epochs,
            best.metrics["gamma"],
            logger,
            run_dir / CHECKPOINT_DIR / "final",
        )
        metrics = dict(model.last_eval)
        per_class = model.last_per_class
        tracking.log_checkpoint(
            logger,
            run_dir / "model.ckpt",
            ["final"],
            {"params": best.params, "epochs": best.epochs, "test": dict(model.last_eval)},
        )
        reports = write_reports(model, runner.data(protocol).class_names, run_dir, logger, "test")
    metrics.update(
        protocol=protocol,
        dataset=str(cfg.data.name),
        model=str(cfg.model.name),
        selected_params=best.params,
        selected_epochs=best.epochs,
        final_epochs=final_epochs,
        selection_metric=selection.metric,
        wall_time_s=time.perf_counter() - start,
    )
    if per_class is not None:
        metrics["per_class_accuracy"] = {
            name: (None if torch.isnan(acc) else float(acc))
            for name, acc in zip(runner.data(protocol).class_names, per_class)
        }
    dist.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    tracking.log_summary(
        logger,
        {
            f"final/{k}": v
            for k, v in metrics.items()
            if k in REPORT_KEYS or k in ("ausuc", "gamma", "wall_time_s")
        },
    )
    tracking.attach_files(
        logger,
        [run_dir / "config.yaml", run_dir / "metrics.json", run_dir / "selection.json", *reports],
    )
    tracking.finish(logger)
    return metrics, selection


def print_table(metrics: dict[str, Any], selection: Selection) -> None:
    """A small human-readable summary of the final numbers (printed by rank zero only)."""
    if not dist.is_global_zero():
        return
    split = "validation classes" if metrics["protocol"] == "val" else "test split"
    print(
        f"\n{metrics['model']} on {metrics['dataset']} ({split}); selected "
        f"{selection.best.params} epochs={selection.best.epochs} by val {selection.metric}"
    )
    if metrics["final_epochs"] != selection.best.epochs:
        print(f"trainval fit: {metrics['final_epochs']} epochs (the same number of updates)")
    print(f"{'':14}{'ZSL T1':>8}{'u':>8}{'s':>8}{'H':>8}")
    print(
        f"{'uncalibrated':14}{metrics['zsl_t1']:8.2f}{metrics['gzsl_u']:8.2f}"
        f"{metrics['gzsl_s']:8.2f}{metrics['gzsl_h']:8.2f}"
    )
    print(
        f"{'calibrated':14}{'':8}{metrics['gzsl_u_cal']:8.2f}{metrics['gzsl_s_cal']:8.2f}"
        f"{metrics['gzsl_h_cal']:8.2f}   (gamma={metrics['gamma']:.4g})"
    )
    print(f"wall time {metrics['wall_time_s']:.1f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``train.py``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = compose(argv)
        if cfg.get("resume"):  # the interrupted run's saved config (see zsl.run.store)
            cfg = resume_config(cfg, argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    except ResumeError as err:
        raise SystemExit(f"resume error: {err}") from None
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    # DDP: the val/test metrics are computed from states gathered over all ranks (identical on
    # every rank), so Lightning's advice to sync them again does not apply
    warnings.filterwarnings("ignore", r".*self\.log\('(val|test)/.*sync_dist=True.*")
    dist.sync_lightning_rank()
    if not dist.is_global_zero() and dist.inherited_run_dir() is not None:
        dist.exit_with_parent(dist.inherited_parent())  # started by the ddp launcher
    try:
        run_dir = make_run_dir(cfg)
        if dist.is_global_zero():
            print(f"run directory: {run_dir}")
        # the ddp strategy re-runs this command in its processes: they reuse this directory
        with dist.export_run_dir(run_dir):
            return run(cfg, run_dir)
    except (
        DataError,
        FileExistsError,
        NotADirectoryError,  # output_dir names an existing file
        LeakageError,
        ModelLoadError,  # pre-trained weights (CLIP) not found or not loadable offline
        FloatingPointError,
        ResumeError,
    ) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None  # one line
    except ConfigError as err:  # found once the data is known (model and trainer settings)
        raise SystemExit(f"config error: {' '.join(str(err).split())}") from None
    except pl.utilities.exceptions.MisconfigurationException as err:  # Lightning's own checks
        raise SystemExit(f"config error: trainer: {' '.join(str(err).split())}") from None
    except TrainingInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(143) from None  # 128 + SIGTERM, what a shell reports for a kill
