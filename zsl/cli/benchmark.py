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
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zsl.cli.train import run as train_main
from zsl.errors import ConfigError
from zsl.reporting.benchmark import log_to_wandb
from zsl.reporting.benchmark_tables import aggregate, latex_table
from zsl.reporting.benchmark_tables import write_tables as _write_tables
from zsl.run import benchmark as engine
from zsl.run.benchmark import (
    CELL_RECORD,
    GBU,
    IGNORED_KEYS,
    BenchmarkPlan,
    Cell,
    CellEntries,
    earlier_cells,
    settings_hash,
)
from zsl.run.benchmark import available_cores as _cpus

__all__ = [
    "CELL_RECORD",
    "GBU",
    "IGNORED_KEYS",
    "aggregate",
    "cell_argv",
    "cell_settings",
    "earlier_cells",
    "expand_methods",
    "latex_table",
    "log_benchmark",
    "main",
    "run_one",
    "settings_hash",
    "write_tables",
]


def expand_methods(spec: str) -> list[str]:
    """Model names from a comma list in which ``gbu``, ``classical`` and ``generative`` stand
    for their sets; unknown names fail listing what exists."""
    try:
        return engine.expand_methods(spec)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def plan_of(args: argparse.Namespace) -> BenchmarkPlan:
    """The cells' shared settings from the parsed arguments (defaults for those missing)."""
    given = {
        key: getattr(args, key)
        for key in ("name", "runs_dir", "logger", "root", "feature_file", "standins")
        if hasattr(args, key)
    }
    return BenchmarkPlan(**given, force=bool(getattr(args, "force", False)))


def _compose(argv: list[str]) -> DictConfig:
    """The run config of ``train.py <argv>``, checked as the run will check it
    (:func:`zsl.cli.compose.compose_spec`); a bad override exits with its ``config error:``
    line before any cell runs."""
    from zsl.cli.compose import compose_spec

    try:
        return compose_spec(argv).config
    except ConfigError as err:
        raise SystemExit(f"config error: {' '.join(str(err).split())}") from None


def _train(argv: list[str]) -> Mapping[str, Any] | None:
    """One cell's ``train.py`` run (looked up when called, so tests can replace it)."""
    return train_main(argv)


ENTRIES = CellEntries(compose=_compose, train=_train)


def cell_argv(
    method: str, dataset: str, seed: int, args: argparse.Namespace, extra: list[str]
) -> list[str]:
    """The ``train.py`` arguments of one cell, without its ``output_dir``."""
    return engine.cell_argv(method, dataset, seed, plan_of(args), extra)


def cell_settings(argv: list[str], standin: tuple[str, str] | None = None) -> dict[str, Any]:
    """What identifies a cell: the run config of ``train.py <argv>`` as :func:`compose` makes
    it (resolved), without :data:`IGNORED_KEYS`; with ``standin`` (data root, feature file of
    generated features) also ``benchmark.synthetic_features``, the features' provenance record.
    A bad override exits with the ``config error:`` line of ``train.py``."""
    return engine.settings_of(_compose(argv), standin)


def run_one(
    method: str, dataset: str, seed: int, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    """One cell's metrics: reused from ``<runs_dir>/<name>/<dataset>_<method>_seed<seed>_<hash>``
    when that holds a finished run with these settings, else a ``train.py`` run into it (see
    the module docstring for the rule and the line printed when an earlier cell is not reused).
    """
    return engine.run_one((method, dataset, seed), plan_of(args), extra, ENTRIES)


def write_tables(
    rows: list[dict[str, Any]], args: argparse.Namespace, total_s: float
) -> Path | None:
    """``<name>.csv``, ``.md``, ``.tex`` and the summary figure ``<name>.png`` (linked from the
    Markdown) in ``--results-dir``, the Markdown printed; returns the figure's path (None
    without rows)."""
    text, figure = _write_tables(rows, args.name, args.results_dir, total_s, _cpus())
    print(text)
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


def parser() -> argparse.ArgumentParser:
    """The command's arguments (its help is the module docstring)."""
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
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``zsl-benchmark``."""
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {args.workers}")
    import time

    start = time.perf_counter()
    cells: list[Cell] = [
        (m, d, int(s))
        for d in args.datasets.split(",")
        for m in expand_methods(args.methods)
        for s in args.seeds.split(",")
    ]
    if args.synthetic_missing:
        try:
            args.standins = engine.make_standins(
                args.datasets.split(","), plan_of(args), args.synthetic_dim
            )
        except ConfigError as err:
            raise SystemExit(f"error: {err}") from None
    results = engine.run_cells(cells, plan_of(args), extra, args.workers, ENTRIES)
    rows = aggregate(results)
    figure = write_tables(rows, args, time.perf_counter() - start)
    if figure is not None and args.logger == "wandb":
        log_benchmark(rows, figure, args)


if __name__ == "__main__":
    main()
