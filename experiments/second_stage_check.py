"""Second-stage settings of a generative model on one trained generator, validation classes only.

A finished run keeps, for every grid point, the generator of its validation-protocol fit at the
epoch validation selected (``trials/<i>.json`` names the checkpoint; the generator saw the
train classes only). This script loads one of them, retrains the GZSL classifier for every
combination of ``--cls-steps`` (classifier updates) and ``--synth-residual`` (``none`` = the
papers' synthetic examples; ``k`` = plus ``k`` real seen within-class deviations) and scores
each on the validation classes. The data are the val protocol's: no test image or label is
read.

    python experiments/second_stage_check.py runs/<run> --trial 0 \\
        --cls-steps 200,340,600,1200 --synth-residual none,1

writes ``experiments/results/<name>.md`` and ``.json``. The classifier's within-class spread
is printed beside: root mean squared deviation from the class mean, real seen training features
against the generator's features of the same seen classes.

``--inner-fraction f`` adds a nested check of how a setting selected on validation carries over
to a protocol with more seen classes (the final fit has 150 seen CUB classes where validation
had 100), one level down and on validation classes only: the same generator, with only the
fraction ``f`` of the train classes as the classifier's seen classes (inner) and with all of
them (outer). ``--nested`` names the setting:

* ``cls_steps`` (the ``--cls-steps`` values, at the last ``--synth-residual``): the inner
  optimum is carried by the same number of updates (``steps``), updates in proportion to the
  classes of the universe (``per_class``), or to the classifier's training examples
  (``epochs``);
* ``synth_ratio`` (the ``--synth-ratios`` values, at the config's classifier length and the
  last ``--synth-residual``): the inner optimum is carried as the same share of synthetic
  examples among all (``share``: ``synth_ratio`` unchanged, so each unseen class gets 1.5x
  more examples when there are 1.5x more real seen ones) or as the same number per unseen
  class relative to the real examples per seen class (``per_class``: ``synth_ratio`` times
  inner / outer seen classes).

Each rule is scored on the outer protocol beside the outer optimum (for reference only).
``--inner-seeds`` repeats the check over several draws of the inner classes.
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from zsl.models.checkpoint import load_checkpoint  # noqa: E402
from zsl.models.generative.base import GenerativeZSL  # noqa: E402
from zsl.run.builders import load_data, make_datamodule, make_model, make_trainer  # noqa: E402
from zsl.run.config import run_spec  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from transfer_check import inner_split  # noqa: E402

RESULTS = ROOT / "experiments" / "results"
METRICS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "gzsl_h_cal")


def load_validation_generator(
    run: Path, trial: int, inner_fraction: float | None = None, seed: int = 0
) -> tuple[GenerativeZSL, Any, Any]:
    """(model, val-protocol datamodule, config) of grid point ``trial`` of the run in ``run``,
    with the generator of its validation fit loaded (with ``inner_fraction``: bound to the val
    protocol with only that fraction of the train classes, drawn with ``seed``, as seen)."""
    cfg = run_spec(OmegaConf.load(run / "config.yaml"))  # type: ignore[arg-type]
    record_path = run / "trials" / f"{trial}.json"
    if not record_path.is_file():
        raise SystemExit(f"error: {record_path} not found (a finished run's grid point)")
    record = json.loads(record_path.read_text())
    checkpoint = run / str(record.get("checkpoint") or "")
    if not checkpoint.is_file():
        raise SystemExit(f"error: {checkpoint} not found (the trial keeps no checkpoint)")
    data = load_data(cfg, "val")
    if inner_fraction is not None:
        data = inner_split(data, inner_fraction, seed)
    dm = make_datamodule(cfg, "val", data)
    model = make_model(cfg, dm, record["params"])
    if not isinstance(model, GenerativeZSL):
        raise SystemExit(f"error: {cfg.model.name} is not a generative model")
    state = load_checkpoint(checkpoint)["state_dict"]
    if inner_fraction is None:
        model.load_state_dict(state)
    else:  # the networks; the class-space buffers are the inner protocol's (bound again)
        own = model.state_dict()
        model.load_state_dict(
            {k: v for k, v in state.items() if k in own and own[k].shape == v.shape},
            strict=False,
        )
        model.bind(dm)
    return model, dm, cfg


def within_class_rms(x: torch.Tensor, y: torch.Tensor) -> float:
    """Root mean squared distance of the rows of ``x`` from their class mean."""
    from zsl.models.generative.second_stage import within_class_residuals

    return float(within_class_residuals(x, y).pow(2).sum(dim=1).mean().sqrt())


def spread(model: GenerativeZSL, per_class: int = 50) -> dict[str, float]:
    """Within-class RMS of the real seen training features and of generated ones."""
    with torch.no_grad():
        x, y = model.seen_training_data()
        seen = model.seen_ids
        fake = model.generate_features(
            model.semantics[seen], per_class, torch.Generator().manual_seed(0)
        )
        labels = seen.repeat_interleave(per_class)
    return {"real": within_class_rms(x, y), "generated": within_class_rms(fake, labels)}


def sweep(
    model: GenerativeZSL, dm: Any, cfg: Any, settings: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Validation metrics of the classifier retrained with every setting (``SecondStage``
    fields, e.g. ``{"cls_steps": 600, "synth_residual": 1.0}``) on ``model``'s generator."""
    trainer = make_trainer(cfg.trainer, cfg.model.cls, 1, False)
    base = model.second_stage
    rows = []
    for setting in settings:
        fields = dict(setting)
        if "cls_steps" in fields:
            fields["cls_min_steps"] = None
        model.second_stage = dataclasses.replace(base, **fields)
        start = time.perf_counter()
        out = trainer.validate(model, dm, verbose=False)[0]
        row: dict[str, Any] = dict(setting)
        row.update({m: float(out[f"val/{m}"]) for m in METRICS})
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(
            " ".join(f"{k}={v}" for k, v in setting.items())
            + ": "
            + " ".join(f"{m} {row[m]:.1f}" for m in METRICS),
            flush=True,
        )
    model.second_stage = base
    return rows


