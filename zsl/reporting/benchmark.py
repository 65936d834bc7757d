"""The benchmark's summary figure and its W&B record (``zsl-benchmark``).

Both take the rows of :func:`zsl.reporting.benchmark_tables.aggregate`: one dict per
(dataset, method) with the mean over seeds of every metric (``zsl_t1``, ``gzsl_u``,
``gzsl_s``, ``gzsl_h``, ``gzsl_h_cal``, ``wall_time_s``), its ``<key>_std``, ``seeds`` and
``synthetic`` (the runs' features were generated at the dataset's real shapes, not read:
timing/pipeline rows, not accuracy results). Matplotlib with the non-interactive Agg backend,
as in :mod:`zsl.reporting.plots`.
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

#: how the papers write the methods' names (figures, tables)
DISPLAY_NAMES: dict[str, str] = {
    "dap": "DAP",
    "iap": "IAP",
    "conse": "CONSE",
    "cmt": "CMT",
    "cmt_novelty": "CMT*",
    "sse": "SSE",
    "latem": "LATEM",
    "ale": "ALE",
    "devise": "DeViSE",
    "sje": "SJE",
    "eszsl": "ESZSL",
    "sync": "SYNC",
    "sae": "SAE",
    "gfzsl": "GFZSL",
    "clswgan": "f-CLSWGAN",
    "cadavae": "CADA-VAE",
    "segzsl": "SE-GZSL",
    "fvaegan": "f-VAEGAN-D2",
    "tfvaegan": "tf-VAEGAN",
    "clip": "CLIP",
}


def display_name(model: str) -> str:
    """The method's name as its paper writes it (``devise`` -> ``DeViSE``)."""
    return DISPLAY_NAMES.get(model, model)


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
    """Two panels (PNG, and a PDF beside it): (left) calibrated GZSL H per method (the table's
    headline, gamma chosen on validation), one bar per dataset (mean over seeds, std as error
    bar when there are several), the uncalibrated H as a black tick; (right) uncalibrated GZSL
    u against s for every (dataset, method) cell, labelled by method without overlaps, over
    iso-H lines (:data:`ISO_H`). The datasets' legend sits below both panels, hiding nothing.
    Synthetic-feature rows are hatched bars and hollow markers, and their dataset reads
    ``... (synthetic features)``."""
    if not rows:
        raise ValueError("summary_figure needs at least one aggregated row")
    methods = list(dict.fromkeys(str(r["model"]) for r in rows))
    labels = list(dict.fromkeys(dataset_label(r) for r in rows))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colours = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
    several = max(int(r.get("seeds", 1)) for r in rows) > 1

    left = max(5.0, 1.0 + 0.3 * len(methods) * len(labels))  # inches for the bars
    fig, (bars, scatter) = plt.subplots(
        1, 2, figsize=(left + 6.5, 6.8), dpi=120, gridspec_kw={"width_ratios": [left, 6.5]}
    )
    _h_bars(bars, rows, methods, colours, several)
    _u_vs_s(scatter, rows, colours, several)
    _legend(fig, labels, colours)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)


def _h_bars(
    ax: Any, rows: Sequence[Row], methods: list[str], colours: dict[str, Any], several: bool
) -> None:
    """The left panel: calibrated H bars per method and dataset, uncalibrated H ticks."""
    labels = list(colours)
    cells = {(dataset_label(r), str(r["model"])): r for r in rows}
    width = 0.8 / len(labels)
    x = np.arange(len(methods))
    for i, label in enumerate(labels):
        mine = [cells.get((label, m)) for m in methods]
        heights = [_calibrated_h(r) for r in mine]
        errors = [float(r.get("gzsl_h_cal_std", 0.0)) if r and several else 0.0 for r in mine]
        synthetic = label.endswith(SYNTHETIC_SUFFIX)
        centres = x - 0.4 + width * (i + 0.5)
        ax.bar(
            centres,
            heights,
            width,
            yerr=errors if several else None,
            capsize=2,
            color=colours[label],
            hatch="//" if synthetic else None,
            edgecolor="black" if synthetic else colours[label],
            linewidth=0.5,
            error_kw={"elinewidth": 0.8},
        )
        raw = [float(r["gzsl_h"]) if r else np.nan for r in mine]
        ax.plot(centres, raw, "_", color="black", ms=max(4.0, 40 * width), mew=1.2)
    ax.set_xticks(x, [display_name(m) for m in methods], rotation=45, ha="right", fontsize=8)
    spread = "mean ± std over seeds" if several else "one seed"
    ax.set_ylabel(f"calibrated GZSL H (%), {spread}")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("GZSL H per method (bars: calibrated; black tick: uncalibrated)", fontsize=9)


