"""Cost of full runs against the machine's arithmetic limit (written for the classical models;
``--models`` takes any model, e.g. ``cadavae,clswgan`` for the generators).

For each model, two fresh processes run the whole protocol (selection on validation classes,
the final trainval fit and the single test evaluation) on the same data:

1. timed: wall time, CPU seconds (user + system, from ``getrusage`` of the child), the run's own
   wall time (``metrics.json``: everything after start-up and imports) and ZSL T1;
2. counted: the same run under a dispatch mode that adds up the floating-point operations of
   every matrix product by ``torch.utils.flop_counter``'s formulas (elementwise work is not
   counted; :func:`product_counter`).

With ``--numpy-reference DIR`` (a checkout of github.com/mvp18/Popular-ZSL-Algorithms, whose
``ALE/ale.py``, ``SJE/sje.py`` and ``DeViSE/devise.py`` need SciPy and scikit-learn), each
model's NumPy script also runs, one thread, beside it: one setting (the checkout's own CUB
choice), trained on ``train_loc`` with early stopping on ``val_loc``, then ZSL T1 on the unseen
test classes. It is a reference for arithmetic efficiency, not the same protocol: no grid, no
final trainval fit, no GZSL evaluation.

The machine's matmul rate is measured here too (a 4096 x 4096 x 312 product, as large as the
fits' own), before and after the runs (the higher of the two is reported), as GFLOP/s of wall
time and per CPU second, in float32 and in bfloat16. A run's
*arithmetic time* is its FLOPs at the rate of its own precision; the table reports each run's
time as a multiple of it.

Each model runs in every precision of ``--precisions`` (Lightning's ``trainer.precision``):
``32-true`` is the default of ``train.py``; ``bf16-mixed`` runs the matrix products in bfloat16
(weights, optimiser state and losses stay float32), which CPUs with AMX or AVX512-BF16 and
recent GPUs execute several times faster. FLOPs are counted once per model, on the float32 run
(the products are the same; only the selected epoch count can differ, and the table gives both).

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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: the NumPy reference scripts (``--numpy-reference``) and the settings their checkout chose on
#: CUB's validation classes
NUMPY_REFERENCE = {
    "ale": ("ALE/ale.py", ["-norm", "L2", "-lr", "0.3"]),
    "sje": ("SJE/sje.py", ["-norm", "std", "-lr", "0.1", "-mr", "4.0"]),
    "devise": ("DeViSE/devise.py", ["-norm", "L2", "-lr", "1.0", "-mr", "1.0"]),
}


#: dtype of the matrix products under each ``trainer.precision`` this benchmark runs
PRODUCT_DTYPE = {"32-true": "float32", "bf16-mixed": "bfloat16"}


def matmul_rate(
    dtype: str = "float32", seconds: float = 2.0, blas: bool = False
) -> tuple[float, float]:
    """(GFLOP/s of wall time, GFLOP per CPU second) of ``dtype`` matmuls on this machine, by
    the route the models' products take (``zsl.models.products.mm``: float32 through oneDNN
    where PyTorch has it; bfloat16 as autocast runs it); ``blas``: PyTorch's own ``a @ b``."""
    import torch

    from zsl.models.products import mm

    kind = getattr(torch, dtype)
    a, b = torch.randn(4096, 4096, dtype=kind), torch.randn(4096, 312, dtype=kind)
    product = torch.mm if blas else mm
    for _ in range(3):
        product(a, b)
    flops = 2 * 4096 * 4096 * 312
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall < seconds:
        product(a, b)
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return flops * n / wall / 1e9, flops * n / cpu / 1e9


def train_args(model: str, args: argparse.Namespace, out: Path, precision: str) -> list[str]:
    return [
        f"data={args.data}",
        f"data.root={args.root}",
        f"data.feature_file={args.feature_file}",
        f"model={model}",
        "logger=csv",
        f"output_dir={out}",
        "trainer.enable_progress_bar=false",
        f"trainer.precision={precision}",
        *args.extra,
    ]


