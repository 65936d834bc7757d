"""``zsl-custom`` (``python -m zsl.cli.custom``): an image folder, a class x attribute CSV and
a list of unseen classes -> a complete xlsa17 dataset folder (see :mod:`zsl.features.custom`).
Bad input ends with one ``error: ...`` line and exit status 1."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from zsl.data.errors import DataError
from zsl.errors import ModelLoadError
from zsl.features.backbones import CLIP_BACKBONE, DEFAULT_BACKBONE
from zsl.features.custom import build_custom_dataset, parse_class_list


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsl-custom",
        description="Build an xlsa17-format ZSL dataset from an image folder and a class x "
        "attribute CSV.",
    )
    parser.add_argument(
        "--images", type=Path, required=True, help="folder with one sub-folder per class"
    )
    parser.add_argument(
        "--attributes", type=Path, required=True, help="CSV: class,<attribute names...>"
    )
    parser.add_argument("--unseen", required=True, help="file with one class per line, or a,b,c")
    parser.add_argument("--output", "-o", type=Path, required=True, help="dataset folder to write")
    parser.add_argument(
        "--val-classes", default=None, help="validation classes (file or a,b); default: seeded"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.25, help="share of seen classes used for validation"
    )
    parser.add_argument(
        "--test-seen-fraction", type=float, default=0.2, help="share of every seen class held out"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"torchvision classification model or '{CLIP_BACKBONE}' (zsl-extract -h)",
    )
    parser.add_argument(
        "--weights", default=None, help="imagenet | none | checkpoint; clip: model id or dir"
    )
    parser.add_argument(
        "--feature-file", default=None, help="default res101.mat (resnet101) or <backbone>.mat"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--overwrite", action="store_true", help="re-extract an existing feature file"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def build(argv: Sequence[str] | None = None) -> Path:
    """Parse the command line and build the dataset; returns its folder."""
    args = build_parser().parse_args(argv)
    return build_custom_dataset(
        args.images,
        args.attributes,
        parse_class_list(args.unseen),
        args.output,
        val_classes=parse_class_list(args.val_classes) if args.val_classes else None,
        val_fraction=args.val_fraction,
        test_seen_fraction=args.test_seen_fraction,
        seed=args.seed,
        backbone=args.backbone,
        weights=args.weights,
        feature_file=args.feature_file,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``zsl-custom``: :func:`build`, bad input reported in one line."""
    try:
        build(argv)
    except (DataError, ModelLoadError, FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None


if __name__ == "__main__":
    main()
