"""ImageNet-scale class counts: an evaluation over 21,000 classes in bounded memory.

GBU's ImageNet-21K setting has about 1K seen and 20K unseen classes. This check writes a
synthetic benchmark of that shape in the xlsa17 layout with memory-mapped ``.npy`` features
(written block by block, never whole), then, in a fresh process, fits ESZSL on the seen classes
(closed form) and evaluates the whole test split: ZSL T1, GZSL u/s/H, AUSUC and the
H-maximising calibration gamma. It prints the peak resident memory of that process.

Scores are computed in chunks (``zsl.models.base.SCORE_CHUNK``) and the evaluator keeps five
numbers per example, so memory does not grow with examples x classes: a held N x C float32
score matrix would be 200,000 x 21,000 x 4 B = 16.8 GB here.

    python experiments/scale_check.py --classes 21000 --seen 1000 --examples 200000

The features are class prototypes (a random projection of the class attributes) plus noise, so
the numbers are above chance but mean nothing about real data; the check is about memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = "SCALE"
FEATURE_FILE = "features.npy"


def write_benchmark(
    root: Path,
    n_classes: int,
    n_seen: int,
    n_examples: int,
    dim: int = 128,
    n_attributes: int = 64,
    noise: float = 0.5,
    seed: int = 0,
    block: int = 1 << 15,
) -> Path:
    """Write ``root/SCALE/{att_splits.mat, features.npy, features_labels.npy}``.

    Every class gets at least one example; seen classes put 80% of theirs in ``trainval_loc``
    and the rest in ``test_seen_loc``; unseen classes' examples form ``test_unseen_loc``. The
    first half of the seen classes are ``train_loc`` classes, the rest ``val_loc`` ones."""
    from zsl.data.formats.xlsa17 import labels_path, write_splits

    if not 0 < n_seen < n_classes <= n_examples:
        raise ValueError("need 0 < seen < classes <= examples")
    rng = np.random.default_rng(seed)
    att = rng.normal(size=(n_attributes, n_classes))
    att /= np.linalg.norm(att, axis=0, keepdims=True)
    projection = rng.normal(size=(n_attributes, dim)).astype(np.float32)
    labels = np.concatenate(
        [np.arange(n_classes), rng.integers(0, n_classes, n_examples - n_classes)]
    )
    rng.shuffle(labels)
    folder = root / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    features = np.lib.format.open_memmap(
        folder / FEATURE_FILE, mode="w+", dtype=np.float32, shape=(n_examples, dim)
    )
    prototypes = att.T.astype(np.float32) @ projection  # entries ~ N(0, 1)
    for start in range(0, n_examples, block):
        part = labels[start : start + block]
        features[start : start + part.size] = prototypes[part] + noise * rng.normal(
            size=(part.size, dim)
        ).astype(np.float32)
    features.flush()
    del features
    np.save(labels_path(folder / FEATURE_FILE), labels + 1)

    seen = labels < n_seen
    index = np.arange(n_examples)
    to_trainval = rng.random(n_examples) < 0.8
    trainval = index[seen & to_trainval]
    train_classes = labels < n_seen // 2
    locs = {
        "trainval_loc": trainval,
        "test_seen_loc": index[seen & ~to_trainval],
        "test_unseen_loc": index[~seen],
        "train_loc": trainval[train_classes[trainval]],
        "val_loc": trainval[~train_classes[trainval]],
    }
    names = [f"class_{c:05d}" for c in range(n_classes)]
    write_splits(folder, att, names, locs)
    return folder


def measure(root: Path, eval_batch_size: int) -> dict[str, float]:
    """Fit ESZSL on the seen classes and evaluate the test split once (this process)."""
    reset_peak_memory()
    import pytorch_lightning as pl

    from zsl.data.datamodule import ZSLDataModule
    from zsl.models.classical.eszsl import ESZSL

    start = time.perf_counter()
    dm = ZSLDataModule(
        DATASET,
        str(root),
        FEATURE_FILE,
        protocol="test",
        preprocess="none",
        batch_size=0,
        eval_batch_size=eval_batch_size,
    )
    dm.setup()
    model = ESZSL.for_data(dm, feature_reg=1.0, semantic_reg=1.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    assert model.evaluator is not None
    calibrated = model.evaluator.compute(None, choose_gamma=True)  # the curve over every example
    peak_gb = peak_memory_gb()
    return {
        **calibrated.metrics,
        "classes": float(dm.class_space.n_classes),
        "test_examples": float(dm.eval_y.numel()),
        "peak_rss_gb": peak_gb,
        "seconds": time.perf_counter() - start,
    }


def reset_peak_memory() -> None:
    """Start the peak-memory count here: a process started from a large parent (a test runner)
    can begin with the parent's peak (Linux keeps it across fork and exec); writing 5 to
    ``/proc/self/clear_refs`` resets ``VmHWM`` to the current resident size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gb() -> float:
    """This process's peak resident memory since :func:`reset_peak_memory` (``VmHWM``)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--classes", type=int, default=21000)
    p.add_argument("--seen", type=int, default=1000)
    p.add_argument("--examples", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--attributes", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=4096)
    p.add_argument(
        "--root", default=None, help="where to write the benchmark (default: a temp dir)"
    )
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:  # the measured child: only the evaluation counts towards its peak memory
        print(json.dumps(measure(Path(args.root), args.eval_batch_size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        t0 = time.perf_counter()
        write_benchmark(root, args.classes, args.seen, args.examples, args.dim, args.attributes)
        print(f"wrote the benchmark in {time.perf_counter() - t0:.1f} s", flush=True)
        child = [sys.executable, __file__, "--measure", "--root", str(root)]
        child += ["--eval-batch-size", str(args.eval_batch_size)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
    held = args.examples * args.classes * 4 / 1e9
    print(
        f"{int(result['classes'])} classes, {int(result['test_examples'])} test examples: "
        f"ZSL T1 {result['zsl_t1']:.1f}, u/s/H {result['gzsl_u']:.1f}/{result['gzsl_s']:.1f}/"
        f"{result['gzsl_h']:.1f}, calibrated H {result['gzsl_h_cal']:.1f}; peak memory "
        f"{result['peak_rss_gb']:.2f} GB (an N x C score matrix alone: {held:.1f} GB); "
        f"{result['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
