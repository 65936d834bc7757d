"""The transfer suite's report: the acceptance checks of every variant and its Markdown table.

``experiments/transfer_suite.py`` runs every model on every variant of
:mod:`zsl.data.variants` and hands the collected cells here: :func:`checks` applies the suite's
bars (generators within :data:`H_CAL_MARGIN` points of the best classical calibrated H, every
model at least :data:`T1_SHARE` of the best classical ZSL T1, no collapse to u = 0 or s = 0),
:func:`render` writes the table, the adapted data choices and the checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: the generative models of the checks, in the table's order
GENERATIVE = ("clswgan", "cadavae", "segzsl", "fvaegan", "tfvaegan")
#: metrics.json keys kept per cell (``data_choices`` too when a run reports it)
METRICS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal", "wall_time_s", "cpu_time_s")
#: and the class-wise validation folds selection averaged, the selected grid point
RECORDS = ("selection_folds", "selected_params")
#: table columns per variant: (metric key, header)
COLUMNS = (
    ("zsl_t1", "T1"),
    ("gzsl_u", "u"),
    ("gzsl_s", "s"),
    ("gzsl_h", "H"),
    ("gzsl_h_cal", "H cal"),
)
H_CAL_MARGIN = 2.0  # points below the best classical H cal a generative model may fall
T1_SHARE = 2.0 / 3.0  # share of the best classical T1 every model must reach


def pick(metrics: Mapping[str, Any]) -> dict[str, Any]:
    kept = {key: metrics.get(key) for key in METRICS}
    kept.update({key: metrics.get(key) for key in RECORDS})
    if "data_choices" in metrics:  # what a generator adapted to the data
        kept["data_choices"] = metrics["data_choices"]
    return kept


def number(cell: Mapping[str, Any] | None, key: str) -> float | None:
    value = (cell or {}).get(key)
    return float(value) if isinstance(value, int | float) and value == value else None


def best(row: Mapping[str, Mapping[str, Any]], key: str) -> tuple[str, float] | None:
    """The classical model with the highest ``key`` in one variant's cells."""
    scored = [(number(c, key), m) for m, c in row.items() if m not in GENERATIVE]
    present = [(v, m) for v, m in scored if v is not None]
    return (max(present)[1], max(present)[0]) if present else None


