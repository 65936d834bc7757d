"""End-of-run reports: seen-unseen curve and per-class accuracy, as files and W&B media."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.loggers import Logger, WandbLogger

from zsl import dist
from zsl.data.types import ClassSpace
from zsl.evaluation import Evaluation
from zsl.reporting import tracking


def write_reports(
    evaluation: Evaluation,
    space: ClassSpace,
    run_dir: Path,
    logger: Logger,
    stage: str,
    title: str = "",
) -> list[Path]:
    """Save the seen-unseen curve and the per-class accuracy chart of one evaluation; log both
    and a per-class table to W&B. Returns the files written (none on the other ranks of a DDP
    run). ``title`` names the model, dataset and split in the figures."""
    if not dist.is_global_zero():
        return []
    from zsl.reporting.plots import plot_per_class_accuracy, plot_seen_unseen_curve

    written: list[Path] = []
    gammas, u, s = evaluation.curve
    path = run_dir / f"{stage}_seen_unseen_curve.png"
    m = evaluation.metrics
    chosen = (
        None
        if evaluation.gamma_source == "none"
        else (m["gamma"], m["gzsl_u_cal"], m["gzsl_s_cal"])
    )
    plot_seen_unseen_curve(
        gammas, u, s, path, title=f"{title or stage}: seen-unseen curve", chosen=chosen
    )
    written.append(path)
    acc, cal = evaluation.per_class, evaluation.per_class_cal
    seen = set(space.seen_ids.tolist())
    ids = torch.cat([space.seen_ids, space.unseen_ids]).cpu().tolist()
    names = space.class_names
    kept = [i for i in ids if not torch.isnan(acc[i])]
    rows = [
        [names[i], "seen" if i in seen else "unseen", round(100 * float(acc[i]), 3)]
        + ([round(100 * float(cal[i]), 3)] if cal is not None else [])
        for i in kept
    ]
    columns = ["class", "split", "accuracy"] + (["accuracy_calibrated"] if cal is not None else [])
    tracking.log_table(logger, f"{stage}/per_class_accuracy", columns, rows)
    path = run_dir / f"{stage}_per_class_accuracy.png"
    plot_per_class_accuracy(
        [r[0] for r in rows],
        [r[2] for r in rows],
        [r[1] == "seen" for r in rows],
        path,
        title=title or stage,
        calibrated=[r[3] for r in rows] if cal is not None else None,
    )
    written.append(path)
    if isinstance(logger, WandbLogger):
        for path in written:
            logger.log_image(key=f"{stage}/{path.stem}", images=[str(path)])
    return written