def _u_vs_s(ax: Any, rows: Sequence[Row], colours: dict[str, Any], several: bool) -> None:
    """The right panel: uncalibrated u against s per cell, labelled, over iso-H lines."""
    _iso_h(ax)
    placed: list[tuple[float, float]] = []
    for row in rows:
        label, s, u = dataset_label(row), float(row["gzsl_s"]), float(row["gzsl_u"])
        synthetic = bool(row.get("synthetic", False))
        ax.errorbar(
            s,
            u,
            xerr=float(row["gzsl_s_std"]) if several else None,
            yerr=float(row["gzsl_u_std"]) if several else None,
            fmt="o",
            ms=5,
            color=colours[label],
            mfc="none" if synthetic else colours[label],
            elinewidth=0.6,
            capsize=1.5,
        )
        dx, dy = _free_spot(s, u, placed)
        ax.annotate(
            display_name(str(row["model"])),
            (s, u),
            xytext=(s + dx, u + dy),
            fontsize=6,
            va="center",
            ha="left" if dx >= 0 else "right",
            arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "grey"} if abs(dy) > 2 else None,
        )
    ax.set_xlabel("uncalibrated GZSL seen-class accuracy s (%)")
    ax.set_ylabel("uncalibrated GZSL unseen-class accuracy u (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_title("GZSL u vs s, uncalibrated (dashed: iso-H)", fontsize=9)


def _legend(fig: Any, labels: list[str], colours: dict[str, Any]) -> None:
    """The datasets' legend below both panels; a title on synthetic-feature rows if any."""
    handles = [
        Patch(
            facecolor="none" if label.endswith(SYNTHETIC_SUFFIX) else colours[label],
            edgecolor=colours[label],
            hatch="//" if label.endswith(SYNTHETIC_SUFFIX) else None,
            label=label,
        )
        for label in labels
    ]
    fig.legend(
        handles=handles, fontsize=8, loc="lower center", ncol=min(len(labels), 4), frameon=False
    )
    if any(label.endswith(SYNTHETIC_SUFFIX) for label in labels):
        fig.suptitle(
            "hatched bars / hollow markers: synthetic features at the real shapes "
            "(timing/pipeline rows, not accuracy results)",
            fontsize=8,
        )


def _calibrated_h(row: Row | None) -> float:
    """A row's calibrated H (its uncalibrated one when no gamma was chosen)."""
    if row is None:
        return float("nan")
    value = float(row.get("gzsl_h_cal", float("nan")))
    return value if not np.isnan(value) else float(row["gzsl_h"])


def _free_spot(s: float, u: float, placed: list[tuple[float, float]]) -> tuple[float, float]:
    """An offset (data units) for a point's label that keeps it clear of the labels placed so
    far (each about 11 x 2.5 units of the 100 x 100 panel); records the spot taken."""
    for dy in (0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0, 12.0, -12.0):
        for dx in (1.5, -1.5):
            x0 = s + dx if dx > 0 else s + dx - 11.0
            y0 = u + dy
            if all(abs(x0 - px) > 11.0 or abs(y0 - py) > 2.5 for px, py in placed):
                placed.append((x0, y0))
                return dx, dy
    placed.append((s + 1.5, u))
    return 1.5, 0.0


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

    from zsl.reporting.loggers import _wandb_settings, wandb_mode

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
