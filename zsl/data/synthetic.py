"""Deterministic synthetic zero-shot-learning benchmark in the xlsa17 file format.

:func:`generate_synthetic` writes ``att_splits.mat`` and a ``res101.mat``-style feature file
exactly like the xlsa17 release ("proposed split", Xian et al., TPAMI 2018), so the synthetic
data go through the very same loader as the real benchmarks. Everything is drawn from
``np.random.default_rng(spec.seed)``: the same :class:`SyntheticSpec` always gives identical
arrays.

The benchmark is built to be *fair*, i.e. neither trivial for a linear attribute model nor
impossible:

* **Class attributes** come from a low-rank latent model: every class belongs to one of a few
  super-categories and has latent factors around its super-category centre; attribute logits
  are a sparse linear read-out of the factors plus attribute-specific noise. This gives
  attribute-attribute correlations. About half the attributes are binary-ish (steep sigmoid,
  values near 0 or 100), some are continuous, and the rest form mutually exclusive groups
  (softmax, like CUB's "wing colour" families). ``original_att`` holds per-class percentages in
  [0, 100]; ``att`` is the same with L2-normalised columns.
* **Image features** are a *non-linear* function of the class attributes (a random two-layer
  tanh network) plus a class-specific offset that the attributes do not explain, plus
  within-class variation (a shared low-rank "pose/background" subspace and isotropic noise),
  plus nuisance dimensions unrelated to the class. A final shifted ReLU and a per-dimension
  scale make them non-negative and sparse-ish, like pooled ReLU CNN features; with
  ``signed`` the ReLU is left out and they are signed, like CLIP/ViT embeddings or
  PCA-whitened features.
* **Class sizes** are imbalanced (log-uniform between ``min_per_class`` and ``max_per_class``).

Splits mirror xlsa17: ``trainval_loc`` holds about ``1 - test_seen_fraction`` of the images of
every seen class, ``test_seen_loc`` the rest, ``test_unseen_loc`` all images of the unseen
classes; ``train_loc``/``val_loc`` index *all* images of the train / validation classes (as in
the AWA2 copy), where the ``n_val`` validation classes are drawn from the seen ones. All index
arrays are 1-based column vectors (``uint16`` when they fit, else ``float64``); images are
stored in a shuffled order.

With the default spec a tuned ESZSL (closed form, linear) reaches about 54% per-class top-1 on
the 10 unseen classes (chance 10%; 29-55%, mean 47% over seeds 0-9) and shows the usual strong
seen-class bias in the generalised setting (seed 0: u 28%, s 94%, H 43%); see
``tests/unit/test_synthetic.py``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from zsl.data.formats.matfile import matlab_cell, savemat_atomic

__all__ = ["SyntheticSpec", "ensure_synthetic", "generate_synthetic"]

#: Bump whenever the generating process changes, so cached folders are regenerated.
GENERATOR_VERSION = 1
SPLIT_FILE = "att_splits.mat"
SPEC_KEY = "synthetic_spec"

# difficulty knobs of the feature model (calibrated against ESZSL, see the module docstring)
_NONLINEARITY = 2.0  # gain of the first (tanh) layer: larger = less linear
_CLASS_OFFSET = 1.0  # class-specific mean shift not explained by the attributes
_STYLE = 1.5  # shared low-rank within-class variation
_NOISE = 2.5  # isotropic within-class noise


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and seed of a synthetic benchmark (defaults: AWA-like 40 seen / 10 unseen)."""

    n_classes: int = 50
    n_unseen: int = 10  # test-unseen classes (the "proposed split" unseen)
    n_val: int = 10  # validation classes, disjoint from unseen, drawn from the seen ones
    n_attributes: int = 48
    feature_dim: int = 256
    min_per_class: int = 40
    max_per_class: int = 160  # imbalanced class sizes
    test_seen_fraction: float = 0.2
    seed: int = 0
    #: signed features (like CLIP/ViT embeddings or PCA-whitened CNN features): the scaled
    #: pre-activations, without the final shifted ReLU
    signed: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` if the numbers cannot form a valid benchmark."""
        n_seen = self.n_classes - self.n_unseen
        if self.n_unseen < 1 or n_seen < 2:
            raise ValueError(f"need >= 1 unseen and >= 2 seen classes, got spec {self}")
        if not 1 <= self.n_val < n_seen:
            raise ValueError(
                f"n_val must be in [1, n_classes - n_unseen - 1] = [1, {n_seen - 1}], "
                f"got {self.n_val}"
            )
        if self.n_attributes < 4:
            raise ValueError(f"n_attributes must be >= 4, got {self.n_attributes}")
        if self.feature_dim < 8:
            raise ValueError(f"feature_dim must be >= 8, got {self.feature_dim}")
        if not 2 <= self.min_per_class <= self.max_per_class:
            raise ValueError(
                "need 2 <= min_per_class <= max_per_class, got "
                f"{self.min_per_class}, {self.max_per_class}"
            )
        if not 0.0 < self.test_seen_fraction < 1.0:
            raise ValueError(f"test_seen_fraction must be in (0, 1), got {self.test_seen_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, with the generator version) stored in the files
        (``signed`` only when set: the non-negative benchmarks keep their stored spec)."""
        fields = asdict(self)
        if not self.signed:
            del fields["signed"]
        return json.dumps({"generator_version": GENERATOR_VERSION, **fields}, sort_keys=True)


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _class_attributes(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Correlated per-class attribute strengths in [0, 100], shape ``[C, A]``."""
    n_cls, n_att = spec.n_classes, spec.n_attributes
    n_latent = int(np.clip(n_att // 6, 3, 10))
    n_super = int(np.clip(n_cls // 8, 2, 8))

    # latent class factors: super-category centre + individual deviation
    centres = rng.normal(0.0, 1.0, (n_super, n_latent))
    super_of = rng.permutation(np.arange(n_cls) % n_super)
    factors = centres[super_of] + rng.normal(0.0, 0.8, (n_cls, n_latent))

    # sparse linear read-out of the factors -> correlated attribute logits
    loading = rng.normal(0.0, 1.0, (n_latent, n_att)) * (rng.random((n_latent, n_att)) < 0.5)
    loading /= np.sqrt(n_latent / 2.0)
    bias = rng.normal(-0.3, 0.6, n_att)
    logits = factors @ loading + bias + rng.normal(0.0, 0.6, (n_cls, n_att))

    # attribute kinds: binary-ish, continuous, mutually exclusive groups of 4
    kinds = rng.permutation(np.arange(n_att))
    n_group = 4 * max(1, n_att // 20)
    n_binary = (n_att - n_group) * 3 // 5
    binary, continuous, grouped = np.split(kinds, [n_binary, n_att - n_group])
    att = np.empty((n_cls, n_att))
    att[:, binary] = _sigmoid(4.0 * logits[:, binary])
    att[:, continuous] = _sigmoid(1.2 * logits[:, continuous])
    for group in grouped.reshape(-1, 4):
        z = 2.0 * logits[:, group]
        z = np.exp(z - z.max(axis=1, keepdims=True))
        att[:, group] = z / z.sum(axis=1, keepdims=True)
    return 100.0 * att


def _class_sizes(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    lo, hi = np.log(spec.min_per_class), np.log(spec.max_per_class + 1)
    sizes = np.floor(np.exp(rng.uniform(lo, hi, spec.n_classes))).astype(np.int64)
    return np.clip(sizes, spec.min_per_class, spec.max_per_class)


def _features(
    rng: np.random.Generator, spec: SyntheticSpec, att01: np.ndarray, labels0: np.ndarray
) -> np.ndarray:
    """Non-negative features ``[N, D]`` (float32) for 0-based labels ``labels0``."""
    n_cls, n_att = att01.shape
    dim = spec.feature_dim
    n_nuisance = dim // 8
    n_signal = dim - n_nuisance
    n_hidden = 2 * n_att

    # class means: random 2-layer tanh network of the standardised attributes + unexplained offset
    a = (att01 - att01.mean(axis=0)) / (att01.std(axis=0) + 1e-6)
    w1 = rng.normal(0.0, _NONLINEARITY / np.sqrt(n_att), (n_att, n_hidden))
    b1 = rng.normal(0.0, 0.5, n_hidden)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(n_hidden), (n_hidden, n_signal))
    hidden = np.tanh(a @ w1 + b1)
    hidden = (hidden - hidden.mean(axis=0)) / (hidden.std(axis=0) + 1e-6)
    means = hidden @ w2 + _CLASS_OFFSET * rng.normal(0.0, 1.0, (n_cls, n_signal))

    # instances: class mean + shared low-rank variation + isotropic noise
    n_img = labels0.size
    rank = 16
    basis = rng.normal(0.0, 1.0 / np.sqrt(rank), (rank, n_signal))
    style = rng.normal(0.0, 1.0, (n_img, rank)) @ basis
    signal = means[labels0] + _STYLE * style + _NOISE * rng.normal(0.0, 1.0, (n_img, n_signal))

    # nuisance dimensions: low-rank + noise, independent of the class
    nuis_basis = rng.normal(0.0, 1.0 / 2.0, (4, n_nuisance))
    nuisance = rng.normal(0.0, 1.0, (n_img, 4)) @ nuis_basis
    nuisance += 0.8 * rng.normal(0.0, 1.0, (n_img, n_nuisance))

    pre = np.concatenate([signal, nuisance], axis=1)[:, rng.permutation(dim)]
    shift = rng.normal(0.3, 0.3, dim)
    scale = np.exp(rng.normal(0.0, 0.5, dim))
    if spec.signed:
        return (pre * scale).astype(np.float32)
    return (np.maximum(pre - shift, 0.0) * scale).astype(np.float32)


def _loc_column(indices0: np.ndarray, n_images: int) -> np.ndarray:
    """0-based indices -> 1-based column vector, uint16 if it fits else float64."""
    dtype = np.uint16 if n_images <= np.iinfo(np.uint16).max else np.float64
    return (np.asarray(indices0, dtype=np.int64) + 1).astype(dtype).reshape(-1, 1)


def _split_locs(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    labels0: np.ndarray,
    seen: np.ndarray,
    unseen: np.ndarray,
    val_classes: np.ndarray,
) -> dict[str, np.ndarray]:
    """The five split index arrays (0-based) of the proposed split, drawn from ``rng``."""
    trainval: list[np.ndarray] = []
    test_seen: list[np.ndarray] = []
    for c in seen:
        idx = rng.permutation(np.flatnonzero(labels0 == c))
        n_test = int(np.clip(round(spec.test_seen_fraction * idx.size), 1, idx.size - 1))
        test_seen.append(idx[:n_test])
        trainval.append(idx[n_test:])
    is_val = np.isin(labels0, val_classes)
    is_train = np.isin(labels0, seen) & ~is_val
    return {
        "trainval_loc": rng.permutation(np.concatenate(trainval)),
        "test_seen_loc": rng.permutation(np.concatenate(test_seen)),
        "test_unseen_loc": rng.permutation(np.flatnonzero(np.isin(labels0, unseen))),
        "train_loc": rng.permutation(np.flatnonzero(is_train)),
        "val_loc": rng.permutation(np.flatnonzero(is_val)),
    }


def _build(spec: SyntheticSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """All arrays of ``att_splits.mat`` and of the feature file, from ``spec`` alone."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n_cls = spec.n_classes

    original_att = _class_attributes(rng, spec)  # [C, A]
    att01 = original_att / 100.0

    # which classes are unseen / validation
    order = rng.permutation(n_cls)
    unseen = np.sort(order[: spec.n_unseen])
    seen = np.sort(order[spec.n_unseen :])
    val_classes = np.sort(rng.permutation(seen)[: spec.n_val])

    # images in a shuffled order
    sizes = _class_sizes(rng, spec)
    labels0 = rng.permutation(np.repeat(np.arange(n_cls), sizes))
    n_img = labels0.size
    features = _features(rng, spec, att01, labels0)

    locs = _split_locs(rng, spec, labels0, seen, unseen, val_classes)

    width = max(3, len(str(n_cls)))
    names = [f"{c + 1:0{width}d}.class_{c + 1:0{width}d}" for c in range(n_cls)]
    counters = np.zeros(n_cls, dtype=np.int64)
    files = []
    for c in labels0:
        counters[c] += 1
        files.append(f"synthetic/{names[c]}/img_{counters[c]:05d}.jpg")

    norms = np.linalg.norm(original_att, axis=1, keepdims=True)
    spec_json = spec.to_json()
    splits: dict[str, Any] = {
        "att": (original_att / np.maximum(norms, 1e-12)).T.copy(),
        "original_att": original_att.T.copy(),
        "allclasses_names": matlab_cell(names),
        **{key: _loc_column(val, n_img) for key, val in locs.items()},
        SPEC_KEY: spec_json,
    }
    feats: dict[str, Any] = {
        "features": np.ascontiguousarray(features.T),
        "labels": (labels0 + 1).astype(np.int32).reshape(-1, 1),
        "image_files": matlab_cell(files),
        SPEC_KEY: spec_json,
    }
    return splits, feats


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def generate_synthetic(
    out_dir: str | Path,
    spec: SyntheticSpec = SyntheticSpec(),
    feature_file: str = "res101.mat",
) -> Path:
    """Write ``<out_dir>/att_splits.mat`` and ``<out_dir>/<feature_file>``; return ``out_dir``.

    Deterministic: the same ``spec`` always gives identical arrays. The canonical JSON of the
    spec is stored under the key ``synthetic_spec`` in both files (see :func:`ensure_synthetic`).
    """
    out = Path(out_dir)
    splits, feats = _build(spec)
    out.mkdir(parents=True, exist_ok=True)
    savemat_atomic(out / feature_file, feats)
    savemat_atomic(out / SPLIT_FILE, splits)
    return out


def _stored_spec(path: Path) -> str | None:
    """The ``synthetic_spec`` string stored in ``path``, or None if absent/unreadable."""
    if not path.is_file():
        return None
    try:
        raw = scipy.io.loadmat(str(path), variable_names=[SPEC_KEY]).get(SPEC_KEY)
    except Exception:  # any unreadable file just means "regenerate"
        return None
    if raw is None:
        return None
    value = np.asarray(raw).ravel()
    return str(value[0]) if value.size else None


def ensure_synthetic(
    out_dir: str | Path,
    spec: SyntheticSpec = SyntheticSpec(),
    feature_file: str = "res101.mat",
) -> Path:
    """Return ``out_dir``, (re)generating it only if a file is missing or has another spec.

    Both files carry the spec JSON (including the generator version); if they match
    ``spec``, nothing is written, so repeated calls are cheap and leave mtimes untouched.
    """
    out = Path(out_dir)
    wanted = spec.to_json()
    if all(_stored_spec(out / name) == wanted for name in (SPLIT_FILE, feature_file)):
        return out
    return generate_synthetic(out, spec, feature_file)


#: benchmarks generated by :func:`scratch_synthetic` in this process: (spec, name, file) -> dir
_SCRATCH: dict[tuple[str, str, str], tempfile.TemporaryDirectory[str]] = {}


def scratch_synthetic(
    spec: SyntheticSpec, name: str = "SYNTHETIC", feature_file: str = "res101.mat"
) -> Path:
    """The root of ``<root>/<name>``, the benchmark of ``spec`` generated into a temporary
    folder of this process (once per spec; removed when the process exits). A run on the
    built-in data with ``data.root=null`` reads it from there and writes nothing outside its
    run directory."""
    key = (spec.to_json(), name, feature_file)
    if key not in _SCRATCH:
        folder = tempfile.TemporaryDirectory(prefix="zsl-synthetic-")
        generate_synthetic(Path(folder.name) / name, spec, feature_file)
        _SCRATCH[key] = folder
    return Path(_SCRATCH[key].name)
