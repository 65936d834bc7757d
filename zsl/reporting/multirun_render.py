"""The multirun summary as text: the sentence above the table (:func:`describe`), the
Markdown table with the failed and not-run jobs (:func:`to_markdown`), the CSV
(:func:`to_csv`) and the Optuna sweeper's best point (:func:`optuna_best`)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from zsl.reporting.multirun_aggregate import METRICS, Job, Summary, parse_overrides


def _cell(mean: float, std: float | None) -> str:
    """``52.21 ± 0.35``; a single run: ``52.21``; NaN: ``n/a``."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _setting_titles(summary: Summary) -> list[str]:
    taken = {"dataset", "model", "n"}
    return [f"{key} (override)" if key in taken else key for key in summary.settings]


def describe(summary: Summary) -> str:
    """The sentence above the table: how many jobs finished, what the ± means, which split."""
    finished = sum(row.n for row in summary.rows)
    counts = f"{summary.n_jobs} job(s), {finished} finished"
    if summary.failed:
        counts += f", {len(summary.failed)} failed"
    if summary.not_run:
        counts += f", {len(summary.not_run)} not run"
    sizes = {row.n for row in summary.rows}
    if not sizes:
        spread = "No finished run"
    elif max(sizes) > 1:
        spread = "Mean ± sample std (n - 1) over seeds"
        if 1 in sizes:
            spread += "; a row with n = 1 is a single run (no std)"
    else:
        spread = "One run per row (single runs, no std)"
    where = {"test": "test split (protocol test)", "val": "validation classes (protocol val)"}
    split = ", ".join(where.get(p, f"protocol {p}") for p in summary.protocols)
    return f"{counts}. {spread}" + (f"; {split}." if split else ".")


def _job_line(job: Job, swept: Sequence[str]) -> str:
    """``1_CUB_ale_seed0 (seed=0 model.params.lr=0.1)``: the job's swept overrides (all of
    them when nothing was swept)."""
    items = parse_overrides(job.overrides)
    shown = [f"{k}={items[k]}" for k in swept if k in items] if swept else list(job.overrides)
    return job.name + (f" ({' '.join(shown)})" if shown else "")


def to_markdown(summary: Summary, title: str = "Multirun summary") -> str:
    """The summary as a Markdown table, with the failed and not-run jobs listed below it."""
    head = ["dataset", "model", *_setting_titles(summary), *(t for _, t in METRICS), "n"]
    lines = [f"# {title}", "", describe(summary), ""]
    if summary.rows:
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for row in summary.rows:
            cells = [_cell(row.mean[key], row.std[key]) for key, _ in METRICS]
            lines.append(
                "| "
                + " | ".join([row.dataset, row.model, *row.settings, *cells, str(row.n)])
                + " |"
            )
        lines.append("")
    if summary.failed:
        lines += [f"Failed (no metrics.json): {len(summary.failed)} of {summary.n_jobs} jobs", ""]
        lines += [f"- {_job_line(job, summary.swept)}" for job in summary.failed] + [""]
    if summary.not_run:
        lines += [f"Not run (the multirun stopped first): {len(summary.not_run)} jobs", ""]
        lines += [f"- {_job_line(job, summary.swept)}" for job in summary.not_run] + [""]
    lines += summary.notes + ([""] if summary.notes else [])
    return "\n".join(lines).rstrip("\n") + "\n"


def to_csv(summary: Summary) -> str:
    """The summary as CSV: one ``finished`` line per row (full-precision mean and std; the std
    is empty for a single run), then one ``failed`` / ``not run`` line per such job."""
    head = ["status", "dataset", "model", *summary.settings, "n", "seeds"]
    head += [f"{key}_{what}" for key, _ in METRICS for what in ("mean", "std")]
    head += ["job", "overrides"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    blank = [""] * (2 * len(METRICS))
    for row in summary.rows:
        numbers = []
        for key, _ in METRICS:
            std = row.std[key]
            numbers += [repr(row.mean[key]), "" if std is None else repr(std)]
        seeds = ";".join(str(s) for s in row.seeds)
        writer.writerow(
            ["finished", row.dataset, row.model, *row.settings, row.n, seeds, *numbers, "", ""]
        )
    for job in [*summary.failed, *summary.not_run]:
        items = parse_overrides(job.overrides)
        settings = [items.get(key, "") for key in summary.settings]
        writer.writerow(
            [job.status, "", "", *settings, 0, "", *blank, job.name, " ".join(job.overrides)]
        )
    return out.getvalue()


def optuna_best(results: Mapping[str, Any], objective: str | None = None) -> str:
    """The line naming the Optuna sweeper's best point(s) from ``optimization_results.yaml``
    (``best_params``/``best_value``; several objectives: ``solutions``)."""
    what = f" ({objective})" if objective else ""
    if "best_params" in results:
        point = " ".join(f"{k}={v}" for k, v in dict(results["best_params"]).items())
        value = results.get("best_value")
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        return f"optuna best value{what}: {shown} at {point or '(no params)'}"
    solutions = list(results.get("solutions") or [])
    parts = [
        f"{s.get('values')} at " + " ".join(f"{k}={v}" for k, v in dict(s["params"]).items())
        for s in solutions
    ]
    return f"optuna Pareto-optimal values{what}: " + ("; ".join(parts) or "none")
