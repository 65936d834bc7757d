"""Benchmark runner: methods x datasets x seeds through the normal ``train.py`` path.

Each run is a full ``zsl.cli.train.main`` call (selection on validation classes, one test fit) with
its own run directory; the table aggregates the runs' ``metrics.json`` as mean ± std over seeds.

    zsl-benchmark --name cub_vgg --datasets cub \
        --root ../shared/data/xlsa17 --feature-file vgg_fc7.mat \
        --methods gbu --seeds 0,1,2

``--methods`` takes model names and these sets: ``gbu`` (the 13 methods of Xian et al.'s
"Good, Bad and Ugly" benchmark, TPAMI 2018, in its order), ``classical`` (every model in
``zsl.models.classical``, CMT's novelty-detector variant included) and ``generative``.

Writes ``<results-dir>/<name>.md``, ``.csv``, ``.tex`` and ``.png`` (GZSL H per method and
u vs s; default ``results/``); with ``--logger wandb`` the table and the figure also go to a W&B
run (job type ``benchmark``). Rows whose runs used generated features at the dataset's real
shapes (``"synthetic_features": true`` in ``metrics.json``) read ``<dataset> (synthetic
features)``: timing/pipeline rows, not accuracy results. Finished
cells (a ``metrics.json`` in the runs directory) are reused, so a rerun skips them;
``--workers N`` runs N cells at once in separate processes.
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
import warnings
from pathlib import Path
from typing import Any

from zsl.cli.train import main as train_main
from zsl.reporting.benchmark import dataset_label, log_to_wandb, summary_figure

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
    standin = getattr(args, "standins", {}).get(dataset)
    if standin is not None:  # generated features at the dataset's real shapes
        argv += [f"data.root={standin[0]}", f"data.feature_file={standin[1]}"]
    else:
        if args.root:
            argv.append(f"data.root={args.root}")
        if args.feature_file:
            argv.append(f"data.feature_file={args.feature_file}")
    print(f"[benchmark] {' '.join(argv + extra)}", flush=True)
    metrics = train_main(argv + extra)
    assert metrics is not None
    return metrics


def dataset_folder(dataset: str) -> str:
    """The benchmark folder a data config reads (``sun`` -> ``SUN``)."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(__file__).resolve().parent.parent / "conf" / "data" / f"{dataset}.yaml"
    if not path.is_file():
        raise SystemExit(f"error: unknown dataset config {dataset!r} (no {path})")
    cfg = OmegaConf.load(path)
    return str(cfg.get("name") or dataset) if isinstance(cfg, DictConfig) else dataset


def make_standins(datasets: list[str], args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """``--synthetic-missing``: for every dataset whose feature file is missing under
    ``--root``, synthetic features at its real shapes (:mod:`zsl.data.standin`), generated once
    into ``<runs-dir>/<name>/synthetic_data``; maps the dataset to (data root, feature file)."""
    from zsl.data.standin import FEATURE_FILE, synthesize_features

    root = Path(args.root or "data/xlsa17")
    feature_file = args.feature_file or "res101.mat"
    out = Path(args.runs_dir) / args.name / "synthetic_data"
    standins = {}
    for dataset in datasets:
        folder = dataset_folder(dataset)
        if (root / folder / feature_file).is_file():
            continue
        made = synthesize_features(root, folder, out, dim=args.synthetic_dim)
        print(
            f"[benchmark] {folder}: no {feature_file}; synthetic {made.feature_dim}-d features "
            f"at its real shapes ({made.n_images} images) in {made.folder}",
            flush=True,
        )
        standins[dataset] = (str(out), FEATURE_FILE)
    return standins


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method): mean, sample std and ``mean ± std`` text of every metric
    over the seeds, the selected hyper-parameters, and ``synthetic`` (any of its runs had
    ``"synthetic_features": true``: features generated at the real shapes, not read)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
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


