"""``zsl-data`` (``python -m zsl.cli.data``): get and check benchmark data.

    zsl-data download xlsa17 --root data/xlsa17            # official archive, resumable
    zsl-data download xlsa17 --root data/xlsa17 --archive ~/xlsa17.zip   # a local copy
    zsl-data verify xlsa17 --root data/xlsa17              # check what is there
    zsl-data synthesize xlsa17 --root data/xlsa17 --out data/xlsa17_synthetic --datasets SUN

Both verify every benchmark (APY, AWA1, AWA2, CUB, FLO, SUN) under ``--root`` and print one
line per problem; the exit status is 1 when there is any. The layout verified, per
benchmark ``<root>/<DATASET>/``: ``att_splits.mat`` with ``att`` (attributes x classes),
``trainval_loc``, ``test_seen_loc``, ``test_unseen_loc``, ``train_loc``, ``val_loc`` (1-based
image indices) and ``allclasses_names`` (all but FLO); ``res101.mat`` with ``features``
(D x images) and ``labels`` (1-based class indices into the columns of ``att``); every index
in range, shapes that agree, and splits that do not leak (validation classes among trainval,
no train/val class among the unseen ones).

``download`` gives up when the server sends nothing for ``--read-timeout`` seconds (default
60): a socket timeout on each read, so a stalled server ends with one ``error:`` line and the
partial ``xlsa17.zip.part`` is kept (rerun to resume), while a slow but steady one is never cut
off.

``synthesize`` is for benchmarks that have only their split file: it writes synthetic
``--dim``-d features at the benchmark's real shapes (image count, classes, every split index;
see :mod:`zsl.data.standin`) under ``--out``, verifies them through the loader and prints the
``data.root``/``data.feature_file`` to train on them. Numbers on such data time and test the
pipeline; they are not results on the benchmark.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zsl.data.download import (
    DEFAULT_READ_TIMEOUT,
    XLSA17_DATASETS,
    XLSA17_URL,
    download,
    unpack_xlsa17,
    verify_xlsa17,
)
from zsl.data.errors import DataError


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def verify(root: Path, datasets: Sequence[str], feature_file: str) -> list[str]:
    """:func:`zsl.data.download.verify_xlsa17` per dataset, except that a missing feature file
    is reported at once (nothing is read) with the feature files its folder has, to pass as
    ``--feature-file``."""
    from zsl.data.formats.xlsa17 import check_feature_file

    problems: list[str] = []
    for name in datasets:
        if (Path(root) / name).is_dir():
            try:
                check_feature_file(root, name, feature_file, option="--feature-file ")
            except DataError as err:
                problems.append(" ".join(str(err).split()))
                continue
        problems += verify_xlsa17(root, [name], feature_file)
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsl-data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("download", "download (or unpack a local archive), unpack and verify"),
        ("verify", "verify the benchmarks already under --root"),
        ("synthesize", "synthetic features at the real shapes of split-only benchmarks"),
    ):
        sub = commands.add_parser(
            name, help=text, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
        )
        sub.add_argument("release", choices=["xlsa17"], help="the data release")
        sub.add_argument("--root", type=Path, required=True, help="where the benchmarks live")
        sub.add_argument(
            "--datasets", default=",".join(XLSA17_DATASETS), help="comma list to expect"
        )
        if name == "synthesize":
            sub.add_argument("--out", type=Path, required=True, help="where to write them")
            sub.add_argument("--dim", type=int, default=2048, help="feature dimension")
            sub.add_argument("--seed", type=int, default=0)
            continue
        sub.add_argument("--feature-file", default="res101.mat", help="features to verify")
        if name == "download":
            sub.add_argument("--url", default=XLSA17_URL, help="archive URL")
            sub.add_argument(
                "--archive", type=Path, default=None, help="a local archive (no download)"
            )
            sub.add_argument(
                "--read-timeout",
                type=_seconds,
                default=DEFAULT_READ_TIMEOUT,
                metavar="SECONDS",
                help="give up after this long without receiving a byte (per read, not a limit "
                f"on the whole download; default {DEFAULT_READ_TIMEOUT:g})",
            )
            sub.add_argument("--no-progress", action="store_true")
    return parser


def run(argv: Sequence[str] | None = None) -> list[str]:
    """Carry out the command; returns the verification problems (one line each)."""
    args = build_parser().parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    root: Path = args.root
    if args.command == "synthesize":
        from zsl.data.standin import FEATURE_FILE, synthesize_features

        for name in datasets:
            made = synthesize_features(root, name, args.out, args.dim, args.seed)
            print(
                f"{name}: {made.n_images} images x {made.feature_dim}-d synthetic features, "
                f"(train, val, unseen) classes {made.classes}, in {made.folder}"
            )
        problems = verify(args.out, datasets, FEATURE_FILE)
        if not problems:
            print(f"train on them with data.root={args.out} data.feature_file={FEATURE_FILE}")
        return problems
    if args.command == "download":
        archive = args.archive
        if archive is None:
            archive = download(
                args.url,
                root / "xlsa17.zip",
                progress=not args.no_progress,
                read_timeout=args.read_timeout,
            )
        elif not archive.is_file():
            raise DataError(str(archive), "archive not found")
        found = unpack_xlsa17(archive, root, datasets)
        print(f"unpacked {', '.join(found) or 'nothing'} into {root}")
    problems = verify(root, datasets, args.feature_file)
    if not problems:
        print(
            f"verified {', '.join(datasets)} under {root}: every benchmark reads in both protocols"
        )
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: problems go to stderr one per line, exit status 1 if there is any."""
    try:
        problems = run(argv)
    except (DataError, OSError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
