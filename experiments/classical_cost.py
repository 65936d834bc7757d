"""Cost of full classical runs against the machine's arithmetic limit.

For each model, two fresh processes run the whole protocol (selection on validation classes,
the final trainval fit and the single test evaluation) on the same data:

1. timed: wall time, CPU seconds (user + system, from ``getrusage`` of the child), the run's own
   wall time (``metrics.json``: everything after start-up and imports) and ZSL T1;
2. counted: the same run under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
   floating-point operations of every matrix product (elementwise work is not counted).

The machine's matmul rate is measured here too (a 4096 x 4096 x 312 product, as large as the
fits' own), as GFLOP/s of wall time and per CPU second. A run's *arithmetic time* is its FLOPs at
that rate; the table reports each run's time as a multiple of it.

    python experiments/classical_cost.py --root ../shared/data/xlsa17 --feature-file vgg_fc7.mat

Writes ``experiments/results/<name>.md`` (default ``classical_cost``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: CPU seconds per full CUB VGG run of an earlier NumPy implementation of the same protocol
NUMPY_REFERENCE_CPU_S = {"ale": 515.0, "sje": 648.0, "devise": 424.0}


def matmul_rate(seconds: float = 2.0) -> tuple[float, float]:
    """(GFLOP/s of wall time, GFLOP per CPU second) of float32 matmuls on this machine."""
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 312)
    for _ in range(3):
        a @ b
    flops = 2 * 4096 * 4096 * 312
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall < seconds:
        a @ b
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return flops * n / wall / 1e9, flops * n / cpu / 1e9


def train_args(model: str, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        f"data={args.data}",
        f"data.root={args.root}",
        f"data.feature_file={args.feature_file}",
        f"model={model}",
        "logger=csv",
        f"output_dir={out}",
        "trainer.enable_progress_bar=false",
        *args.extra,
    ]


def count_flops(argv: list[str]) -> None:
    """The counted child: one run under FlopCounterMode; prints the total as JSON."""
    from torch.utils.flop_counter import FlopCounterMode

    from zsl.cli.train import main as train_main

    with FlopCounterMode(display=False) as counter:
        train_main(argv)
    print(json.dumps({"flops": counter.get_total_flops()}))


def timed(argv: list[str]) -> dict[str, float]:
    """A fresh process running ``train.py argv``: wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), *argv], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def measure(model: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    out = tmp / f"{model}_timed"
    row = timed(train_args(model, args, out))
    metrics = json.loads((out / "metrics.json").read_text())
    row.update(run_wall_s=float(metrics["wall_time_s"]), zsl_t1=float(metrics["zsl_t1"]))
    counted = subprocess.run(
        [sys.executable, __file__, "--count", "--", *train_args(model, args, tmp / f"{model}_n")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    row["flops"] = float(json.loads(counted.strip().splitlines()[-1])["flops"])
    return row


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--count":
        count_flops(argv[2:] if argv[1:2] == ["--"] else argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="ale,devise,sje,latem")
    p.add_argument("--data", default="cub")
    p.add_argument("--root", default="../shared/data/xlsa17")
    p.add_argument("--feature-file", default="vgg_fc7.mat")
    p.add_argument("--name", default="classical_cost")
    p.add_argument("--results-dir", default=str(REPO / "experiments" / "results"))
    p.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = p.parse_args(argv)
    args.root = str(Path(args.root).resolve())
    wall_rate, cpu_rate = matmul_rate()
    print(f"matmul rate: {wall_rate:.0f} GFLOP/s wall, {cpu_rate:.0f} GFLOP per CPU second")
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rows[model] = r = measure(model, args, Path(tmp))
            print(
                f"{model}: {r['flops'] / 1e12:.2f} TFLOP, {r['wall_s']:.1f} s wall "
                f"({r['run_wall_s']:.1f} s in the run), {r['cpu_s']:.1f} CPU s, "
                f"ZSL T1 {r['zsl_t1']:.1f}",
                flush=True,
            )
    lines = [
        f"# Classical cost: full runs on {args.data} ({args.feature_file})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{_threads()}. Matmul rate measured here: **{wall_rate:.0f} GFLOP/s** of wall time, "
        f"{cpu_rate:.0f} GFLOP per CPU second (float32, 4096 x 4096 x 312).",
        "",
        "A full run = selection over the model's grid on validation classes (every epoch "
        "validated) + the final trainval fit + one test evaluation, in a fresh process. FLOPs "
        "are every matrix product's, counted by `torch.utils.flop_counter.FlopCounterMode` on "
        "the same run; *arithmetic time* is FLOPs / matmul rate. *In-run* is the run's own "
        "wall time (`metrics.json`: after interpreter start-up and imports).",
        "",
        "| model | TFLOP | arithmetic time (s) | wall (s) | in-run wall (s) | in-run / arithmetic "
        "| CPU s | NumPy reference CPU s | ratio | ZSL T1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, r in rows.items():
        arithmetic = r["flops"] / (wall_rate * 1e9)
        ref = NUMPY_REFERENCE_CPU_S.get(model)
        ratio = f"1/{ref / r['cpu_s']:.0f}" if ref else "–"
        lines.append(
            f"| {model} | {r['flops'] / 1e12:.2f} | {arithmetic:.1f} | {r['wall_s']:.1f} | "
            f"{r['run_wall_s']:.1f} | {r['run_wall_s'] / arithmetic:.1f}x | {r['cpu_s']:.1f} | "
            f"{f'{ref:.0f}' if ref else '–'} | "
            f"{ratio} | {r['zsl_t1']:.1f} |"
        )
    lines += [
        "",
        "Command: `python experiments/classical_cost.py --root ../shared/data/xlsa17 "
        "--feature-file vgg_fc7.mat`.",
    ]
    out = Path(args.results_dir) / f"{args.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