def sizes(model: GenerativeZSL) -> dict[str, int]:
    return {
        "universe": int(model.universe_mask().sum()),
        "real_seen": int(model.seen_training_data()[0].shape[0]),
        "seen_classes": int(model.seen_ids.numel()),
    }


def carried(knob: str, best: float, inner: dict[str, int], outer: dict[str, int]) -> dict[str, Any]:
    """The inner optimum ``best`` of ``knob`` carried to the outer protocol by each rule."""
    if knob == "cls_steps":
        return {
            "steps": int(best),
            "per_class": round(best * outer["universe"] / inner["universe"]),
            "epochs": round(best * outer["real_seen"] / inner["real_seen"]),
        }
    if knob == "synth_ratio":
        return {
            "share": best,
            "per_class": round(best * inner["seen_classes"] / outer["seen_classes"], 4),
        }
    raise SystemExit(f"error: --nested must be cls_steps or synth_ratio, got {knob!r}")


def nested(
    run: Path,
    trial: int,
    fraction: float,
    seed: int,
    knob: str,
    values: list[Any],
    fixed: dict[str, Any],
    outer_model: tuple[GenerativeZSL, Any, Any],
    outer_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The nested transfer check of ``knob`` (see the module docstring) with the other
    second-stage fields at ``fixed``; ``outer_model`` is the run's generator on the full val
    protocol, ``outer_rows`` its scores at ``values`` when already computed."""
    settings = [{**fixed, knob: v} for v in values]
    model, dm, cfg = load_validation_generator(run, trial, fraction, seed)
    inner = {"rows": sweep(model, dm, cfg, settings), **sizes(model)}
    model, dm, cfg = outer_model
    outer = {"rows": outer_rows or sweep(model, dm, cfg, settings), **sizes(model)}
    best = max(inner["rows"], key=lambda r: r["gzsl_h"])[knob]
    rules = {}
    for rule, value in carried(knob, best, inner, outer).items():
        done = [r for r in outer["rows"] if r[knob] == value]
        row = done[0] if done else sweep(model, dm, cfg, [{**fixed, knob: value}])[0]
        rules[rule] = {knob: value, **{m: row[m] for m in METRICS}}
    oracle = max(outer["rows"], key=lambda r: r["gzsl_h"])
    return {
        "knob": knob,
        "seed": seed,
        "inner_best": best,
        "rules": rules,
        "outer_best": oracle,
        "inner": inner,
        "outer": outer,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Second-stage check: {result['model']} on {result['dataset']} validation classes",
        "",
        f"`{result['command']}`",
        "",
        f"Generator: `{result['checkpoint']}` (validation fit of grid point {result['trial']}, "
        f"epoch {result['epoch']}). Within-class RMS: real seen {result['spread']['real']:.3f}, "
        f"generated (same classes) {result['spread']['generated']:.3f}. "
        f"{result['machine']}; {result['seconds']:.0f} s.",
        "",
        "| synth_residual | synth_seen | eval_seed | classifier updates | ZSL T1 | GZSL u "
        "| GZSL s | GZSL H | H (calibrated) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['synth_residual']} | {r.get('synth_seen')} | {r.get('eval_seed', 0)} "
            f"| {r['cls_steps']} | " + " | ".join(f"{r[m]:.1f}" for m in METRICS) + " |"
        )
    checks = result.get("nested") or []
    for check in checks:
        inner, outer, knob = check["inner"], check["outer"], check["knob"]
        lines += [
            "",
            f"## Nested transfer of {knob} (inner fraction {check['fraction']}, "
            f"draw {check['seed']})",
            "",
            f"Inner: {inner['seen_classes']} seen classes ({inner['real_seen']} real seen "
            f"examples, universe {inner['universe']}); outer: {outer['seen_classes']} "
            f"({outer['real_seen']}, universe {outer['universe']}); other fields "
            f"{check['fixed']}.",
            "",
            f"| {knob} | inner GZSL H | outer GZSL H |",
            "| --- | --- | --- |",
        ]
        for a, b in zip(inner["rows"], outer["rows"], strict=True):
            lines.append(f"| {a[knob]} | {a['gzsl_h']:.1f} | {b['gzsl_h']:.1f} |")
        lines += [
            "",
            f"Inner optimum: {check['inner_best']}. Carried to the outer protocol:",
            "",
            f"| rule | {knob} | outer GZSL u | outer GZSL s | outer GZSL H |",
            "| --- | --- | --- | --- | --- |",
        ]
        for rule, r in check["rules"].items():
            lines.append(
                f"| {rule} | {r[knob]} | {r['gzsl_u']:.1f} | {r['gzsl_s']:.1f} | "
                f"{r['gzsl_h']:.1f} |"
            )
        best = check["outer_best"]
        lines.append(
            f"| (outer optimum, reference only) | {best[knob]} | {best['gzsl_u']:.1f} | "
            f"{best['gzsl_s']:.1f} | {best['gzsl_h']:.1f} |"
        )
    if len(checks) > 1:
        lines += [
            "",
            "## Rules over the draws (outer GZSL H)",
            "",
            "| rule | " + " | ".join(f"draw {c['seed']}" for c in checks) + " | mean |",
            "| --- |" + " --- |" * (len(checks) + 1),
        ]
        for rule in checks[0]["rules"]:
            values = [c["rules"][rule]["gzsl_h"] for c in checks]
            lines.append(
                f"| {rule} | "
                + " | ".join(f"{v:.1f}" for v in values)
                + f" | {sum(values) / len(values):.1f} |"
            )
    return "\n".join(lines) + "\n"


def parse_residuals(text: str) -> list[float | None]:
    return [None if v.strip().lower() in ("none", "null") else float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--trial", type=int, default=0, help="grid point (trials/<i>.json)")
    parser.add_argument("--cls-steps", default="200,340,600,1200")
    parser.add_argument("--synth-residual", default="none,1")
    parser.add_argument(
        "--synth-seen", default="none", help="synth_seen values (none = real seen examples only)"
    )
    parser.add_argument(
        "--eval-seeds", default="0", help="eval_seed values: draws of the synthetic examples"
    )
    parser.add_argument(
        "--inner-fraction", type=float, default=None, help="also run the nested transfer check"
    )
    parser.add_argument(
        "--nested",
        default="cls_steps",
        choices=["cls_steps", "synth_ratio"],
        help="the setting the nested check carries",
    )
    parser.add_argument(
        "--synth-ratios", default="3.2,4.5,6.4,9.0,12.8", help="values of --nested synth_ratio"
    )
    parser.add_argument(
        "--inner-seeds", default="0", help="draws of the inner train classes (comma-separated)"
    )
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, dm, cfg = load_validation_generator(args.run, args.trial)
    record = json.loads((args.run / "trials" / f"{args.trial}.json").read_text())
    steps = [int(v) for v in args.cls_steps.split(",")]
    residuals = parse_residuals(args.synth_residual)
    seen_ratios = parse_residuals(args.synth_seen)
    eval_seeds = [int(v) for v in args.eval_seeds.split(",")]
    rows = sweep(
        model,
        dm,
        cfg,
        [
            {"synth_residual": k, "synth_seen": r, "eval_seed": e, "cls_steps": n}
            for k in residuals
            for r in seen_ratios
            for e in eval_seeds
            for n in steps
        ],
    )
    checks = []
    if args.inner_fraction is not None:
        fixed: dict[str, Any] = {
            "synth_residual": residuals[-1],
            "synth_seen": seen_ratios[-1],
            "eval_seed": eval_seeds[0],
        }
        if args.nested == "cls_steps":
            knob, values = "cls_steps", steps
            reuse = [r for r in rows if all(r[k] == v for k, v in fixed.items())]
        else:
            knob, values = "synth_ratio", [float(v) for v in args.synth_ratios.split(",")]
            reuse = None
        for seed in (int(v) for v in args.inner_seeds.split(",")):
            check = nested(
                args.run,
                args.trial,
                args.inner_fraction,
                seed,
                knob,
                values,
                fixed,
                (model, dm, cfg),
                reuse,
            )
            reuse = check["outer"]["rows"]
            check.update(fraction=args.inner_fraction, fixed=fixed)
            checks.append(check)
    result = {
        "model": str(cfg.model.name),
        "dataset": str(cfg.data.name),
        "trial": args.trial,
        "checkpoint": str(record["checkpoint"]),
        "epoch": record.get("epochs"),
        "spread": spread(model),
        "rows": rows,
        "nested": checks,
        "seconds": time.perf_counter() - start,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python experiments/second_stage_check.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    name = args.name or f"{str(cfg.data.name).lower()}_{result['model']}_second_stage"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{name}.md").write_text(markdown(result))
    print(f"wrote {args.out_dir / name}.md")
    return result


if __name__ == "__main__":
    main()
