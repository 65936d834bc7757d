"""Tests for the synthetic xlsa17-format benchmark (zsl.data.synthetic)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from zsl.data.synthetic import (
    SyntheticSpec,
    _loc_column,
    ensure_synthetic,
    generate_synthetic,
)

LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")
SMALL = SyntheticSpec(
    n_classes=12,
    n_unseen=3,
    n_val=3,
    n_attributes=10,
    feature_dim=32,
    min_per_class=6,
    max_per_class=20,
)


def _load(folder: Path, feature_file: str = "res101.mat") -> tuple[dict, dict]:
    splits = scipy.io.loadmat(str(folder / "att_splits.mat"))
    feats = scipy.io.loadmat(str(folder / feature_file))
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("__")}  # noqa: E731
    return strip(splits), strip(feats)


def _locs(splits: dict) -> dict[str, np.ndarray]:
    return {k: splits[k].ravel().astype(np.int64) - 1 for k in LOC_KEYS}


def _strings(cell: np.ndarray) -> list[str]:
    return [str(item.ravel()[0]) for item in cell.ravel()]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype == object:
            assert _strings(a[key]) == _strings(b[key]), key
        else:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic_default"))


@pytest.fixture(scope="module")
def default_data(default_dir: Path) -> tuple[dict, dict]:
    return _load(default_dir)


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays(default_data, tmp_path):
    np.random.seed(123)  # the global numpy state must play no role
    again = _load(generate_synthetic(tmp_path / "again"))
    _assert_same(default_data[0], again[0])
    _assert_same(default_data[1], again[1])


def test_different_seed_differs(tmp_path):
    a_splits, a_feats = _load(generate_synthetic(tmp_path / "a", SMALL))
    b_splits, b_feats = _load(generate_synthetic(tmp_path / "b", replace(SMALL, seed=1)))
    assert not np.array_equal(a_splits["att"], b_splits["att"])
    a_x, b_x = a_feats["features"], b_feats["features"]
    assert a_x.shape != b_x.shape or not np.array_equal(a_x, b_x)


# --------------------------------------------------------------------------------------------
# file format
# --------------------------------------------------------------------------------------------


def test_file_format(default_data):
    splits, feats = default_data
    spec = SyntheticSpec()
    n_att, n_cls, dim = spec.n_attributes, spec.n_classes, spec.feature_dim
    assert set(splits) == {"att", "original_att", "allclasses_names", *LOC_KEYS, "synthetic_spec"}
    assert {"features", "labels", "image_files"} <= set(feats)

    att, orig = splits["att"], splits["original_att"]
    assert att.shape == orig.shape == (n_att, n_cls)
    assert att.dtype == orig.dtype == np.float64
    assert orig.min() >= 0.0 and orig.max() <= 100.0 and orig.max() > 50.0
    np.testing.assert_allclose(np.linalg.norm(att, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(att * np.linalg.norm(orig, axis=0), orig, atol=1e-9)

    names = _strings(splits["allclasses_names"])
    assert splits["allclasses_names"].shape == (n_cls, 1)
    assert names[0] == "001.class_001" and names[-1] == f"{n_cls:03d}.class_{n_cls:03d}"

    features, labels = feats["features"], feats["labels"]
    n_img = features.shape[1]
    assert features.shape == (dim, n_img) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.min() >= 0.0
    assert 0.2 < np.mean(features == 0) < 0.8  # sparse-ish, like ReLU CNN features
    assert labels.shape == (n_img, 1) and np.issubdtype(labels.dtype, np.integer)
    assert labels.min() == 1 and labels.max() == n_cls
    assert feats["image_files"].shape == (n_img, 1)
    assert len(set(_strings(feats["image_files"]))) == n_img

    for key in LOC_KEYS:
        loc = splits[key]
        assert loc.ndim == 2 and loc.shape[1] == 1 and loc.dtype == np.uint16, key
        assert loc.min() >= 1 and loc.max() <= n_img, key
        assert np.unique(loc).size == loc.size, key

    stored = json.loads(str(splits["synthetic_spec"][0]))
    assert stored["seed"] == spec.seed and stored["n_classes"] == n_cls


def test_large_index_columns_fall_back_to_float64():
    small = _loc_column(np.array([0, 65534]), 65535)
    assert small.dtype == np.uint16 and small.shape == (2, 1) and small.max() == 65535
    big = _loc_column(np.array([0, 69999]), 70000)
    assert big.dtype == np.float64 and big.ravel().tolist() == [1.0, 70000.0]


def test_generated_folder_goes_through_the_xlsa17_loader(default_dir):
    xlsa17 = pytest.importorskip("zsl.data.formats.xlsa17")
    for protocol in ("val", "test"):
        data = xlsa17.load_xlsa17(default_dir.parent, default_dir.name, protocol=protocol)
        assert data.features.shape == (data.labels.size, SyntheticSpec().feature_dim)
        assert data.semantics.shape == (50, 48)


# --------------------------------------------------------------------------------------------
# split invariants
# --------------------------------------------------------------------------------------------


def test_split_invariants(default_data):
    splits, feats = default_data
    spec = SyntheticSpec()
    labels = feats["labels"].ravel().astype(np.int64) - 1
    locs = _locs(splits)
    cls = {k: set(np.unique(labels[v]).tolist()) for k, v in locs.items()}

    # test protocol: images of trainval / test_seen / test_unseen are disjoint and cover all
    tv, ts, tu = locs["trainval_loc"], locs["test_seen_loc"], locs["test_unseen_loc"]
    assert not set(tv) & set(ts) and not set(tv) & set(tu) and not set(ts) & set(tu)
    assert np.array_equal(np.sort(np.concatenate([tv, ts, tu])), np.arange(labels.size))
    seen, unseen = cls["trainval_loc"], cls["test_unseen_loc"]
    assert cls["test_seen_loc"] == seen
    assert len(seen) == spec.n_classes - spec.n_unseen and len(unseen) == spec.n_unseen
    assert seen | unseen == set(range(spec.n_classes))
    assert not unseen & (seen | cls["train_loc"] | cls["val_loc"])

    # ~test_seen_fraction of every seen class is held out
    for c in seen:
        n_test, n_all = np.sum(labels[ts] == c), np.sum(labels == c)
        assert abs(n_test - spec.test_seen_fraction * n_all) <= 1.0

    # val protocol: disjoint train / val classes drawn from the seen ones; all their images
    tr, va = locs["train_loc"], locs["val_loc"]
    assert not cls["train_loc"] & cls["val_loc"]
    assert cls["train_loc"] | cls["val_loc"] == seen and len(cls["val_loc"]) == spec.n_val
    assert np.array_equal(np.sort(tr), np.flatnonzero(np.isin(labels, list(cls["train_loc"]))))
    assert np.array_equal(np.sort(va), np.flatnonzero(np.isin(labels, list(cls["val_loc"]))))

    # imbalanced class sizes within [min, max]
    sizes = np.bincount(labels, minlength=spec.n_classes)
    assert sizes.min() >= spec.min_per_class and sizes.max() <= spec.max_per_class
    assert sizes.max() >= 2 * sizes.min() and np.unique(sizes).size > spec.n_classes // 3


def test_invalid_specs_are_rejected(tmp_path):
    for bad in (
        SyntheticSpec(n_unseen=0),
        SyntheticSpec(n_val=40),
        SyntheticSpec(min_per_class=50, max_per_class=10),
        SyntheticSpec(test_seen_fraction=1.0),
    ):
        with pytest.raises(ValueError):
            generate_synthetic(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------
# ensure_synthetic (cache)
# --------------------------------------------------------------------------------------------


def _mtimes(folder: Path, feature_file: str = "res101.mat") -> tuple[int, int]:
    return (
        (folder / "att_splits.mat").stat().st_mtime_ns,
        (folder / feature_file).stat().st_mtime_ns,
    )


def _age(folder: Path) -> None:
    """Back-date all files so any rewrite shows in the mtime despite coarse clocks."""
    for f in folder.iterdir():
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))


def test_ensure_synthetic_caches_and_regenerates(tmp_path):
    out = tmp_path / "cache"
    assert ensure_synthetic(out, SMALL) == out
    first = _load(out)
    _age(out)
    old = _mtimes(out)

    ensure_synthetic(out, SMALL)  # unchanged spec: nothing is written
    assert _mtimes(out) == old
    assert sorted(p.name for p in out.iterdir()) == ["att_splits.mat", "res101.mat"]

    changed = replace(SMALL, seed=7)
    ensure_synthetic(out, changed)  # other spec: both files rewritten
    new = _mtimes(out)
    assert new[0] != old[0] and new[1] != old[1]
    assert json.loads(str(_load(out)[0]["synthetic_spec"][0]))["seed"] == 7
    _assert_same(_load(out)[0], _load(generate_synthetic(tmp_path / "ref", changed))[0])

    # a missing or foreign feature file triggers a regeneration too
    ensure_synthetic(out, SMALL)
    _assert_same(_load(out)[1], first[1])
    (out / "res101.mat").unlink()
    ensure_synthetic(out, SMALL)
    _assert_same(_load(out)[1], first[1])
    ensure_synthetic(out, SMALL, feature_file="other.mat")
    assert (out / "other.mat").is_file()

    # a corrupt split file is replaced
    (out / "att_splits.mat").write_bytes(b"not a mat file")
    ensure_synthetic(out, SMALL)
    _assert_same(_load(out)[0], first[0])


# --------------------------------------------------------------------------------------------
# difficulty: a tuned linear model (ESZSL) is well above chance but far from perfect
# --------------------------------------------------------------------------------------------


class _Eszsl:
    """ESZSL closed form, rows as samples: V = (XᵀX + γI)⁻¹ Xᵀ Y S (SᵀS + λI)⁻¹, S: [C, A].

    Both Gram matrices are eigendecomposed once, so every (γ, λ) of a grid search costs only
    two small matrix products (and no LAPACK call, which is slow on a busy machine).
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray, sem: np.ndarray, train: np.ndarray):
        seen = np.unique(labels[train])
        targets = -np.ones((train.size, seen.size))
        targets[np.arange(train.size), np.searchsorted(seen, labels[train])] = 1.0
        xs, ss = x[train], sem[seen]
        self.x_eig, self.x_vec = np.linalg.eigh(xs.T @ xs)
        self.s_eig, self.s_vec = np.linalg.eigh(ss.T @ ss)
        self.core = self.x_vec.T @ (xs.T @ (targets @ ss)) @ self.s_vec

    def weights(self, gamma: float, lam: float) -> np.ndarray:
        scaled = self.core / (self.x_eig[:, None] + gamma) / (self.s_eig[None, :] + lam)
        return self.x_vec @ scaled @ self.s_vec.T


