"""Every method on all six xlsa17 benchmarks at their real shapes, on one GPU, timed.

Runs ``zsl-benchmark`` over CUB, SUN, AWA1, AWA2, APY and FLO x every classical and generative
model (CLIP needs the raw images and is left out) with ``trainer=gpu``: real features where the
feature file is present under ``--root``, synthetic features at the dataset's real shapes
otherwise (``--synthetic-missing``: real image and class counts and split indices; those rows
are marked synthetic and are timing rows, not results). Prints the time per method (summed
over datasets) and in total, and writes the benchmark's tables and figure as
``<results-dir>/gpu_table.*``.

    python experiments/gpu_table.py --root data/xlsa17                       # res101.mat
    python experiments/gpu_table.py --root ../shared/data/xlsa17 --feature-file vgg_fc7.mat

``--trainer cpu --smoke`` runs the same pipeline with one epoch, no grid and 32-d synthetic
features, which is how the tests check it without a GPU. Finished cells are reused on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

from zsl.cli.benchmark import expand_methods
from zsl.cli.benchmark import main as benchmark_main

DATASETS = "cub,sun,awa1,awa2,apy,flo"
SMOKE = ["trainer.max_epochs=1", "selection.grid=false"]


def per_method(csv_path: Path) -> dict[str, float]:
    """Seconds per method summed over datasets (mean over seeds of each cell's run time)."""
    seconds: dict[str, float] = defaultdict(float)
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            seconds[row["model"]] += float(row["wall_time_s"])
    return dict(seconds)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="data/xlsa17")
    p.add_argument("--feature-file", default="res101.mat")
    p.add_argument("--datasets", default=DATASETS)
    p.add_argument("--methods", default="classical,generative")
    p.add_argument("--seeds", default="0")
    p.add_argument("--trainer", default="gpu", choices=["gpu", "cpu"])
    p.add_argument("--smoke", action="store_true", help="1 epoch, no grid, 32-d synthetic data")
    p.add_argument("--name", default="gpu_table")
    p.add_argument("--runs-dir", default="runs/benchmark")
    p.add_argument("--results-dir", default="experiments/results")
    args = p.parse_args(argv)
    methods = ",".join(m for m in expand_methods(args.methods) if m != "clip")
    bench = [
        *("--name", args.name, "--datasets", args.datasets, "--methods", methods),
        *("--seeds", args.seeds, "--root", args.root, "--feature-file", args.feature_file),
        *("--runs-dir", args.runs_dir, "--results-dir", args.results_dir),
        "--synthetic-missing",
        *(["--synthetic-dim", "32"] if args.smoke else []),
        "--",
        f"trainer={args.trainer}",
        *(SMOKE if args.smoke else []),
    ]
    start = time.perf_counter()
    benchmark_main(bench)
    total = time.perf_counter() - start
    seconds = per_method(Path(args.results_dir) / f"{args.name}.csv")
    print(f"\ntime per method over {args.datasets} ({args.trainer}):")
    for method, value in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {method:<14} {value:8.1f} s")
    print(f"  {'total':<14} {total:8.1f} s wall (cells reused from an earlier run count 0)")
    return {**seconds, "total": total}


if __name__ == "__main__":
    main()
