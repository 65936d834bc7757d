"""Nested check of how an epoch count selected on validation classes carries over to a larger
training set (``model.search.transfer``), using validation classes only.

The final fit of the standard protocol trains on trainval (CUB: 150 seen classes) for the
epoch count selected on the val protocol (100 seen classes). Whether to repeat that many
*epochs* or that many *updates* (``steps``) is itself a choice that must not be made on the
test split. This script reproduces the situation one level down:

* inner: the val protocol with only ``--inner-fraction`` of the train classes as seen classes
  (CUB: 67 of 100), evaluated on the usual validation classes;
* outer: the ordinary val protocol (all 100 train classes), the same validation classes.

Both fits validate every epoch. The epoch selected on the inner fit is carried to the outer
fit by each rule, and the outer validation metric at the resulting epoch says which rule
transfers (the outer optimum is printed for reference only; nothing selects on it).

    python experiments/transfer_check.py --root ../shared/data/xlsa17 \\
        --feature-file vgg_fc7.mat --model clswgan --epochs 40

writes ``experiments/results/<name>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from zsl.cli.compose import compose_spec  # noqa: E402
from zsl.data.types import ZSLData  # noqa: E402
from zsl.run.builders import load_data, make_datamodule, make_model, make_trainer  # noqa: E402
from zsl.run.callbacks import EvaluationRecorder  # noqa: E402
from zsl.run.selection import (  # noqa: E402
    best_epoch,
    transfer_epochs,
)
from zsl.run.spec import TRANSFER_RULES, RunSpec  # noqa: E402

RESULTS = ROOT / "experiments" / "results"


def inner_split(data: ZSLData, fraction: float, seed: int) -> ZSLData:
    """The val-protocol benchmark with only ``fraction`` of its train classes (drawn with
    ``seed``) left in ``train_loc``; ``val_loc`` (the unseen classes) is unchanged."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--inner-fraction must be in (0, 1), got {fraction}")
    train = data.locs["train_loc"]
    classes = data.classes_of("train_loc")
    n_keep = max(2, round(fraction * classes.size))
    keep = np.random.default_rng(seed).permutation(classes)[:n_keep]
    locs = dict(data.locs)
    locs["train_loc"] = train[np.isin(data.labels[train], keep)]
    return dataclasses.replace(data, locs=locs)


