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

``--inner-fraction f`` adds a nested check of how a classifier length selected on validation
carries over to a protocol with more classes (the final fit has 150 seen CUB classes where
validation had 100), one level down and on validation classes only: the same generator, with
only the fraction ``f`` of the train classes as the classifier's seen classes (inner) and with
all of them (outer). The inner optimum is carried to the outer protocol by three rules -- the
same number of updates (``steps``), updates in proportion to the classes of the universe
(``per_class``), or to the classifier's training examples (``epochs``) -- and each is scored
on the outer protocol beside the outer optimum (for reference only).
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

from zsl.models import get_model_class  # noqa: E402
from zsl.models.generative.base import GenerativeZSL  # noqa: E402
from zsl.run.builders import load_data, make_datamodule, make_model, make_trainer  # noqa: E402

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
    cfg = OmegaConf.load(run / "config.yaml")
    record_path = run / "trials" / f"{trial}.json"
    if not record_path.is_file():
        raise SystemExit(f"error: {record_path} not found (a finished run's grid point)")
    record = json.loads(record_path.read_text())
    checkpoint = run / str(record.get("checkpoint") or "")
    if not checkpoint.is_file():
        raise SystemExit(f"error: {checkpoint} not found (the trial keeps no checkpoint)")
    data = load_data(cfg, "val")  # type: ignore[arg-type]
    if inner_fraction is not None:
        data = inner_split(data, inner_fraction, seed)
    dm = make_datamodule(cfg, "val", data)  # type: ignore[arg-type]
    model = make_model(cfg, dm, record["params"])  # type: ignore[arg-type]
    if not isinstance(model, GenerativeZSL):
        raise SystemExit(f"error: {cfg.model.name} is not a generative model")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
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
    model: GenerativeZSL, dm: Any, cfg: Any, steps: list[int], residuals: list[float | None]
) -> list[dict[str, Any]]:
    """Validation metrics of every (classifier updates, synth_residual) combination."""
    trainer = make_trainer(cfg, get_model_class(str(cfg.model.name)), 1, False)
    base = model.second_stage
    rows = []
    for k in residuals:
        for n in steps:
            model.second_stage = dataclasses.replace(
                base, cls_steps=n, cls_min_steps=None, synth_residual=k
            )
            start = time.perf_counter()
            out = trainer.validate(model, dm, verbose=False)[0]
            row: dict[str, Any] = {"synth_residual": k, "cls_steps": n}
            row.update({m: float(out[f"val/{m}"]) for m in METRICS})
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(
                f"synth_residual={k} cls_steps={n}: "
                + " ".join(f"{m} {row[m]:.1f}" for m in METRICS),
                flush=True,
            )
    model.second_stage = base
    return rows


def nested(
    run: Path,
    trial: int,
    fraction: float,
    seed: int,
    steps: list[int],
    residual: float | None,
) -> dict[str, Any]:
    """The nested transfer check of the classifier's length (see the module docstring)."""
    sides: dict[str, Any] = {}
    for side, frac in (("inner", fraction), ("outer", None)):
        model, dm, cfg = load_validation_generator(run, trial, frac, seed)
        rows = sweep(model, dm, cfg, steps, [residual])
        sides[side] = {
            "rows": rows,
            "universe": int(model.universe_mask().sum()),
            "real_seen": int(model.seen_training_data()[0].shape[0]),
            "seen_classes": int(model.seen_ids.numel()),
        }
    inner, outer = sides["inner"], sides["outer"]
    best = int(max(inner["rows"], key=lambda r: r["gzsl_h"])["cls_steps"])
    carried = {
        "steps": best,
        "per_class": round(best * outer["universe"] / inner["universe"]),
        "epochs": round(best * outer["real_seen"] / inner["real_seen"]),
    }
    rules = {}
    for rule, n in carried.items():
        row = sweep(model, dm, cfg, [n], [residual])[0]
        rules[rule] = {"cls_steps": n, **{m: row[m] for m in METRICS}}
    oracle = max(outer["rows"], key=lambda r: r["gzsl_h"])
    return {"inner_best": best, "rules": rules, "outer_best": oracle, **sides}


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
        "| synth_residual | classifier updates | ZSL T1 | GZSL u | GZSL s | GZSL H "
        "| H (calibrated) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['synth_residual']} | {r['cls_steps']} | "
            + " | ".join(f"{r[m]:.1f}" for m in METRICS)
            + " |"
        )
    check = result.get("nested")
    if check:
        inner, outer = check["inner"], check["outer"]
        lines += [
            "",
            f"## Nested transfer of the classifier length (inner fraction {check['fraction']})",
            "",
            f"Inner: {inner['seen_classes']} seen classes ({inner['real_seen']} real seen "
            f"examples, universe {inner['universe']}); outer: {outer['seen_classes']} "
            f"({outer['real_seen']}, universe {outer['universe']}); synth_residual "
            f"{check['synth_residual']}.",
            "",
            "| classifier updates | inner GZSL H | outer GZSL H |",
            "| --- | --- | --- |",
        ]
        for a, b in zip(inner["rows"], outer["rows"], strict=True):
            lines.append(f"| {a['cls_steps']} | {a['gzsl_h']:.1f} | {b['gzsl_h']:.1f} |")
        lines += [
            "",
            f"Inner optimum: {check['inner_best']} updates. Carried to the outer protocol:",
            "",
            "| rule | updates | outer GZSL u | outer GZSL s | outer GZSL H |",
            "| --- | --- | --- | --- | --- |",
        ]
        for rule, r in check["rules"].items():
            lines.append(
                f"| {rule} | {r['cls_steps']} | {r['gzsl_u']:.1f} | {r['gzsl_s']:.1f} | "
                f"{r['gzsl_h']:.1f} |"
            )
        best = check["outer_best"]
        lines.append(
            f"| (outer optimum, reference only) | {best['cls_steps']} | {best['gzsl_u']:.1f} | "
            f"{best['gzsl_s']:.1f} | {best['gzsl_h']:.1f} |"
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
        "--inner-fraction", type=float, default=None, help="also run the nested transfer check"
    )
    parser.add_argument("--seed", type=int, default=0, help="draw of the inner train classes")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, dm, cfg = load_validation_generator(args.run, args.trial)
    record = json.loads((args.run / "trials" / f"{args.trial}.json").read_text())
    rows = sweep(
        model,
        dm,
        cfg,
        [int(v) for v in args.cls_steps.split(",")],
        parse_residuals(args.synth_residual),
    )
    if args.inner_fraction is not None:
        residual = parse_residuals(args.synth_residual)[-1]
        check = nested(
            args.run,
            args.trial,
            args.inner_fraction,
            args.seed,
            [int(v) for v in args.cls_steps.split(",")],
            residual,
        )
        check.update(fraction=args.inner_fraction, synth_residual=residual)
    result = {
        "model": str(cfg.model.name),
        "dataset": str(cfg.data.name),
        "trial": args.trial,
        "checkpoint": str(record["checkpoint"]),
        "epoch": record.get("epochs"),
        "spread": spread(model),
        "rows": rows,
        "nested": check if args.inner_fraction is not None else None,
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
