"""Benchmark runner: methods x datasets x seeds through the normal ``train.py`` path.

Each run is a full ``zsl.cli.train.run`` call (selection on validation classes, one test fit) with
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
features)``: timing/pipeline rows, not accuracy results. ``--workers N`` runs N cells at once in
separate processes. Extra ``key=value`` arguments after ``--`` are passed to every run (e.g.
``-- trainer.enable_progress_bar=false``).

Cells are keyed by their settings, so a rerun reuses only what the same settings made:

- A cell's settings are its run config exactly as ``train.py`` composes it
  (:func:`zsl.cli.compose.compose` of the cell's arguments and the ``--`` overrides: groups,
  ``experiment=``, data root and feature file, every resolved value) without
  :data:`IGNORED_KEYS`, the keys that cannot change the numbers: ``output_dir`` (the cell's
  directory itself), ``resume``, the whole ``logger`` group (where the metrics are also sent),
  ``paths.runs_dir`` (unused: each cell has its ``output_dir``) and the trainer's display and
  checkpoint cadence (``trainer.enable_progress_bar``, ``trainer.log_every_n_steps``,
  ``trainer.checkpoint_interval_s``). A cell on generated stand-in features
  (``--synthetic-missing``) adds ``benchmark.synthetic_features``, the stand-in's provenance
  record (its dimension, seed and split file), since the generated file's path does not change
  with them. Paths are compared as written (``--root data/x`` and its absolute path are
  different settings); the contents of data files and the code are not hashed.
- Its hash is the first 12 hex digits of the SHA-256 of these settings as sorted-key JSON
  (:func:`settings_hash`). The cell's directory is
  ``<runs-dir>/<name>/<dataset>_<method>_seed<seed>_<hash>/`` and, once the run has finished,
  holds ``cell.json`` (``hash``, ``argv`` and ``settings``) beside the run's ``metrics.json``.
- A cell is reused (``[benchmark] reusing <dir>``) only when its directory for the new hash
  holds ``metrics.json`` and a ``cell.json`` with that hash. Otherwise it runs into that
  directory (an unfinished attempt there is cleared first); a cell of the same dataset,
  method and seed made with other settings, or made without a ``cell.json`` (an older
  benchmark, directory ``<dataset>_<method>_seed<seed>``), is never reused nor overwritten:
  it stays where it is (so going back to its settings reuses it again) and one line says why
  the cell runs again, e.g. ``[benchmark] rerunning synthetic eszsl seed 0: settings changed
  since runs/benchmark/b/synthetic_eszsl_seed0_1f0c2a9d8e7b (model.params.semantic_reg); new
  cell runs/benchmark/b/synthetic_eszsl_seed0_5be1d07c93aa``.
- ``--force`` reruns even a matching cell, replacing its directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shutil
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

from zsl.cli.train import run as train_main
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


#: run-config keys left out of a cell's settings: they cannot change its numbers
IGNORED_KEYS: tuple[str, ...] = (
    "output_dir",
    "resume",
    "logger",
    "paths.runs_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_interval_s",
)
#: written beside a finished cell's ``metrics.json``: its settings hash, argv and settings
CELL_RECORD = "cell.json"
#: how many differing keys the rerun line names
SHOWN_KEYS = 4


def cell_argv(
    method: str, dataset: str, seed: int, args: argparse.Namespace, extra: list[str]
) -> list[str]:
    """The ``train.py`` arguments of one cell, without its ``output_dir``."""
    argv = [
        f"data={dataset}",
        f"model={method}",
        f"seed={seed}",
        f"logger={args.logger}",
        "trainer.enable_progress_bar=false",
    ]
    standin = getattr(args, "standins", {}).get(dataset)
    if standin is not None:  # generated features at the dataset's real shapes
        argv += [f"data.root={standin[0]}", f"data.feature_file={standin[1]}"]
    else:
        if getattr(args, "root", None):
            argv.append(f"data.root={args.root}")
        if getattr(args, "feature_file", None):
            argv.append(f"data.feature_file={args.feature_file}")
    return argv + list(extra)


def cell_settings(argv: list[str], standin: tuple[str, str] | None = None) -> dict[str, Any]:
    """What identifies a cell: the run config of ``train.py <argv>`` as :func:`compose` makes
    it (resolved), without :data:`IGNORED_KEYS`; with ``standin`` (data root, feature file of
    generated features) also ``benchmark.synthetic_features``, the features' provenance record.
    A bad override exits with the ``config error:`` line of ``train.py``."""
    from omegaconf import OmegaConf

    from zsl.cli.compose import compose
    from zsl.errors import ConfigError

    try:
        cfg = compose(argv)
    except ConfigError as err:
        raise SystemExit(f"config error: {' '.join(str(err).split())}") from None
    settings = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(settings, dict)
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = settings
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    if standin is not None:
        settings["benchmark"] = {"synthetic_features": _standin_record(cfg, standin)}
    return {str(key): value for key, value in settings.items()}


def _standin_record(cfg: Any, standin: tuple[str, str]) -> Any:
    """The provenance record of the generated features a cell reads (None before they exist)."""
    from zsl.data.standin import provenance_path

    path = provenance_path(Path(standin[0]) / str(cfg.data.name) / standin[1])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def settings_hash(settings: dict[str, Any]) -> str:
    """A cell's identity: the first 12 hex digits of the SHA-256 of ``settings`` as JSON with
    sorted keys (stable across runs, processes and key order)."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_record(cell_dir: Path) -> dict[str, Any] | None:
    """A cell directory's ``cell.json`` (None when it is missing or unreadable)."""
    try:
        record = json.loads((cell_dir / CELL_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(cell_dir: Path, digest: str) -> bool:
    """``cell_dir`` holds a finished run made with the settings of hash ``digest``."""
    record = read_record(cell_dir)
    return (
        (cell_dir / "metrics.json").is_file()
        and record is not None
        and record.get("hash") == digest
    )


def earlier_cells(base: Path, stem: str) -> list[Path]:
    """Finished cells of one (dataset, method, seed) under ``base``, whatever their settings:
    ``<stem>_<hash>`` and the pre-hash ``<stem>``; newest ``metrics.json`` first."""
    pattern = re.compile(rf"{re.escape(stem)}(_[0-9a-f]{{12}})?")
    if not base.is_dir():
        return []
    found = [
        d for d in base.iterdir() if pattern.fullmatch(d.name) and (d / "metrics.json").is_file()
    ]
    return sorted(found, key=lambda d: (d / "metrics.json").stat().st_mtime, reverse=True)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two cells' settings, sorted."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def rerun_reason(earlier: Path, settings: dict[str, Any], digest: str, force: bool) -> str:
    """Why the finished cell ``earlier`` is not reused for ``settings`` (of hash ``digest``)."""
    record = read_record(earlier)
    if record is None or "hash" not in record:
        return f"{earlier} has no settings record ({CELL_RECORD}), so its settings are unknown"
    if force and record["hash"] == digest:
        return f"--force (same settings as {earlier})"
    keys = changed_keys(record.get("settings") or {}, settings)
    if not keys:  # a record edited by hand, or of another hash rule
        return f"{earlier}/{CELL_RECORD} records hash {record['hash']}, not {digest}"
    shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
    return f"settings changed since {earlier} ({shown})"


def run_one(
    method: str, dataset: str, seed: int, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    """One cell's metrics: reused from ``<runs_dir>/<name>/<dataset>_<method>_seed<seed>_<hash>``
    when that holds a finished run with these settings, else a ``train.py`` run into it (see
    the module docstring for the rule and the line printed when an earlier cell is not reused).
    """
    standin = getattr(args, "standins", {}).get(dataset)
    argv = cell_argv(method, dataset, seed, args, extra)
    settings = cell_settings(argv, standin)
    digest = settings_hash(settings)
    base = Path(args.runs_dir) / args.name
    stem = f"{dataset}_{method}_seed{seed}"
    out = base / f"{stem}_{digest}"
    force = bool(getattr(args, "force", False))
    if is_finished(out, digest) and not force:
        print(f"[benchmark] reusing {out}", flush=True)
        return dict(json.loads((out / "metrics.json").read_text()))
    earlier = earlier_cells(base, stem)
    if earlier:  # the cell's own directory first: it is the one replaced
        shown = out if out in earlier else earlier[0]
        print(
            f"[benchmark] rerunning {dataset} {method} seed {seed}: "
            f"{rerun_reason(shown, settings, digest, force)}; new cell {out}",
            flush=True,
        )
    if out.exists():  # an unfinished attempt at these settings, or --force
        shutil.rmtree(out)
    run_argv = [*argv[:3], f"output_dir={out}", *argv[3:]]
    print(f"[benchmark] {' '.join(run_argv)}", flush=True)
    metrics = train_main(run_argv)
    assert metrics is not None
    record = {"hash": digest, "argv": run_argv, "settings": settings}
    partial = out / f".{CELL_RECORD}.tmp"
    partial.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    partial.replace(out / CELL_RECORD)
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
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s
    share), not every core of the machine; ``os.cpu_count()`` where affinity is unknown."""
    import os

    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
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
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun cells even when a finished cell has the same settings (replacing it)",
    )
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