def product_counter() -> Any:
    """A dispatch mode that adds up the FLOPs of every matrix product by the formulas of
    ``torch.utils.flop_counter`` (oneDNN's linear registered by :mod:`zsl.models.products`):
    the total ``FlopCounterMode`` gives, without its per-module bookkeeping and without
    decomposing the other operators, which took tf-VAEGAN's run past 22 GB."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    import zsl.models.products  # noqa: F401  (registers oneDNN's kernel in the registry)

    class ProductCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    return ProductCounter()


def count_flops(argv: list[str]) -> None:
    """The counted child: one run under :func:`product_counter`; prints the total as JSON."""
    from zsl.cli.train import run as train_main

    with product_counter() as counter:
        train_main(argv)
    print(json.dumps({"flops": counter.total}))


def timed(argv: list[str], threads: int) -> dict[str, float]:
    """A fresh process running ``train.py argv`` with ``threads`` torch threads: wall and CPU
    seconds."""
    return run_timed([sys.executable, str(REPO / "train.py"), *argv], threads)[0]


def run_timed(
    command: list[str], threads: int, cwd: Path | None = None
) -> tuple[dict[str, float], str]:
    """Run ``command`` with ``threads`` OpenMP/BLAS threads: wall and CPU seconds (the child's
    user + system time), and its standard output."""
    env = {
        **os.environ,
        **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}, done.stdout


def numpy_reference(
    model: str, checkout: Path, args: argparse.Namespace, tmp: Path
) -> dict[str, float] | None:
    """One-thread run of the NumPy script of ``model`` in ``checkout`` on ``args.data``'s
    xlsa17 files (laid out as the script reads them: ``../xlsa17/data/<NAME>/res101.mat``,
    here a link to ``--feature-file``): wall and CPU seconds, ZSL T1 (%); None if the
    checkout has no script for the model."""
    if model not in NUMPY_REFERENCE:
        return None
    script, settings = NUMPY_REFERENCE[model]
    name = args.data.upper()
    data = tmp / "numpy_reference" / "xlsa17" / "data" / name
    data.mkdir(parents=True, exist_ok=True)
    for link, target in (("res101.mat", args.feature_file), ("att_splits.mat", "att_splits.mat")):
        if not (data / link).exists():
            (data / link).symlink_to(Path(args.root) / name / target)
    cwd = data.parent.parent.parent / "run"
    cwd.mkdir(exist_ok=True)
    row, out = run_timed([sys.executable, str(checkout / script), "-data", name, *settings], 1, cwd)
    accuracy = [line for line in out.splitlines() if line.startswith("Test Acc:")]
    if not accuracy:
        raise RuntimeError(f"{checkout / script} printed no 'Test Acc:' line")
    row["zsl_t1"] = 100.0 * float(accuracy[-1].split(":", 1)[1])
    return row


def measure(
    model: str, precision: str, threads: int, args: argparse.Namespace, tmp: Path
) -> dict[str, float]:
    out = tmp / f"{model}_{precision}_timed_{threads}"
    row = timed(train_args(model, args, out, precision), threads)
    metrics = json.loads((out / "metrics.json").read_text())
    row.update(
        run_wall_s=float(metrics["wall_time_s"]),
        run_cpu_s=float(metrics["cpu_time_s"]),
        zsl_t1=float(metrics["zsl_t1"]),
        epochs=float(metrics["selected_epochs"]),
    )
    return row


def flops(model: str, args: argparse.Namespace, tmp: Path) -> tuple[float, int]:
    """Matrix-product FLOPs of one full float32 run (counted in a fresh process), and the epoch
    count that run selected."""
    out = tmp / f"{model}_n"
    counted = subprocess.run(
        [sys.executable, __file__, "--count", "--", *train_args(model, args, out, "32-true")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    epochs = int(json.loads((out / "metrics.json").read_text())["selected_epochs"])
    return float(json.loads(counted.strip().splitlines()[-1])["flops"]), epochs


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
    p.add_argument("--threads", default="2,1", help="torch threads of the timed runs")
    p.add_argument(
        "--precisions",
        default="32-true,bf16-mixed",
        help=f"trainer.precision of the timed runs, of {sorted(PRODUCT_DTYPE)}",
    )
    p.add_argument(
        "--numpy-reference",
        default=None,
        help="a checkout of mvp18/Popular-ZSL-Algorithms: also run its NumPy scripts, one thread",
    )
    p.add_argument("extra", nargs="*", help="key=value overrides for every run")
    args = p.parse_args(argv)
    root_given = args.root  # as typed, for the results file's command line
    args.root = str(Path(args.root).resolve())
    threads = [int(t) for t in args.threads.split(",")]
    precisions = args.precisions.split(",")
    unknown = sorted(set(precisions) - set(PRODUCT_DTYPE))
    if unknown:
        p.error(f"--precisions: unknown {unknown}; use {sorted(PRODUCT_DTYPE)}")
    rates = {dtype: matmul_rate(dtype) for dtype in {PRODUCT_DTYPE[x] for x in precisions}}
    blas = matmul_rate("float32", blas=True)  # for comparison: PyTorch's own float32 route
    for dtype, (wall_rate, cpu_rate) in sorted(rates.items()):
        print(f"{dtype} matmul rate: {wall_rate:.0f} GFLOP/s wall, {cpu_rate:.0f} GFLOP/CPU s")
    print(f"float32 through PyTorch's BLAS: {blas[0]:.0f} GFLOP/s wall, {blas[1]:.0f} GFLOP/CPU s")
    rows: list[tuple[str, str, int, float, int, dict[str, float]]] = []
    references: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            if args.numpy_reference is not None:
                ref = numpy_reference(model, Path(args.numpy_reference).resolve(), args, Path(tmp))
                if ref is not None:
                    references[model] = ref
                    print(
                        f"{model} NumPy reference (1 thread): {ref['cpu_s']:.1f} CPU s, "
                        f"{ref['wall_s']:.1f} s wall, ZSL T1 {ref['zsl_t1']:.2f}",
                        flush=True,
                    )
            total, counted_epochs = flops(model, args, Path(tmp))
            for precision in precisions:
                for n in threads:
                    r = measure(model, precision, n, args, Path(tmp))
                    rows.append((model, precision, n, total, counted_epochs, r))
                    print(
                        f"{model} {precision} ({n} thread(s)): {total / 1e12:.2f} TFLOP, "
                        f"{r['wall_s']:.1f} s wall ({r['run_wall_s']:.1f} in the run), "
                        f"{r['cpu_s']:.1f} CPU s ({r['run_cpu_s']:.1f} in the run), "
                        f"ZSL T1 {r['zsl_t1']:.2f}",
                        flush=True,
                    )
    # measured again after the runs: a rate is the machine's best (a transient load elsewhere
    # would make the arithmetic time look longer and the runs look closer to it)
    for dtype, (wall, cpu) in list(rates.items()):
        again = matmul_rate(dtype)
        rates[dtype] = (max(wall, again[0]), max(cpu, again[1]))
    lines = [
        f"# Cost of full runs on {args.data} ({args.feature_file})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores"
        f"{_cpu_features()}. Matmul rates measured here with {_threads()} threads "
        "(4096 x 4096 x 312): "
        + "; ".join(
            f"{dtype} **{w:.0f} GFLOP/s** of wall time, {c:.0f} GFLOP per CPU second"
            for dtype, (w, c) in sorted(rates.items(), reverse=True)
        )
        + f". The models' float32 products go through oneDNN (`zsl.models.products`); "
        f"PyTorch's own float32 `a @ b` (its BLAS) ran at {blas[0]:.0f} GFLOP/s of wall time, "
        f"{blas[1]:.0f} per CPU second.",
        "",
        "A full run = selection over the model's grid on validation classes (every epoch "
        "validated; grid points are fitted together in one stacked pass, or in one shared fit "
        "where they train identically) "
        "+ the final trainval fit + one test evaluation + reports, in a fresh process. FLOPs are "
        "every matrix product's, counted by torch's flop formulas (`product_counter`) on the "
        "same run; *arithmetic time* is FLOPs at the wall-time matmul rate of the run's "
        "precision. *Run* columns are "
        "the run's own figures (`metrics.json`: after interpreter start-up and imports); "
        "*process* columns include them. FLOPs are counted on the float32 run; *epochs* are "
        "the selected epoch counts of the timed run and of the counted one (they can differ "
        "between precisions, and the FLOPs with them). The *NumPy reference* is the "
        "model's script in github.com/mvp18/Popular-ZSL-Algorithms, run one thread in a fresh "
        "process the same hour (process CPU s and its ZSL T1): one setting, trained on the "
        "train classes with early stopping on validation, ZSL test only; its ratio divides "
        "this run's process CPU s by the reference's, so it compares a whole protocol (grid, "
        "final trainval fit, GZSL test) against one fit.",
        "",
        "| model | precision | threads | TFLOP | arithmetic (s) | run wall (s) | run / arithmetic "
        "| process wall (s) | run CPU s | process CPU s | NumPy reference: CPU s, 1 thread "
        "(ZSL T1) | process CPU s / reference | ZSL T1 | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, precision, n, total, counted_epochs, r in rows:
        arithmetic = total / (rates[PRODUCT_DTYPE[precision]][0] * 1e9)
        ref = references.get(model)
        reference = f"{ref['cpu_s']:.0f} ({ref['zsl_t1']:.1f})" if ref else "–"
        ratio = f"{r['cpu_s'] / ref['cpu_s']:.2f}" if ref else "–"
        lines.append(
            f"| {model} | {precision} | {n} | {total / 1e12:.2f} | {arithmetic:.1f} | "
            f"{r['run_wall_s']:.1f} | {r['run_wall_s'] / arithmetic:.1f}x | {r['wall_s']:.1f} | "
            f"{r['run_cpu_s']:.1f} | {r['cpu_s']:.1f} | {reference} | {ratio} | "
            f"{r['zsl_t1']:.2f} | {int(r['epochs'])} / {counted_epochs} |"
        )
    lines += [
        "",
        f"Command: `python experiments/classical_cost.py --data {args.data} --root {root_given} "
        f"--feature-file {args.feature_file} --models {args.models} --threads {args.threads} "
        f"--precisions {args.precisions} --name {args.name}"
        f"{' --numpy-reference <checkout>' if args.numpy_reference else ''}"
        f"{''.join(' ' + x for x in args.extra)}`.",
    ]
    out = Path(args.results_dir) / f"{args.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_features() -> str:
    """The CPU model and its bfloat16 matrix extensions, from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = " ".join(fields.get("model name", "").split())
    flags = set(fields.get("flags", "").split())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f" ({name}{'; ' + ', '.join(bf16) if bf16 else ''})" if name else ""


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
