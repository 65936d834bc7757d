"""``python train.py [group=name ...] [a.b=value ...]``: select on validation, test once.

Flow: compose + validate the config (before any data is read) -> for every search point fit
the ``val`` protocol and record validation metrics per epoch -> pick the point, the epoch
count and the calibration gamma -> (``data.protocol=test``) refit on ``trainval`` and evaluate
the test split exactly once -> print a table, write ``config.yaml``, ``metrics.json`` and
``selection.json`` into the run directory.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from zsl import tracking
from zsl.config import ConfigError, compose, to_container
from zsl.data.datamodule import ZSLDataModule
from zsl.data.errors import DataError
from zsl.data.xlsa17 import ZSLData, load_xlsa17
from zsl.models import get_model_class
from zsl.models.base import LeakageError, ZSLModule
from zsl.report import write_reports
from zsl.selection import Selection, select

REPORT_KEYS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_u_cal", "gzsl_s_cal", "gzsl_h_cal")


def make_run_dir(cfg: DictConfig) -> Path:
    """The run directory; an existing non-empty one is never overwritten."""
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.paths.runs_dir) / f"{cfg.data.name}_{cfg.model.name}_{stamp}"
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

    def model(self, dm: ZSLDataModule, params: dict[str, Any]) -> ZSLModule:
        space = dm.class_space
        model = self.model_cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
        model.set_class_space(space)
        return model

    def trainer(self, max_epochs: int, logger: Logger | bool, validate: bool) -> pl.Trainer:
        tcfg = self.cfg.trainer
        return pl.Trainer(
            max_epochs=1 if self.model_cls.closed_form else max_epochs,
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            precision=tcfg.precision,
            deterministic=tcfg.deterministic,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=bool(tcfg.enable_progress_bar),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if validate else 0,
            log_every_n_steps=int(tcfg.log_every_n_steps),
            gradient_clip_val=tcfg.get("gradient_clip_val"),
            default_root_dir=str(self.run_dir) if self.run_dir else None,
        )

    def fit_val(self, params: dict[str, Any], logger: Logger | bool = False) -> ZSLModule:
        """Fit on the val protocol, validating every epoch; returns the fitted model."""
        pl.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        dm = self.datamodule("val")
        model = self.model(dm, params)
        self.trainer(int(self.cfg.trainer.max_epochs), logger, validate=True).fit(model, dm)
        return model

    def fit_test(
        self, params: dict[str, Any], epochs: int, gamma: float, logger: Logger | bool
    ) -> ZSLModule:
        """Refit on trainval for ``epochs`` and evaluate the test split once."""
        pl.seed_everything(int(self.cfg.seed), workers=True, verbose=False)
        dm = self.datamodule("test")
        model = self.model(dm, params)
        model.gamma.fill_(gamma)
        trainer = self.trainer(epochs, logger, validate=False)
        trainer.fit(model, dm)
        trainer.test(model, dm, verbose=False)
        if self.run_dir is not None:
            trainer.save_checkpoint(self.run_dir / "model.ckpt")
        return model


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Selection on validation classes, then (test protocol) one final test evaluation."""
    start = time.perf_counter()
    runner = Runner(cfg, run_dir)
    config = to_container(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    logger = tracking.make_logger(cfg, run_dir, config)
    protocol = cfg.data.protocol
    n_points = 1

    def fit_val(params: dict[str, Any]) -> tuple[list[dict[str, float]], float]:
        t0 = time.perf_counter()
        # with a single point the val fit is the run itself in the val protocol: log it
        log: Logger | bool = logger if (protocol == "val" and n_points == 1) else False
        model = runner.fit_val(params, log)
        return model.eval_history, time.perf_counter() - t0

    from zsl.selection import grid_points

    use_grid = bool(cfg.selection.grid)
    n_points = len(grid_points(cfg.model, use_grid))
    selection = select(cfg.model, fit_val, bool(cfg.selection.select_epochs), use_grid)
    best = selection.best
    cols, rows = selection.rows()
    tracking.log_table(logger, "selection/validation", cols, rows)
    (run_dir / "selection.json").write_text(
        json.dumps(
            {
                "metric": selection.metric,
                "best": asdict(best),
                "trials": [asdict(t) for t in selection.trials],
            },
            indent=2,
            default=float,
        )
    )
    reports: list[Path] = []
    if protocol == "val":
        metrics = dict(best.metrics)
        per_class = None
    else:
        model = runner.fit_test(best.params, best.epochs, best.metrics["gamma"], logger)
        metrics = dict(model.last_eval)
        per_class = model.last_per_class
        reports = write_reports(model, runner.data(protocol).class_names, run_dir, logger, "test")
    metrics.update(
        protocol=protocol,
        dataset=str(cfg.data.name),
        model=str(cfg.model.name),
        selected_params=best.params,
        selected_epochs=best.epochs,
        selection_metric=selection.metric,
        wall_time_s=time.perf_counter() - start,
    )
    if per_class is not None:
        metrics["per_class_accuracy"] = {
            name: (None if torch.isnan(acc) else float(acc))
            for name, acc in zip(runner.data(protocol).class_names, per_class)
        }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
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
    print_table(metrics, selection)
    return metrics


def print_table(metrics: dict[str, Any], selection: Selection) -> None:
    """A small human-readable summary of the final numbers."""
    split = "validation classes" if metrics["protocol"] == "val" else "test split"
    print(
        f"\n{metrics['model']} on {metrics['dataset']} ({split}); selected "
        f"{selection.best.params} epochs={selection.best.epochs} by val {selection.metric}"
    )
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
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    try:
        run_dir = make_run_dir(cfg)
        print(f"run directory: {run_dir}")
        return run(cfg, run_dir)
    except (DataError, FileExistsError, LeakageError, FloatingPointError) as err:
        raise SystemExit(f"error: {err}") from None
