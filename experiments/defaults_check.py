"""Do the shipped model configs transfer beyond CUB? Every classical model, with its default
config and grid, on synthetic benchmarks of several feature sizes and class counts.

Each setting is a generated benchmark (``data=synthetic`` with ``data.synthetic.*``
overrides, its own data folder); each run is the ordinary protocol (selection on validation
classes, one test) through the benchmark runner. The table reports ZSL T1 against chance
(1 / unseen classes), the selected hyper-parameters, and every selection warning (epoch cap,
flat validation curve), so a default that only works at CUB's shape shows up as a low score
or a warning.

    python experiments/defaults_check.py --settings 64x50,2048x50,512x200

writes ``experiments/results/synthetic_defaults.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zsl.cli.benchmark import run_one  # noqa: E402
from zsl.models import MODELS  # noqa: E402

RESULTS = ROOT / "experiments" / "results"


def classical() -> list[str]:
    return sorted(n for n in MODELS if MODELS[n].startswith("zsl.models.classical."))


def setting_overrides(feature_dim: int, n_classes: int, data_dir: Path) -> list[str]:
    """A synthetic benchmark with ``n_classes`` classes (a fifth unseen, a fifth validation)
    and ``feature_dim``-d features, stored under its own name."""
    fifth = max(2, n_classes // 5)
    return [
        f"data.name=SYN_D{feature_dim}_C{n_classes}",
        f"data.root={data_dir}",
        f"data.synthetic.feature_dim={feature_dim}",
        f"data.synthetic.n_classes={n_classes}",
        f"data.synthetic.n_unseen={fifth}",
        f"data.synthetic.n_val={fifth}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", default="64x50,2048x50,512x200", help="DIMxCLASSES,...")
    p.add_argument("--methods", default=",".join(classical()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs/defaults_check")
    p.add_argument("--name", default="synthetic_defaults")
    args = p.parse_args()
    runs = Path(args.runs_dir)
    lines = [
        f"# Default configs on synthetic benchmarks (`{args.name}`)",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}. Seed {args.seed}; "
        "each run selects on validation classes and tests once. Chance = 100 / unseen "
        "classes. Command: `python experiments/defaults_check.py --settings "
        f"{args.settings}`.",
        "",
        "| features | classes | model | ZSL T1 | chance | H (calibrated) | selected | warnings "
        "| time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    start = time.perf_counter()
    for setting in args.settings.split(","):
        dim, n_classes = (int(v) for v in setting.split("x"))
        extra = setting_overrides(dim, n_classes, runs / "data")
        chance = 100.0 / max(2, n_classes // 5)
        for method in args.methods.split(","):
            run_args = argparse.Namespace(
                runs_dir=str(runs),
                name=f"D{dim}_C{n_classes}",
                force=False,
                logger="csv",
                root=None,
                feature_file=None,
            )
            m = run_one(method, "synthetic", args.seed, run_args, extra)
            selected = json.dumps({**m["selected_params"], "epochs": m["selected_epochs"]})
            warnings = "; ".join(m.get("selection_warnings") or []) or "none"
            lines.append(
                f"| {dim} | {n_classes} | {method} | {m['zsl_t1']:.1f} | {chance:.1f} | "
                f"{m['gzsl_h_cal']:.1f} | `{selected}` | {warnings} | {m['wall_time_s']:.0f} |"
            )
    lines += ["", f"Total wall time {(time.perf_counter() - start) / 60:.1f} min."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