def write_tables(
    rows: list[dict[str, Any]], args: argparse.Namespace, total_s: float
) -> Path | None:
    """``<name>.csv``, ``.md``, ``.tex`` and the summary figure ``<name>.png`` (linked from the
    Markdown) in ``--results-dir``; returns the figure's path (None without rows)."""
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{args.name}.csv", "w", newline="") as fh:
        cols = (
            ["dataset", "model", "seeds", "synthetic"]
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
    figure = summary_figure(rows, out_dir / f"{args.name}.png") if rows else None
    if figure is not None:
        lines += ["", f"![GZSL H per method and GZSL u vs s]({figure.name})"]
    lines += ["", "Selected hyper-parameters (per seed):", ""]
    lines += [f"- {dataset_label(r)} / {r['model']}: `{r['selected']}`" for r in rows]
    (out_dir / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out_dir / f"{args.name}.tex").write_text(latex_table(rows))
    print("\n".join(lines))
    return figure


def log_benchmark(rows: list[dict[str, Any]], figure: Path, args: argparse.Namespace) -> None:
    """The table and the figure as a W&B run; a W&B failure warns (the tables are written)."""
    try:
        log_to_wandb(rows, figure, args.name, args.results_dir)
    except Exception as err:  # noqa: BLE001 - the tables are written; W&B is extra
        warnings.warn(
            f"W&B could not log the benchmark ({type(err).__name__}: {err}); the tables are "
            f"in {args.results_dir}",
            stacklevel=2,
        )


def latex_table(rows: list[dict[str, Any]]) -> str:
    """A booktabs table of the aggregated rows (mean ± std, time per run)."""

    def cell(row: dict[str, Any], key: str) -> str:
        return row[f"{key}_fmt"].replace(" ± ", r" $\pm$ ")

    body = [
        r"\begin{tabular}{llrrrrrr}",
        r"\toprule",
        r"dataset & method & ZSL T1 & $u$ & $s$ & $H$ & $H$ (cal.) & time/run (s) \\",
        r"\midrule",
    ]
    for row in rows:
        values = " & ".join(cell(row, key) for key in (*METRICS, "wall_time_s"))
        model = row["model"].replace("_", "\\_")
        dataset = dataset_label(row).replace("_", "\\_")
        body.append(f"{dataset} & {model} & {values} " + "\\\\")
    body += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body) + "\n"


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


Cell = tuple[str, str, int]  # (method, dataset, seed)


def _start_worker(threads: int) -> None:
    """Pool initializer: share the cores between the workers instead of oversubscribing."""
    import torch

    torch.set_num_threads(threads)


def _run_cell(cell: Cell, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    method, dataset, seed = cell
    return run_one(method, dataset, seed, args, extra)


def run_cells(
    cells: list[Cell], args: argparse.Namespace, extra: list[str], workers: int
) -> list[dict[str, Any]]:
    """Every cell's ``metrics.json`` in ``cells`` order, finished ones reused; ``workers`` > 1
    runs cells in that many processes (each with ``cores / workers`` torch threads). One
    progress line per finished cell: ``cell 3/42 CUB ale seed 1 · ZSL T1 53.0 · 25 s ·
    elapsed 1:12 · ETA 4:30``."""
    import time
    from concurrent.futures import Future, ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    start = time.perf_counter()
    results: dict[Cell, dict[str, Any]] = {}

    def report(cell: Cell, metrics: dict[str, Any]) -> None:
        results[cell] = metrics
        done, elapsed = len(results), time.perf_counter() - start
        eta = elapsed / done * (len(cells) - done)
        print(
            f"[benchmark] cell {done}/{len(cells)} {cell[1]} {cell[0]} seed {cell[2]} · "
            f"ZSL T1 {float(metrics['zsl_t1']):.1f} · {float(metrics['wall_time_s']):.0f} s · "
            f"elapsed {_clock(elapsed)} · ETA {_clock(eta)}",
            flush=True,
        )

    if workers <= 1:
        for cell in cells:
            report(cell, _run_cell(cell, args, extra))
    else:
        threads = max(1, _cpus() // workers)
        with ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads,),
        ) as pool:
            futures: dict[Future[dict[str, Any]], Cell] = {
                pool.submit(_run_cell, cell, args, extra): cell for cell in cells
            }
            for future in as_completed(futures):
                report(futures[future], future.result())
    return [results[cell] for cell in cells]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


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
    p.add_argument(
        "--synthetic-missing",
        action="store_true",
        help="datasets without their feature file get synthetic features at their real shapes\n"
        "(image and class counts, split indices; rows marked synthetic)",
    )
    p.add_argument("--synthetic-dim", type=int, default=2048, help="their feature dimension")
    p.add_argument(
        "--workers", type=int, default=1, help="cells run in this many processes at once"
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {args.workers}")
    import time

    start = time.perf_counter()
    cells = [
        (m, d, int(s))
        for d in args.datasets.split(",")
        for m in expand_methods(args.methods)
        for s in args.seeds.split(",")
    ]
    if args.synthetic_missing:
        args.standins = make_standins(args.datasets.split(","), args)
    results = run_cells(cells, args, extra, args.workers)
    rows = aggregate(results)
    figure = write_tables(rows, args, time.perf_counter() - start)
    if figure is not None and args.logger == "wandb":
        log_benchmark(rows, figure, args)


if __name__ == "__main__":
    main()
