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
    from zsl.reporting.plots import plot_seen_unseen_curve

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
    acc = evaluation.per_class
    seen = set(space.seen_ids.tolist())
    ids = torch.cat([space.seen_ids, space.unseen_ids]).cpu().tolist()
    names = space.class_names
    rows = [
        [names[i], "seen" if i in seen else "unseen", round(100 * float(acc[i]), 3)]
        for i in ids
        if not torch.isnan(acc[i])
    ]
    tracking.log_table(logger, f"{stage}/per_class_accuracy", ["class", "split", "accuracy"], rows)
    path = run_dir / f"{stage}_per_class_accuracy.png"
    plot_per_class_accuracy(
        [r[0] for r in rows],
        [r[2] for r in rows],
        [r[1] == "seen" for r in rows],
        path,
        title=title or stage,
    )
    written.append(path)
    if isinstance(logger, WandbLogger):
        for path in written:
            logger.log_image(key=f"{stage}/{path.stem}", images=[str(path)])
    return written


def plot_per_class_accuracy(
    names: list[str], accuracies: list[float], seen: list[bool], path: Path, title: str = ""
) -> Path:
    """Horizontal bar chart of per-class accuracy (percent): unseen classes (orange) above seen
    ones (blue), each group sorted by accuracy, with each group's mean (= u and s) marked;
    ``title`` names the model, dataset and split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(names)), key=lambda i: (seen[i], accuracies[i]))
    height = max(3.0, 0.12 * len(names) + 1.0)
    fig, ax = plt.subplots(figsize=(6, min(height, 40)), dpi=100)
    colors = ["tab:blue" if seen[i] else "tab:orange" for i in order]
    ax.barh(range(len(order)), [accuracies[i] for i in order], color=colors)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(
        [names[i] for i in order], fontsize=max(3, min(8, 400 // max(1, len(names))))
    )
    for flag, color, label in ((False, "tab:orange", "u"), (True, "tab:blue", "s")):
        values = [a for a, s in zip(accuracies, seen) if s == flag]
        if values:
            mean = sum(values) / len(values)
            ax.axvline(mean, color=color, ls="--", lw=1, label=f"{label} = {mean:.1f}")
    ax.set_xlabel("per-class top-1 accuracy, GZSL (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize=7)
    heading = f"{title}: " if title else ""
    ax.set_title(f"{heading}per-class accuracy (blue: seen, orange: unseen)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
