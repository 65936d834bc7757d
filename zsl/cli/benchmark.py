"""Benchmark runner: methods x datasets x seeds through the normal ``train.py`` path.

Each run is a full ``zsl.cli.train.main`` call (selection on validation classes, one test fit) with
its own run directory; the table aggregates the runs' ``metrics.json`` as mean ± std over seeds.

    zsl-benchmark --name cub_vgg --datasets cub \
        --root ../shared/data/xlsa17 --feature-file vgg_fc7.mat \
        --methods gbu --seeds 0,1,2

``--methods`` takes model names and these sets: ``gbu`` (the 13 methods of Xian et al.'s
"Good, Bad and Ugly" benchmark, TPAMI 2018, in its order), ``classical`` (every model in
``zsl.models.classical``, CMT's novelty-detector variant included) and ``generative``.

Writes ``<results-dir>/<name>.md`` and ``.csv`` (default ``results/``).
Extra ``key=value`` arguments after
``--`` are passed to every run (e.g. ``-- trainer.enable_progress_bar=false``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from zsl.cli.train import main as train_main

METRICS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")

#: the GBU benchmark's methods (Xian et al., TPAMI 2018), in its table's order
GBU: tuple[str, ...] = (
    *("dap", "iap", "conse", "cmt", "sse", "latem", "ale"),
    *("devise", "sje", "eszsl", "sync", "sae", "gfzsl"),
)


def expand_methods(spec: str) -> list[str]:
    """Model names from a comma list in which ``gbu``, ``classical`` and ``generative`` stand
    for their sets; unknown names fail listing what exists."""
    from zsl.models import MODELS

    def family(package: str) -> list[str]:
        return sorted(n for n in MODELS if MODELS[n].startswith(f"zsl.models.{package}."))

    sets = {"gbu": list(GBU), "classical": family("classical"), "generative": family("generative")}
    names: list[str] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        for name in sets.get(item, [item]):
            if name not in MODELS:
                raise SystemExit(
                    f"error: unknown method {name!r}; available: {', '.join(sorted(MODELS))} "
                    f"and the sets {', '.join(sets)}"
                )
            if name not in names:
                names.append(name)
    return names


def run_one(
    method: str, dataset: str, seed: int, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    out = Path(args.runs_dir) / args.name / f"{dataset}_{method}_seed{seed}"
    if (out / "metrics.json").is_file() and not args.force:
        print(f"[benchmark] reusing {out}")
        return json.loads((out / "metrics.json").read_text())
    if out.exists():
        for f in sorted(out.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    argv = [
        f"data={dataset}",
        f"model={method}",
        f"seed={seed}",
        f"output_dir={out}",
        f"logger={args.logger}",
        "trainer.enable_progress_bar=false",
    ]
    if args.root:
        argv.append(f"data.root={args.root}")
    if args.feature_file:
        argv.append(f"data.feature_file={args.feature_file}")
    print(f"[benchmark] {' '.join(argv + extra)}", flush=True)
    metrics = train_main(argv + extra)
    assert metrics is not None
    return metrics


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    rows = []
    for (dataset, model), runs in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "model": model, "seeds": len(runs)}
        for key in (*METRICS, "wall_time_s"):
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


def write_tables(rows: list[dict[str, Any]], args: argparse.Namespace, total_s: float) -> None:
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{args.name}.csv", "w", newline="") as fh:
        cols = (
            ["dataset", "model", "seeds"]
            + [k for m in (*METRICS, "wall_time_s") for k in (m, f"{m}_std")]
            + ["selected"]
        )
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Benchmark `{args.name}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{_cpus()} cores; total wall time {total_s / 60:.1f} min. Protocol: hyper-parameters, "
        "epochs and calibration gamma selected on validation classes; test split evaluated "
        "once. Mean ± std over seeds; accuracies are per-class mean top-1 (%).",
        "",
        "| dataset | method | ZSL T1 | GZSL u | GZSL s | GZSL H | H (calibrated) | time/run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['zsl_t1_fmt']} | {r['gzsl_u_fmt']} | "
            f"{r['gzsl_s_fmt']} | {r['gzsl_h_fmt']} | {r['gzsl_h_cal_fmt']} | "
            f"{r['wall_time_s_fmt']} |"
        )
    lines += ["", "Selected hyper-parameters (per seed):", ""]
    lines += [f"- {r['dataset']} / {r['model']}: `{r['selected']}`" for r in rows]
    (out_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``zsl-benchmark``."""
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default="benchmark")
    p.add_argument("--methods", default="gbu", help="model names and sets (gbu, classical, ...)")
    p.add_argument("--datasets", default="synthetic")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--root", default=None, help="data root (xlsa17 layout)")
    p.add_argument("--feature-file", default=None)
    p.add_argument("--logger", default="csv", choices=["csv", "wandb"])
    p.add_argument("--runs-dir", default="runs/benchmark")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--force", action="store_true", help="rerun runs that already have metrics")
    args = p.parse_args(argv)
    import time

    start = time.perf_counter()
    results = [
        run_one(m, d, int(s), args, extra)
        for d in args.datasets.split(",")
        for m in expand_methods(args.methods)
        for s in args.seeds.split(",")
    ]
    write_tables(aggregate(results), args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