def checks(cells: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The acceptance checks of every variant (None where a number is missing)."""
    out: dict[str, Any] = {}
    for variant, row in cells.items():
        h_best, t1_best = best(row, "gzsl_h_cal"), best(row, "zsl_t1")
        t1_floor = T1_SHARE * t1_best[1] if t1_best else None
        generative: dict[str, Any] = {}
        for model in (m for m in GENERATIVE if m in row):
            u, s = number(row[model], "gzsl_u"), number(row[model], "gzsl_s")
            h, t1 = number(row[model], "gzsl_h_cal"), number(row[model], "zsl_t1")
            generative[model] = {
                "u_positive": None if u is None else u > 0,
                "s_positive": None if s is None else s > 0,
                "h_cal_ok": None if h is None or h_best is None else h >= h_best[1] - H_CAL_MARGIN,
                "t1_ok": None if t1 is None or t1_floor is None else t1 >= t1_floor,
            }
        low = {
            m: t1
            for m in row
            if (t1 := number(row[m], "zsl_t1")) is not None
            and t1_floor is not None
            and t1 < t1_floor
        }
        out[variant] = {
            "best_classical_h_cal": h_best,
            "best_classical_t1": t1_best,
            "t1_floor": t1_floor,
            "generative": generative,
            "t1_below_floor": low,
        }
    return out


def fmt(cell: Mapping[str, Any] | None, key: str) -> str:
    if cell is None:
        return "…"
    if cell.get("status") == "error":
        return "err"
    value = number(cell, key)
    return "–" if value is None else f"{value:.1f}"


def yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**NO**")


def render(report: Mapping[str, Any]) -> str:
    variants, models = report["variants"], report["models"]
    cells: Mapping[str, Mapping[str, Any]] = report["cells"]
    lines = [
        "# Transfer suite: models on real-data variants of CUB",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; {report['threads']}  ",
        f"Seed {report['seed']}; extra overrides: {' '.join(report['set']) or 'none'}; "
        f"{report['done']} of {len(variants) * len(models)} cells done, "
        f"{report['elapsed_s']:.0f} s of suite wall time so far ({report['updated']}).",
        "",
        "Full protocol per cell (hyper-parameters and epochs selected on the validation classes,",
        "one refit on trainval, one test). Numbers in %: T1 = ZSL per-class top-1 on the unseen",
        "classes; u / s / H = GZSL unseen / seen accuracy and their harmonic mean; H cal = H with",
        "calibrated stacking (gamma chosen on validation). VGG fc7 features, not ResNet-101: not",
        "comparable with published tables.",
        "",
        "| variant | description | feature file | built |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in variants.items():
        built = "cached" if info["cached"] else f"{info['build_s']:.1f} s"
        lines.append(f"| {name} | {info['description']} | {info['feature_file']} | {built} |")
    head = ["model"] + [f"{v.removeprefix('CUB_')} {h}" for v in variants for _, h in COLUMNS]
    lines += ["", "| " + " | ".join(head) + " | wall s |", "|" + " --- |" * (len(head) + 1)]
    for model in models:
        row = [model]
        wall = 0.0
        for variant in variants:
            cell = cells.get(variant, {}).get(model)
            row += [fmt(cell, key) for key, _ in COLUMNS]
            wall += number(cell, "wall_time_s") or 0.0
        lines.append("| " + " | ".join(row) + f" | {wall:.0f} |")
    errors = [
        f"- {v} {m}: {c['error']}"
        for v, row in cells.items()
        for m, c in row.items()
        if c.get("error")
    ]
    if errors:
        lines += ["", "Failed cells:", *errors]
    lines += render_choices(cells)
    return "\n".join([*lines, "", *render_checks(report["checks"])]) + "\n"


def choices_line(cell: Mapping[str, Any]) -> str:
    """One generative cell's ``data_choices`` and ``selection_folds`` in a few words."""
    found = cell.get("data_choices")
    folds = f"selection folds {cell.get('selection_folds') or '?'}"
    if not isinstance(found, Mapping) or not found:
        return f"no data_choices recorded; {folds}"
    parts = [
        f"output {found.get('output', '?')}",
        f"unit_norm_output {json.dumps(found.get('unit_norm_output', '?'))}",
        f"noise_dim {found.get('noise_dim', '?')}",
    ]
    pca = found.get("cls_pca")
    if isinstance(pca, Mapping):
        used = "inputs used whole" if pca.get("used") is None else f"used {pca['used']}"
        parts.append(f"cls_pca {pca.get('set')} on {pca.get('inputs')}-d inputs: {used}")
    else:
        parts.append("cls_pca as configured")
    return "; ".join([*parts, folds])


def render_choices(cells: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Per variant, what each generative model adapted to the data (metrics.json's
    ``data_choices``) and the class-wise validation folds its selection averaged."""
    lines: list[str] = []
    for variant, row in cells.items():
        done = [(m, row[m]) for m in GENERATIVE if m in row and row[m].get("status") != "error"]
        lines += [f"- {variant} {m}: {choices_line(c)}" for m, c in done]
    if not lines:
        return []
    return ["", "What the generators adapted to the data (metrics.json `data_choices`):", *lines]


def render_checks(found: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Checks",
        "",
        f"Per variant: each generative model needs u > 0, s > 0, H cal >= best classical H cal - "
        f"{H_CAL_MARGIN:g}; every model needs T1 >= 2/3 of the best classical T1.",
    ]
    for variant, check in found.items():
        h_best, t1_best = check["best_classical_h_cal"], check["best_classical_t1"]
        lines += ["", f"### {variant}", ""]
        if h_best is None or t1_best is None:
            lines.append("No classical result yet.")
            continue
        lines.append(
            f"Best classical H cal {h_best[1]:.1f} ({h_best[0]}); best classical T1 "
            f"{t1_best[1]:.1f} ({t1_best[0]}), 2/3 of it {check['t1_floor']:.1f}."
        )
        if check["generative"]:
            lines += [
                "",
                "| generative model | u > 0 | s > 0 | H cal >= best - 2 | T1 >= 2/3 best |",
                "| --- | --- | --- | --- | --- |",
            ]
            for model, flags in check["generative"].items():
                keys = ("u_positive", "s_positive", "h_cal_ok", "t1_ok")
                lines.append(f"| {model} | " + " | ".join(yes(flags[k]) for k in keys) + " |")
        low = check["t1_below_floor"]
        below = ", ".join(f"{m} ({t:.1f})" for m, t in low.items()) or "none"
        lines += ["", f"Models with T1 below 2/3 of the best classical T1: {below}."]
    return lines
