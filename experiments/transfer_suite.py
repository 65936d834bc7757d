"""Transfer suite: the models on real-data variants of CUB (:mod:`zsl.data.variants`).

Builds the variants (cached: a folder is rewritten only when its description changed), then
runs every model on every variant through ``train.py``'s entry point (:func:`zsl.cli.train.run`,
the full protocol: selection on validation classes, one refit on trainval, one test), and
writes a Markdown table with one row per model and, per variant, T1 / u / s / H / H cal, plus
a JSON file with every cell's metrics and the acceptance checks:

    OMP_NUM_THREADS=1 python experiments/transfer_suite.py --data-root ../shared/data/xlsa17 \\
        --out data/transfer --variants all --models all --seed 0 \\
        --table experiments/results/transfer_suite.md

Each cell's JSON record keeps, besides its numbers, ``selection_folds`` (the class-wise
validation folds selection averaged) and, for the generative models, ``data_choices`` (what the
generator adapted to the data: output layer, unit-norm outputs, noise size, ``cls_pca``), as
``metrics.json`` records them; under the table, one line per variant and generative model
summarises both.

Each cell is an ordinary run in ``<runs-dir>/<variant>_<model>_seed<seed>`` with
``data=xlsa17 data.name=<NAME> data.root=<out> data.feature_file=<file> model=<m> seed=<s>
logger=csv trainer.enable_progress_bar=false`` and every ``--set key=value``. A cell is reused
when that folder holds a ``metrics.json`` and a ``cell.json`` recording the same settings: the
run config as ``train.py`` composes it (without the keys that cannot change a number, see
:data:`zsl.run.benchmark.IGNORED_KEYS`) plus the variant's stored description. Anything else,
or ``--rerun``, runs the cell again into an emptied folder. A failed cell is reported as such
and the suite goes on. The table and the JSON are rewritten after every cell.

Checks, per variant (the issue's acceptance rules; classical = not one of :data:`GENERATIVE`):
each generative model has u > 0 and s > 0, its H cal is at least the best classical H cal
minus 2 points, and every model's T1 is at least 2/3 of the best classical T1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zsl.data.variants import VARIANTS, build_variant, is_current  # noqa: E402
from zsl.reporting.transfer_tables import (  # noqa: E402
    COLUMNS,
    GENERATIVE,
    checks,
    fmt,
    number,
    pick,
    render,
)

# ----------------------------------------------------------------------------- choices


def all_models() -> list[str]:
    """Every model config except the ``*_paper`` ones and ``clip``: the classical models in the
    GBU table's order (then the other classical ones), then :data:`GENERATIVE`."""
    from zsl.conf import available
    from zsl.run.benchmark import GBU

    names = [n for n in available("model") if not n.endswith("_paper") and n != "clip"]
    classical = [n for n in GBU if n in names]
    classical += sorted(n for n in names if n not in classical and n not in GENERATIVE)
    return classical + [n for n in GENERATIVE if n in names]


