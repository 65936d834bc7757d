"""``zsl-eval --checkpoint runs/x/model.ckpt [key=value ...]``: a run's test evaluation
repeated from its checkpoint, nothing trained (:func:`zsl.run.replay.evaluate_checkpoint`).

The data is the run's (its ``config.yaml``, found beside the checkpoint or given with
``--config``), changed by ``key=value`` overrides (e.g. ``data.root=/elsewhere``); the
calibration gamma is the checkpoint's, chosen on validation classes. Writes
``metrics_eval.json`` and the run's figures to ``--out`` (default ``<run>/eval``) and prints
the table. Bad input ends with one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``zsl-eval``; exit status 0 after the evaluation."""
    parser = argparse.ArgumentParser(
        prog="zsl-eval", description="Evaluate a zsl checkpoint on its run's test split."
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="a run's model.ckpt")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: found)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/eval)")
    parser.add_argument("overrides", nargs="*", help="key=value changes of the run's config")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import warnings

    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    from zsl.data.errors import DataError
    from zsl.errors import CheckpointError, ConfigError
    from zsl.run.replay import evaluate_checkpoint

    out = args.out or args.checkpoint.resolve().parent / "eval"
    try:
        metrics, _ = evaluate_checkpoint(args.checkpoint, out, args.config, args.overrides)
    except (CheckpointError, ConfigError, DataError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    print(f"\n{metrics['model']} on {metrics['dataset']} (test split, from {args.checkpoint})")
    print(f"{'':14}{'ZSL T1':>8}{'u':>8}{'s':>8}{'H':>8}")
    print(
        f"{'uncalibrated':14}{metrics['zsl_t1']:8.2f}{metrics['gzsl_u']:8.2f}"
        f"{metrics['gzsl_s']:8.2f}{metrics['gzsl_h']:8.2f}"
    )
    if not math.isnan(metrics["gamma"]):
        print(
            f"{'calibrated':14}{'':8}{metrics['gzsl_u_cal']:8.2f}{metrics['gzsl_s_cal']:8.2f}"
            f"{metrics['gzsl_h_cal']:8.2f}   (gamma={metrics['gamma']:.4g}, chosen on validation)"
        )
    print(f"wrote {out / 'metrics_eval.json'} and the figures")


if __name__ == "__main__":
    main()
