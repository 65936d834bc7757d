"""``zsl-predict --checkpoint runs/x/model.ckpt --features new.npy [--classes new.csv]``:
classify image features, or images (``--images``: through the backbone the run's features
were extracted with, or ``--backbone``), with a trained model (:mod:`zsl.run.inference`).

The class set is the checkpoint's (its seen and unseen classes), extended by ``--classes``:
new classes given only by their semantic vectors (a CSV ``name,v1,...,vA`` or a ``.npy``
[C, A]), which the model never saw in training; ``--only-new`` makes them the only
candidates. Scores are calibrated with the gamma chosen on validation classes (GZSL, as the
run's calibrated numbers; ``--no-calibration`` for raw scores). Prints the top-k classes of
the first rows and writes every row's to ``--out`` (CSV). Feature generators train their
final classifier for the class set first, on the run's data (its ``config.yaml``). Bad input
ends with one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from zsl.run.inference import Prediction


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsl-predict",
        description="Classify image features with a trained zsl model checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="a run's model.ckpt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--features",
        type=Path,
        help=".npy [N, D] rows, or an xlsa17 .mat feature file ('features': D x N)",
    )
    source.add_argument(
        "--images",
        type=Path,
        nargs="+",
        help="image files or folders: features extracted by the run's backbone",
    )
    parser.add_argument(
        "--backbone", help="with --images: the network (default: the one the run's features record)"
    )
    parser.add_argument("--weights", help="with --backbone: imagenet, none or a .pth file")
    parser.add_argument(
        "--classes", type=Path, help="new classes: CSV name,v1,...,vA or .npy [C, A]"
    )
    parser.add_argument(
        "--only-new", action="store_true", help="the new classes are the only candidates"
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes per row (default 5)")
    parser.add_argument(
        "--no-calibration", action="store_true", help="raw scores (no validation gamma)"
    )
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (default: found)")
    parser.add_argument("--show", type=int, default=5, help="rows printed (default 5)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``zsl-predict``; exit status 0 after writing the predictions."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.only_new and args.classes is None:
        parser.error("--only-new needs --classes")

    import warnings

    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    from zsl.data.errors import DataError
    from zsl.errors import CheckpointError, ConfigError

    try:
        features, predictions, inputs = _predict(args)
    except (CheckpointError, ConfigError, DataError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise SystemExit(f"error: {err.filename or ''}: {err.strerror}") from None
    by_row: dict[int, list[str]] = {}
    for p in predictions:
        if p.row < args.show:
            by_row.setdefault(p.row, []).append(f"{p.name} ({p.split}) {p.score:.4g}")
    for row, items in by_row.items():
        print(f"{inputs[row] if inputs else row}: " + ", ".join(items))
    n_rows = features.shape[0]
    k = len(predictions) // max(n_rows, 1)
    print(f"wrote the top-{k} classes of {n_rows} rows to {args.out}")


def _predict(args: argparse.Namespace) -> tuple[np.ndarray, list[Prediction], list[str] | None]:
    """Features, predictions and input names (images) of the parsed command line; writes
    the CSV."""
    from zsl.run import inference

    model, spec = inference.load_for_inference(args.checkpoint, args.config)
    inputs: list[str] | None = None
    if args.images is not None:
        paths = inference.image_paths(args.images)
        raw, described = inference.image_features(paths, spec, args.backbone, args.weights)
        print(f"extracted {raw.shape[1]}-d features of {len(paths)} images ({described})")
        inputs = [str(p) for p in paths]
    else:
        raw = inference.read_features(args.features)
    features = inference.preprocess(raw, model, spec)
    if args.classes is not None:
        names, vectors = inference.read_class_file(args.classes)
        inference.extend_classes(model, names, vectors, args.only_new)
    inference.bind_training_data(model, spec)
    model.prepare_inference()
    predictions = inference.predict_top_k(
        model, features, args.top_k, calibrate=not args.no_calibration
    )
    inference.write_predictions(predictions, args.out, inputs)
    return features, predictions, inputs


if __name__ == "__main__":
    main()
