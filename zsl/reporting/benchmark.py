"""The benchmark's summary figure and its W&B record (``zsl-benchmark``).

Both take the rows of :func:`zsl.cli.benchmark.aggregate`: one dict per (dataset, method) with
the mean over seeds of every metric (``zsl_t1``, ``gzsl_u``, ``gzsl_s``, ``gzsl_h``,
``gzsl_h_cal``, ``wall_time_s``), its ``<key>_std``, ``seeds`` and ``synthetic`` (the runs'
features were generated at the dataset's real shapes, not read: timing/pipeline rows, not
accuracy results). Matplotlib with the non-interactive Agg backend, as in
:mod:`zsl.reporting.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from zsl.reporting.plots import save_figure  # noqa: E402

Row = Mapping[str, Any]

#: the aggregated metrics of a row, in table order (``wall_time_s`` is the time per run)
METRIC_KEYS: tuple[str, ...] = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")

#: harmonic means drawn as iso-H lines in the u-vs-s panel
ISO_H: tuple[float, ...] = (20.0, 40.0, 60.0)

SYNTHETIC_SUFFIX = " (synthetic features)"


def dataset_label(row: Row) -> str:
    """The dataset's name as tables and the figure show it: ``SUN (synthetic features)`` for a
    row whose runs used generated features, else the name itself."""
    return f"{row['dataset']}{SYNTHETIC_SUFFIX if row.get('synthetic') else ''}"


def table_columns() -> list[str]:
    """The columns of the W&B benchmark table (see :func:`table_data`)."""
    means = [k for key in METRIC_KEYS for k in (key, f"{key}_std")]
    return ["dataset", "method", "seeds", *means, "time_per_run_s", "time_per_run_s_std"] + [
        "synthetic"
    ]


def table_data(rows: Sequence[Row]) -> list[list[Any]]:
    """One list per aggregated row, in the order of :func:`table_columns`."""
    data = []
    for row in rows:
        values = [float(row[k]) for key in METRIC_KEYS for k in (key, f"{key}_std")]
        data.append(
            [str(row["dataset"]), str(row["model"]), int(row["seeds"]), *values]
            + [float(row["wall_time_s"]), float(row["wall_time_s_std"])]
            + [bool(row.get("synthetic", False))]
        )
    return data


def summary_figure(rows: Sequence[Row], path: str | Path) -> Path:
    """One PNG of two panels: (left) GZSL H per method, one bar per dataset (mean over seeds,
    std as error bar); (right) GZSL u against s for every (dataset, method) cell, labelled by
    method, over iso-H lines (:data:`ISO_H`). Synthetic-feature rows are hatched bars and
    hollow markers, and their dataset reads ``... (synthetic features)`` in the legends."""
    if not rows:
        raise ValueError("summary_figure needs at least one aggregated row")
    methods = list(dict.fromkeys(str(r["model"]) for r in rows))
    labels = list(dict.fromkeys(dataset_label(r) for r in rows))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colours = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
    cells = {(dataset_label(r), str(r["model"])): r for r in rows}

    left = max(5.0, 1.0 + 0.22 * len(methods) * len(labels))  # inches for the bars
    fig, (bars, scatter) = plt.subplots(
        1, 2, figsize=(left + 6.0, 6.0), dpi=120, gridspec_kw={"width_ratios": [left, 6.0]}
    )
    width = 0.8 / len(labels)
    x = np.arange(len(methods))
    for i, label in enumerate(labels):
        mine = [cells.get((label, m)) for m in methods]
        heights = [float(r["gzsl_h"]) if r else np.nan for r in mine]
        errors = [float(r["gzsl_h_std"]) if r else 0.0 for r in mine]
        synthetic = label.endswith(SYNTHETIC_SUFFIX)
        bars.bar(
            x - 0.4 + width * (i + 0.5),
            heights,
            width,
            yerr=errors,
            capsize=2,
            color=colours[label],
            hatch="//" if synthetic else None,
            edgecolor="black" if synthetic else colours[label],
            linewidth=0.5,
            error_kw={"elinewidth": 0.8},
            label=label,
        )
    bars.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
    bars.set_ylabel("GZSL H (%), mean ± std over seeds")
    bars.set_ylim(0, 100)
    bars.grid(axis="y", alpha=0.3)
    bars.set_title("GZSL harmonic mean H per method", fontsize=10)
    bars.legend(fontsize=7, loc="upper right")

    _iso_h(scatter)
    for row in rows:
        label, s, u = dataset_label(row), float(row["gzsl_s"]), float(row["gzsl_u"])
        synthetic = bool(row.get("synthetic", False))
        scatter.errorbar(
            s,
            u,
            xerr=float(row["gzsl_s_std"]),
            yerr=float(row["gzsl_u_std"]),
            fmt="o",
            ms=5,
            color=colours[label],
            mfc="none" if synthetic else colours[label],
            elinewidth=0.6,
            capsize=1.5,
        )
        scatter.annotate(
            str(row["model"]), (s, u), xytext=(3, 3), textcoords="offset points", fontsize=6
        )
    handles = [
        Patch(
            facecolor="none" if label.endswith(SYNTHETIC_SUFFIX) else colours[label],
            edgecolor=colours[label],
            label=label,
        )
        for label in labels
    ]
    scatter.legend(handles=handles, fontsize=7, loc="lower right")
    scatter.set_xlabel("GZSL seen-class accuracy s (%)")
    scatter.set_ylabel("GZSL unseen-class accuracy u (%)")
    scatter.set_xlim(0, 100)
    scatter.set_ylim(0, 100)
    scatter.set_aspect("equal")
    scatter.grid(alpha=0.3)
    scatter.set_title("GZSL u vs s (dashed: iso-H)", fontsize=10)
    if any(label.endswith(SYNTHETIC_SUFFIX) for label in labels):
        fig.suptitle(
            "hatched bars / hollow markers: synthetic features at the real shapes "
            "(timing/pipeline rows, not accuracy results)",
            fontsize=8,
        )
    return save_figure(fig, path)


def _iso_h(ax: Any) -> None:
    """Dashed lines of constant harmonic mean ``H = 2us / (u + s)`` (:data:`ISO_H`)."""
    grid = np.linspace(0.5, 100, 400)
    s, u = np.meshgrid(grid, grid)
    h = 2 * u * s / (u + s)
    lines = ax.contour(s, u, h, levels=list(ISO_H), colors="grey", linestyles="--", linewidths=0.7)
    ax.clabel(lines, fmt="H=%g", fontsize=7)


def log_to_wandb(
    rows: Sequence[Row], figure_path: str | Path, name: str, results_dir: str | Path
) -> None:
    """Log the benchmark to a W&B run (project ``zsl``, job type ``benchmark``, named
    ``name``, its directory ``<results_dir>/wandb/``): the table ``benchmark/table`` (one row
    per aggregated row, see :func:`table_columns`) and the summary figure as the image
    ``benchmark/summary``; then finish the run.

    ``WANDB_MODE`` is respected; without it the run is online when ``WANDB_API_KEY`` is set and
    offline otherwise (then ``wandb sync`` uploads it later)."""
    import os

    import wandb

    from zsl.reporting.tracking import _wandb_settings, wandb_mode

    mode = wandb_mode(os.environ.get("WANDB_MODE") or "auto")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project="zsl",
        job_type="benchmark",
        name=name,
        dir=str(results_dir),
        mode=mode,  # type: ignore[arg-type]
        config={
            "benchmark": name,
            "datasets": sorted({str(r["dataset"]) for r in rows}),
            "methods": list(dict.fromkeys(str(r["model"]) for r in rows)),
        },
        settings=_wandb_settings(),
    )
    run_dir = Path(run.dir).parent  # <results_dir>/wandb/<offline->run-<time>-<id>
    try:
        columns: list[str | int] = list(table_columns())
        table = wandb.Table(columns=columns, data=table_data(rows))
        run.log({"benchmark/table": table, "benchmark/summary": wandb.Image(str(figure_path))})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    if mode == "offline":
        print(f"W&B is offline; upload later with: wandb sync {run_dir}")