def _per_class_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)]))


def _zsl_acc(v: np.ndarray, x: np.ndarray, labels: np.ndarray, sem: np.ndarray, test) -> float:
    """Per-class top-1 on ``test`` images, argmax over the classes present in ``test``."""
    classes = np.unique(labels[test])
    pred = classes[(x[test] @ v @ sem[classes].T).argmax(axis=1)]
    return _per_class_acc(pred, labels[test])


def test_eszsl_difficulty(default_data):
    splits, feats = default_data
    x = feats["features"].T.astype(np.float64)
    labels = feats["labels"].ravel().astype(np.int64) - 1
    sem = splits["att"].T
    locs = _locs(splits)

    grid = 10.0 ** np.arange(-1, 4)
    val_model = _Eszsl(x, labels, sem, locs["train_loc"])
    _, gamma, lam = max(
        (_zsl_acc(val_model.weights(g, l), x, labels, sem, locs["val_loc"]), g, l)
        for g in grid
        for l in grid  # noqa: E741
    )
    v = _Eszsl(x, labels, sem, locs["trainval_loc"]).weights(gamma, lam)
    t1 = _zsl_acc(v, x, labels, sem, locs["test_unseen_loc"])
    chance = 1.0 / SyntheticSpec().n_unseen
    assert 2 * chance < t1 < 0.9

    scores = x @ v @ sem.T  # generalised ZSL: argmax over all classes
    u = _per_class_acc(scores[locs["test_unseen_loc"]].argmax(1), labels[locs["test_unseen_loc"]])
    s = _per_class_acc(scores[locs["test_seen_loc"]].argmax(1), labels[locs["test_seen_loc"]])
    assert s > u
    assert u < t1  # competing with the seen classes hurts the unseen ones