def pick_models(spec: str) -> list[str]:
    """``all`` or a comma list (``gbu``, ``classical``, ``generative`` stand for their sets)."""
    if spec.strip() == "all":
        return all_models()
    from zsl.errors import ConfigError
    from zsl.run.benchmark import expand_methods

    try:
        return expand_methods(spec)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def pick_variants(spec: str) -> list[str]:
    """``all`` or a comma list of variant names (any letter case)."""
    if spec.strip() == "all":
        return list(VARIANTS)
    names = [part.strip().upper() for part in spec.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise SystemExit(
            f"error: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(VARIANTS)} or all"
        )
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- cells


def build_all(names: list[str], source: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Build (or reuse) every variant; returns what the table says about each."""
    info: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = VARIANTS[name]
        start = time.perf_counter()
        try:
            cached = is_current(spec, source, out)
            folder = build_variant(name, source, out)
        except ValueError as err:  # DataError included: one line naming the path
            raise SystemExit(f"error: {' '.join(str(err).split())}") from None
        seconds = time.perf_counter() - start
        info[name] = {
            "description": spec.description,
            "feature_file": spec.feature_file,
            "folder": str(folder),
            "cached": cached,
            "build_s": round(seconds, 2),
            "spec": json.loads(spec.to_json(source)),
        }
        print(
            f"[transfer] {name}: {'cached' if cached else 'built'} in {seconds:.1f} s", flush=True
        )
    return info


def cell_argv(variant: str, model: str, args: argparse.Namespace) -> list[str]:
    """The ``train.py`` arguments of one cell, ``output_dir`` included."""
    return [
        "data=xlsa17",
        f"data.name={variant}",
        f"data.root={args.out}",
        f"data.feature_file={VARIANTS[variant].feature_file}",
        f"model={model}",
        f"seed={args.seed}",
        "logger=csv",
        f"output_dir={cell_dir(variant, model, args)}",
        "trainer.enable_progress_bar=false",
        *args.set,
    ]


def cell_dir(variant: str, model: str, args: argparse.Namespace) -> Path:
    return args.runs_dir / f"{variant}_{model}_seed{args.seed}"


def cell_settings(argv: list[str], variant_spec: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a cell: its composed run config (as ``train.py`` checks it, without
    the keys that cannot change a number) and the variant's stored description."""
    from zsl.cli.compose import compose_spec
    from zsl.errors import ConfigError
    from zsl.run.benchmark import settings_of

    try:
        cfg = compose_spec(argv).config
    except ConfigError as err:
        raise SystemExit(f"config error: {' '.join(str(err).split())}") from None
    return {**settings_of(cfg), "transfer_variant": dict(variant_spec)}


def run_cell(argv: list[str], out: Path, settings: dict[str, Any], rerun: bool) -> dict[str, Any]:
    """One cell: reused when finished with these settings, else run into an emptied ``out``."""
    from zsl.cli.train import run as train_run
    from zsl.run.benchmark import is_finished, rerun_reason, settings_hash, write_record

    digest = settings_hash(settings)
    if is_finished(out, digest) and not rerun:
        return {"status": "reused", **pick(json.loads((out / "metrics.json").read_text()))}
    if (out / "metrics.json").is_file():
        print(f"[transfer] rerunning {out}: {rerun_reason(out, settings, digest, rerun)}")
    if out.exists():
        shutil.rmtree(out)
    try:
        metrics = train_run(argv)
    except SystemExit as err:  # train.py's one-line failures
        return {"status": "error", "error": str(err.code)}
    except Exception as err:  # noqa: BLE001 - one cell's crash must not end the suite
        return {"status": "error", "error": f"{type(err).__name__}: {err}"}
    assert metrics is not None
    write_record(out, digest, argv, settings)
    return {"status": "ran", **pick(metrics)}


# ----------------------------------------------------------------------------- checks


# ----------------------------------------------------------------------------- report


def machine() -> str:
    from zsl.run.benchmark import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs ({available_cores()} available), "
        f"Python {platform.python_version()}"
    )


def threads() -> str:
    text = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    if "torch" in sys.modules:
        text += f", torch threads {sys.modules['torch'].get_num_threads()}"
    return text


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "xlsa17")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "transfer", help="variants here")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "transfer_suite")
    p.add_argument(
        "--variants", default="all", help=f"all or a comma list of {', '.join(VARIANTS)}"
    )
    p.add_argument("--models", default="all", help="all (no clip, no *_paper) or a comma list")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", type=Path, default=ROOT / "experiments/results/transfer_suite.md")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra train.py override for every run (repeatable)")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="run every cell again")
    p.add_argument("--build-only", action="store_true", help="build the variants and stop")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    start = time.perf_counter()
    args.out, args.runs_dir = args.out.resolve(), args.runs_dir.resolve()
    variants, models = pick_variants(args.variants), pick_models(args.models)
    info = build_all(variants, args.data_root, args.out)
    report: dict[str, Any] = {
        "command": shlex.join(
            [
                Path(sys.argv[0]).name if argv is None else "transfer_suite.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),  # fmt: skip
        "machine": machine(),
        "seed": args.seed,
        "set": list(args.set),
        "variants": info,
        "models": models,
        "cells": {v: {} for v in variants},
    }
    if args.build_only:
        return report
    plan = []  # every cell's config composed (and checked) before any runs
    for variant in variants:
        for model in models:
            cell_args = cell_argv(variant, model, args)
            plan.append(
                (variant, model, cell_args, cell_settings(cell_args, info[variant]["spec"]))
            )
    for variant, model, cell_args, settings in plan:
        out = cell_dir(variant, model, args)
        cell = {**run_cell(cell_args, out, settings, args.rerun), "run_dir": str(out)}
        report["cells"][variant][model] = cell
        shown = " ".join(f"{h} {fmt(cell, k)}" for k, h in COLUMNS)
        seconds = number(cell, "wall_time_s") or 0.0
        print(
            f"[transfer] {variant} {model}: {shown} ({cell['status']}, {seconds:.0f} s)", flush=True
        )
        if cell.get("error"):
            print(f"[transfer] {variant} {model} failed: {cell['error']}", flush=True)
        save(report, args.table, start)
    save(report, args.table, start)
    print(args.table.read_text())
    return report


def save(report: dict[str, Any], table: Path, start: float) -> None:
    """Rewrite the Markdown table and the JSON beside it (``<table stem>.json``)."""
    report["threads"] = threads()
    report["done"] = sum(len(row) for row in report["cells"].values())
    report["elapsed_s"] = time.perf_counter() - start
    report["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["checks"] = checks(report["cells"])
    write_atomic(table, render(report))
    write_atomic(table.with_suffix(".json"), json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