def validation_curve(
    cfg: RunSpec, data: ZSLData, params: dict[str, Any], epochs: int
) -> tuple[list[dict[str, float]], int, int, float]:
    """Fit the val protocol on ``data`` for ``epochs`` epochs, validating each one.
    Returns (per-epoch metrics, seen classes, training batches per epoch, seconds)."""
    dm = make_datamodule(cfg, "val", data)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = make_model(cfg, dm, params)
    recorder = EvaluationRecorder()
    model_cls = cfg.model.cls
    trainer = make_trainer(
        cfg.trainer, model_cls, epochs, False, validate=True, callbacks=[recorder]
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    n_seen = int(dm.class_space.seen_ids.numel())
    return recorder.history, n_seen, len(dm.train_dataloader()), seconds


def at_epoch(history: list[dict[str, float]], epoch: int) -> dict[str, float]:
    return next(h for h in history if int(h["epoch"]) == epoch)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/xlsa17")
    parser.add_argument("--dataset", default="cub", help="data config name")
    parser.add_argument("--feature-file", default="res101.mat")
    parser.add_argument("--model", default="clswgan")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--inner-fraction", type=float, default=2 / 3)
    parser.add_argument("--seed", type=int, default=0, help="draw of the inner train classes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("overrides", nargs="*", help="extra config overrides (key=value)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_spec(
        [
            f"data={args.dataset}",
            f"data.root={args.root}",
            f"data.feature_file={args.feature_file}",
            f"model={args.model}",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            *args.overrides,
        ]
    )
    params = dict(cfg.model.params)
    metric = cfg.model.search.metric
    outer_data = load_data(cfg, "val")
    inner_data = inner_split(outer_data, args.inner_fraction, args.seed)
    inner, inner_seen, inner_batches, inner_s = validation_curve(
        cfg, inner_data, params, args.epochs
    )
    outer, outer_seen, outer_batches, outer_s = validation_curve(
        cfg, outer_data, params, args.epochs
    )
    chosen = int(best_epoch(inner, metric)["epoch"])
    rules = {}
    # a model that counts a schedule in epochs (CADA-VAE's warm-ups) rescales it under the
    # steps rule: that rule then has an outer fit of its own
    steps_params = cfg.model.cls.steps_transfer_params(params, inner_batches / outer_batches)
    steps_outer: list[dict[str, float]] | None = None
    if steps_params != params:
        steps_outer, _, _, steps_s = validation_curve(cfg, outer_data, steps_params, args.epochs)
    for rule in TRANSFER_RULES:
        epoch = min(args.epochs, transfer_epochs(chosen, inner_batches, outer_batches, rule))
        curve = steps_outer if rule == "steps" and steps_outer is not None else outer
        rules[rule] = {"outer_epoch": epoch, metric: at_epoch(curve, epoch)[metric]}
    if steps_outer is not None:
        rules["steps"]["params"] = steps_params
    oracle = best_epoch(outer, metric)
    result = {
        "model": args.model,
        "dataset": str(cfg.data.name),
        "metric": metric,
        "params": params,
        "inner_seen_classes": inner_seen,
        "outer_seen_classes": outer_seen,
        "inner_batches_per_epoch": inner_batches,
        "outer_batches_per_epoch": outer_batches,
        "inner_selected_epoch": chosen,
        "inner_selected_value": at_epoch(inner, chosen)[metric],
        "rules": rules,
        "outer_best_epoch": int(oracle["epoch"]),
        "outer_best_value": oracle[metric],
        "seconds": {"inner": inner_s, "outer": outer_s}
        | ({"outer_steps": steps_s} if steps_outer is not None else {}),
        "outer_steps_history": steps_outer,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "inner_history": inner,
        "outer_history": outer,
    }
    name = args.name or f"{str(cfg.data.name).lower()}_{args.model}_transfer"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out_dir / f"{name}.md").write_text(report(result, args))
    print(report(result, args))
    return result


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    m = r["metric"]
    lines = [
        f"# Epoch transfer check: {r['model']} on {r['dataset']} ({args.feature_file})",
        "",
        f"Validation classes only. Inner fit: {r['inner_seen_classes']} of the train classes "
        f"as seen classes ({r['inner_batches_per_epoch']} batches per epoch); outer fit: all "
        f"{r['outer_seen_classes']} ({r['outer_batches_per_epoch']} batches per epoch); both "
        "evaluated on the validation classes every epoch, the model's config with the "
        f"command's overrides (`{json.dumps(r['params'], sort_keys=True)}`). Machine: "
        f"{r['machine']}; fits took {r['seconds']['inner']:.0f} s and "
        f"{r['seconds']['outer']:.0f} s.",
        "",
        f"Command: `python experiments/transfer_check.py --root {args.root} --dataset "
        f"{args.dataset} --feature-file {args.feature_file} --model {args.model} --epochs "
        f"{args.epochs}{f' --seed {args.seed}' if args.seed else ''}"
        f"{''.join(' ' + o for o in args.overrides)}`",
        "",
        f"Inner selection: epoch {r['inner_selected_epoch']} (val {m} "
        f"{r['inner_selected_value']:.1f}).",
        "",
        f"| rule | outer epoch | outer val {m} |",
        "| --- | --- | --- |",
    ]
    for rule, v in r["rules"].items():
        lines.append(f"| {rule} | {v['outer_epoch']} | {v[m]:.1f} |")
    lines += [
        f"| (outer optimum, reference only) | {r['outer_best_epoch']} | "
        f"{r['outer_best_value']:.1f} |",
        "",
    ]
    curves = [r["inner_history"], r["outer_history"]]
    columns = ["inner", "outer"]
    if r.get("outer_steps_history"):
        curves.append(r["outer_steps_history"])
        columns.append("outer, steps rule")
        params = json.dumps(r["rules"]["steps"]["params"], sort_keys=True)
        lines += [
            "The steps rule's outer fit rescales the model's epoch-counted schedule to keep its "
            f"length in updates (`{params}`); its curve is the last column.",
            "",
        ]
    lines += [
        f"Validation {m} per epoch:",
        "",
        f"| epoch | {' | '.join(columns)} |",
        "| --- |" + " --- |" * len(columns),
    ]
    for rows in zip(*curves):
        values = " | ".join(f"{h[m]:.1f}" for h in rows)
        lines.append(f"| {int(rows[0]['epoch'])} | {values} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
