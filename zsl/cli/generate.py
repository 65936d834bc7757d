"""``zsl-generate --checkpoint run/model.ckpt --attributes new.npy --n 100 --out x.npy``:
features for (new) classes from a trained generator (:mod:`zsl.models.generative.synthesis`).
Bad input ends with one ``error: ...`` line and exit status 1."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from zsl.models.generative.synthesis import generate, load_generator

__all__ = ["generate", "load_generator", "main"]


def main(argv: list[str] | None = None) -> None:
    """``zsl-generate``: exit status 0 after writing the features, 1 with one line on bad
    input."""
    parser = argparse.ArgumentParser(
        prog="zsl-generate",
        description="Synthesise features for (new) classes from a generative model checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint (model.ckpt)")
    parser.add_argument(
        "--attributes",
        required=True,
        help=".npy array [K, A] (or [A]): one attribute vector per class",
    )
    parser.add_argument("--n", type=int, default=100, help="features per class (default 100)")
    parser.add_argument("--out", required=True, help="output .npy: features [K * n, D]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--labels-out", default=None, help="optional .npy for the row -> class index [K * n]"
    )
    args = parser.parse_args(argv)
    try:
        attributes = np.load(args.attributes)
        feats = generate(args.checkpoint, attributes, args.n, args.seed)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    out = Path(args.out)
    k = feats.shape[0] // args.n
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, feats.numpy())
        if args.labels_out:
            np.save(args.labels_out, np.repeat(np.arange(k), args.n))
    except OSError as err:
        raise SystemExit(f"error: cannot write {err.filename or out}: {err.strerror}") from None
    print(
        f"wrote {feats.shape[0]} features of dim {feats.shape[1]} ({k} classes x {args.n}) to {out}"
    )


if __name__ == "__main__":
    main()
