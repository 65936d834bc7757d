"""The benchmark's aggregation and tables (``zsl-benchmark``): mean ± std over seeds per
(dataset, method), written as CSV, Markdown (with the summary figure) and a LaTeX table.

Plain values in, files and text out: the rows are the dicts :func:`aggregate` makes of the
cells' ``metrics.json``, the figure is :func:`zsl.reporting.benchmark.summary_figure`.
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zsl.reporting.benchmark import METRIC_KEYS, dataset_label, summary_figure

#: every aggregated column of a row, in table order (``wall_time_s``: the time per run)
COLUMNS: tuple[str, ...] = (*METRIC_KEYS, "wall_time_s")


def fmt(values: list[float]) -> str:
    """``52.0 ± 2.0`` (mean ± sample std, one decimal); one value alone: ``52.0``."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method): mean, sample std and ``mean ± std`` text of every metric
    over the seeds, the selected hyper-parameters, and ``synthetic`` (any of its runs had
    ``"synthetic_features": true``: features generated at the real shapes, not read)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    rows = []
    for (dataset, model), runs in groups.items():
        row: dict[str, Any] = {
            "dataset": dataset,
            "model": model,
            "seeds": len(runs),
            "synthetic": any(bool(r.get("synthetic_features", False)) for r in runs),
        }
        for key in COLUMNS:
            vals = [float(r[key]) for r in runs]
            row[key] = statistics.mean(vals)
            row[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[f"{key}_fmt"] = fmt(vals)
        row["selected"] = "; ".join(
            json.dumps({**r["selected_params"], "epochs": r["selected_epochs"]}, sort_keys=True)
            for r in runs
        )
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The rows as CSV: mean and std of every metric (full precision) and the selection."""
    with open(path, "w", newline="") as fh:
        cols = (
            ["dataset", "model", "seeds", "synthetic"]
            + [k for m in COLUMNS for k in (m, f"{m}_std")]
            + ["selected"]
        )
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_lines(
    rows: Sequence[Mapping[str, Any]],
    name: str,
    total_s: float,
    cores: int,
    figure: Path | None = None,
) -> list[str]:
    """The Markdown report: the machine and protocol, the table (mean ± std), a note on
    synthetic-feature rows, the figure's link and the selected hyper-parameters."""
    lines = [
        f"# Benchmark `{name}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{cores} cores; total wall time {total_s / 60:.1f} min. Protocol: hyper-parameters, "
        "epochs and calibration gamma selected on validation classes; test split evaluated "
        "once. Mean ± std over seeds; accuracies are per-class mean top-1 (%).",
        "",
        "| dataset | method | ZSL T1 | GZSL u | GZSL s | GZSL H | H (calibrated) | time/run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {dataset_label(r)} | {r['model']} | {r['zsl_t1_fmt']} | {r['gzsl_u_fmt']} | "
            f"{r['gzsl_s_fmt']} | {r['gzsl_h_fmt']} | {r['gzsl_h_cal_fmt']} | "
            f"{r['wall_time_s_fmt']} |"
        )
    if any(r.get("synthetic") for r in rows):
        lines += [
            "",
            "Rows marked *(synthetic features)* use features generated at the dataset's real "
            "shapes instead of the dataset's own features: they are timing/pipeline rows, not "
            "accuracy results.",
        ]
    if figure is not None:
        lines += ["", f"![GZSL H per method and GZSL u vs s]({figure.name})"]
    lines += ["", "Selected hyper-parameters (per seed):", ""]
    lines += [f"- {dataset_label(r)} / {r['model']}: `{r['selected']}`" for r in rows]
    return lines


def latex_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A booktabs table of the aggregated rows (mean ± std, time per run)."""

    def cell(row: Mapping[str, Any], key: str) -> str:
        return str(row[f"{key}_fmt"]).replace(" ± ", r" $\pm$ ")

    body = [
        r"\begin{tabular}{llrrrrrr}",
        r"\toprule",
        r"dataset & method & ZSL T1 & $u$ & $s$ & $H$ & $H$ (cal.) & time/run (s) \\",
        r"\midrule",
    ]
    for row in rows:
        values = " & ".join(cell(row, key) for key in COLUMNS)
        model = str(row["model"]).replace("_", "\\_")
        dataset = dataset_label(row).replace("_", "\\_")
        body.append(f"{dataset} & {model} & {values} " + "\\\\")
    body += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body) + "\n"


def write_tables(
    rows: Sequence[Mapping[str, Any]],
    name: str,
    results_dir: str | Path,
    total_s: float,
    cores: int,
) -> tuple[str, Path | None]:
    """``<name>.csv``, ``.md``, ``.tex`` and the summary figure ``<name>.png`` (linked from the
    Markdown) in ``results_dir``; returns the Markdown text and the figure's path (None
    without rows)."""
    out_dir = Path(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / f"{name}.csv")
    figure = summary_figure(rows, out_dir / f"{name}.png") if rows else None
    text = "\n".join(markdown_lines(rows, name, total_s, cores, figure))
    (out_dir / f"{name}.md").write_text(text + "\n")
    (out_dir / f"{name}.tex").write_text(latex_table(rows))
    return text, figure
