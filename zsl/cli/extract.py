"""``zsl-extract`` (``python -m zsl.cli.extract``): image features and CLIP class-name
semantics in the xlsa17 format; see :mod:`zsl.features.extract` for the three sources."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zsl.data.errors import DataError
from zsl.errors import ModelLoadError
from zsl.features.backbones import CLIP_BACKBONE, DEFAULT_BACKBONE, BackboneSpec
from zsl.features.extract import extract_to_file, write_text_semantics
from zsl.features.images import list_image_folder, resolve_image_paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsl-extract",
        description="Extract image features (or CLIP class-name semantics) in the xlsa17 format.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="image folder with one sub-folder per class")
    source.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        help="xlsa17 feature file whose image list (order, labels) is re-extracted",
    )
    source.add_argument(
        "--text-semantics",
        type=Path,
        metavar="ATT_SPLITS",
        help="write a copy of this att_splits.mat with att = CLIP text embeddings of class names",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="file to write")
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="with --from: folder the stored image paths are resolved under (prefixes stripped)",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"torchvision classification model name or '{CLIP_BACKBONE}' "
        f"(default {DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision: imagenet (default) | none | /path/checkpoint.pth; clip: a Hugging Face "
        "model id (default openai/clip-vit-base-patch32) or a local directory",
    )
    parser.add_argument("--templates", default="generic", help="CLIP prompt preset or a file")
    parser.add_argument("--name-map", default=None, help="class-name map file (.json/.yaml/.txt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    parser.add_argument("--chunk-size", type=int, default=2048, help="images per resumable chunk")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def extract(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``zsl-extract``; returns the written file."""
    args = build_parser().parse_args(argv)
    if args.text_semantics is not None:
        write_text_semantics(
            args.text_semantics,
            args.output,
            args.weights,
            args.templates,
            args.name_map,
            args.device,
        )
        return args.output
    if args.images is not None:
        folder = list_image_folder(args.images)
        paths = [p.resolve() for p in folder.paths]
        labels0, image_files = folder.labels, [str(p) for p in paths]
    else:
        from zsl.data.formats.matfile import read_mat, strings

        mat = read_mat(args.from_file)
        if "image_files" not in mat or "labels" not in mat:
            raise DataError(str(args.from_file), "needs 'image_files' and 'labels' to re-extract")
        image_files = list(strings(mat["image_files"]))
        labels0 = np.asarray(mat["labels"]).ravel().astype(np.int64) - 1
        paths = resolve_image_paths(image_files, args.image_root, args.from_file.parent)
    extract_to_file(
        args.output,
        paths,
        labels0,
        image_files,
        BackboneSpec(args.backbone, args.weights),
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
    )
    return args.output


def main(argv: Sequence[str] | None = None) -> None:
    """``zsl-extract``: :func:`extract`, with bad input (missing or unreadable files,
    unknown backbones, weights that do not load or fit) reported as one line, exit status 1."""
    try:
        extract(argv)
    except (DataError, ModelLoadError, FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None


if __name__ == "__main__":
    main()
