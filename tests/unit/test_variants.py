"""The transfer-suite variants (:mod:`zsl.data.variants`) built from a small CUB-like source.

The fake source is written here: 12 classes (0-7 seen, of which 5-7 are the validation classes;
8-11 unseen), 50 images per class in a shuffled order, 300-d non-negative sparse features (so
that every registered variant, PCA to 256 dimensions included, builds as registered), 40
attributes in [0, 100] and a ``sent_splits.mat`` with 16-d semantics whose columns are not unit
length, like CUB's copy. ``train_loc``/``val_loc`` index every image of their classes, test-seen
images included, as CUB's files do.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from zsl.data.errors import DataError
from zsl.data.formats.matfile import matlab_cell
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.data.variants import (
    SPEC_KEY,
    VARIANTS,
    build,
    build_variant,
    fit_pca_whitening,
    is_current,
)

N_CLASSES, SEEN, VAL_CLASSES, PER_CLASS, TEST_SEEN = 12, 8, (5, 6, 7), 50, 10
DIM, N_ATT, SENT_DIM = 300, 40, 16
LOCS = ("trainval_loc", "test_seen_loc", "test_unseen_loc", "train_loc", "val_loc")


def column(indices0: np.ndarray) -> np.ndarray:
    return (np.asarray(indices0) + 1).astype(np.uint16).reshape(-1, 1)


def write_source(root: Path, seed: int = 0) -> Path:
    """A CUB-like xlsa17 source folder ``root/CUB``; returns ``root``."""
    rng = np.random.default_rng(seed)
    folder = root / "CUB"
    folder.mkdir(parents=True)
    labels0 = rng.permutation(np.repeat(np.arange(N_CLASSES), PER_CLASS))
    centres = rng.gamma(1.0, 1.0, (N_CLASSES, DIM))
    noisy = centres[labels0] + rng.normal(0.0, 1.0, (labels0.size, DIM))
    features = np.maximum(noisy - 0.5, 0.0).astype(np.float32)
    names = [f"{c + 1:03d}.bird_{c + 1}" for c in range(N_CLASSES)]
    trainval, test_seen = [], []
    for c in range(SEEN):
        members = rng.permutation(np.flatnonzero(labels0 == c))
        test_seen.append(members[:TEST_SEEN])
        trainval.append(members[TEST_SEEN:])
    val = np.isin(labels0, VAL_CLASSES)
    locs = {
        "trainval_loc": rng.permutation(np.concatenate(trainval)),
        "test_seen_loc": np.concatenate(test_seen),
        "test_unseen_loc": np.flatnonzero(labels0 >= SEEN),
        "train_loc": np.flatnonzero((labels0 < SEEN) & ~val),
        "val_loc": np.flatnonzero(val),
    }
    original = 100.0 * rng.random((N_ATT, N_CLASSES))
    split_content = {
        "att": original / np.linalg.norm(original, axis=0),
        "original_att": original,
        "allclasses_names": matlab_cell(names),
        **{key: column(value) for key, value in locs.items()},
    }
    scipy.io.savemat(folder / "att_splits.mat", split_content)
    sent = {
        **{key: column(value) for key, value in locs.items()},
        "att": 20.0 * rng.random((SENT_DIM, N_CLASSES)),
        "allclasses_names": matlab_cell(names),
    }
    scipy.io.savemat(folder / "sent_splits.mat", sent)
    write_features(folder, features, labels0)
    return root


def write_features(folder: Path, features: np.ndarray, labels0: np.ndarray) -> None:
    files = [f"images/{i:04d}.jpg" for i in range(labels0.size)]
    content = {
        "features": features.T.copy(),
        "labels": (labels0 + 1).astype(np.int32).reshape(-1, 1),
        "image_files": matlab_cell(files),
    }
    scipy.io.savemat(folder / "vgg_fc7.mat", content)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Every registered variant built once from one fake source: (source root, out root)."""
    base = tmp_path_factory.mktemp("variants")
    source = write_source(base / "src")
    for name in VARIANTS:
        build_variant(name, source, base / "out")
    return source, base / "out"


def mat(path: Path) -> dict[str, np.ndarray]:
    return scipy.io.loadmat(str(path))


def source_mat(source: Path, name: str = "att_splits.mat") -> dict[str, np.ndarray]:
    return mat(source / "CUB" / name)


def test_every_variant_is_read_by_the_zsl_loader(built: tuple[Path, Path]) -> None:
    _, out = built
    shapes = {
        "CUB_SENT": (DIM, SENT_DIM),
        "CUB_PCA64": (64, N_ATT),
        "CUB_PCA256": (256, N_ATT),
        "CUB_FEW10": (DIM, N_ATT),
        "CUB_ATT24": (DIM, 24),
    }
    for name, spec in VARIANTS.items():
        for protocol in ("test", "val"):
            data = load_xlsa17(out, name, spec.feature_file, protocol)  # type: ignore[arg-type]
            assert data.features.shape == (N_CLASSES * PER_CLASS, shapes[name][0]), name
            assert data.semantics.shape == (N_CLASSES, shapes[name][1]), name


def test_index_arrays_stay_1_based_columns(built: tuple[Path, Path]) -> None:
    _, out = built
    for name in VARIANTS:
        splits = mat(out / name / "att_splits.mat")
        for key in LOCS:
            assert splits[key].ndim == 2 and splits[key].shape[1] == 1, (name, key)
            assert splits[key].dtype == np.uint16, (name, key)  # the source's type
            assert 1 <= splits[key].min() and splits[key].max() <= N_CLASSES * PER_CLASS


def test_pca_is_fitted_on_trainval_only_and_whitens_it(built: tuple[Path, Path]) -> None:
    source, out = built
    trainval0 = source_mat(source)["trainval_loc"].ravel().astype(int) - 1
    for name, dim in (("CUB_PCA64", 64), ("CUB_PCA256", 256)):
        feats = mat(out / name / VARIANTS[name].feature_file)
        rows = feats["features"].T.astype(np.float64)
        assert rows.shape == (N_CLASSES * PER_CLASS, dim)
        assert (rows < 0).mean() > 0.3 and (rows > 0).mean() > 0.3  # signed features
        tv = rows[trainval0]
        np.testing.assert_allclose(tv.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(np.cov(tv, rowvar=False, bias=True), np.eye(dim), atol=1e-3)
        # the test images are not whitened by their own statistics
        others = np.setdiff1d(np.arange(rows.shape[0]), trainval0)
        assert np.abs(rows[others].mean(axis=0)).max() > 0.05
        assert feats["pca_components"].shape == (DIM, dim)


def test_changing_test_images_leaves_the_pca_fit_unchanged(tmp_path: Path) -> None:
    spec = dataclasses.replace(VARIANTS["CUB_PCA64"], dim=8)
    source = write_source(tmp_path / "src")
    first = build(spec, source, tmp_path / "a")
    features = mat(source / "CUB" / "vgg_fc7.mat")
    splits = source_mat(source)
    test0 = np.concatenate([splits[k].ravel() for k in ("test_seen_loc", "test_unseen_loc")]) - 1
    changed = features["features"].copy()
    changed[:, test0] = changed[:, test0] * 5.0 + 3.0
    write_features(source / "CUB", changed.T, features["labels"].ravel() - 1)
    second = build(spec, source, tmp_path / "b")
    a, b = (mat(f / spec.feature_file) for f in (first, second))
    for key in ("pca_mean", "pca_components", "pca_variances"):
        np.testing.assert_array_equal(a[key], b[key])
    trainval0 = splits["trainval_loc"].ravel().astype(int) - 1
    np.testing.assert_array_equal(a["features"][:, trainval0], b["features"][:, trainval0])
    assert not np.allclose(a["features"][:, test0], b["features"][:, test0])


def test_pca_refuses_more_dimensions_than_the_training_rows_span() -> None:
    rows = np.random.default_rng(0).normal(size=(50, 4)) @ np.ones((4, 20))
    with pytest.raises(ValueError, match="span only"):
        fit_pca_whitening(rows, 8)
    with pytest.raises(ValueError, match="training images"):
        fit_pca_whitening(rows[:5], 8)


def test_few_shot_keeps_ten_per_class_and_restricts_train_and_val(
    built: tuple[Path, Path],
) -> None:
    source, out = built
    src, few = source_mat(source), mat(out / "CUB_FEW10" / "att_splits.mat")
    labels0 = mat(source / "CUB" / "vgg_fc7.mat")["labels"].ravel() - 1
    kept = few["trainval_loc"].ravel()
    assert set(kept) <= set(src["trainval_loc"].ravel())
    counts = np.bincount(labels0[kept - 1], minlength=N_CLASSES)
    assert counts[:SEEN].tolist() == [10] * SEEN and counts[SEEN:].sum() == 0
    for key in ("train_loc", "val_loc"):
        subset = few[key].ravel()
        assert set(subset) <= set(kept)
        assert set(subset) == set(src[key].ravel()) & set(kept)
        assert np.bincount(labels0[subset - 1]).max() <= 10
    for key in ("test_seen_loc", "test_unseen_loc"):
        np.testing.assert_array_equal(few[key], src[key])
    # the seeded choice is fixed
    again = build_variant("cub_few10", source, out.parent / "again")
    np.testing.assert_array_equal(mat(again / "att_splits.mat")["trainval_loc"], kept[:, None])


def test_att24_keeps_the_seen_class_variance_choice_with_unit_columns(
    built: tuple[Path, Path],
) -> None:
    source, out = built
    src, sub = source_mat(source), mat(out / "CUB_ATT24" / "att_splits.mat")
    chosen = sub["variant_attributes"].ravel().astype(int) - 1
    variance = src["original_att"][:, :SEEN].var(axis=1)  # classes 0-7 are the seen ones
    np.testing.assert_array_equal(chosen, np.sort(np.argsort(-variance)[:24]))
    np.testing.assert_array_equal(sub["original_att"], src["original_att"][chosen])
    np.testing.assert_allclose(np.linalg.norm(sub["att"], axis=0), 1.0)
    np.testing.assert_allclose(
        sub["att"] * np.linalg.norm(sub["original_att"], axis=0), sub["original_att"]
    )


def test_att24_refuses_a_class_left_without_attributes(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    path = source / "CUB" / "att_splits.mat"
    splits = {k: v for k, v in source_mat(source).items() if not k.startswith("__")}
    original = splits["original_att"]
    original[0, :] = 1.0  # the same value for every class: no variance, never chosen
    original[1:, 3] = 0.0  # class 4 has values on attribute 0 only
    splits["original_att"] = original
    splits["att"] = original / np.linalg.norm(original, axis=0)
    scipy.io.savemat(path, splits)
    with pytest.raises(ValueError, match=r"CUB_ATT24: 1 class\(es\) have all-zero values.*004"):
        build_variant("CUB_ATT24", source, tmp_path / "out")


def test_sentences_replace_the_semantics_with_unit_columns(built: tuple[Path, Path]) -> None:
    source, out = built
    sent, splits = source_mat(source, "sent_splits.mat"), mat(out / "CUB_SENT" / "att_splits.mat")
    np.testing.assert_array_equal(splits["original_att"], sent["att"])
    np.testing.assert_allclose(np.linalg.norm(splits["att"], axis=0), 1.0)
    feature = out / "CUB_SENT" / "vgg_fc7.mat"
    assert feature.resolve() == (source / "CUB" / "vgg_fc7.mat").resolve()


def test_rebuild_is_skipped_when_nothing_changed(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    for name in ("CUB_PCA64", "CUB_FEW10"):
        folder = build_variant(name, source, tmp_path / "out")
        files = [folder / "att_splits.mat", folder / VARIANTS[name].feature_file]
        stamps = [os.lstat(f).st_mtime_ns for f in files]
        assert is_current(VARIANTS[name], source, tmp_path / "out")
        time.sleep(0.01)
        build_variant(name, source, tmp_path / "out")
        assert [os.lstat(f).st_mtime_ns for f in files] == stamps
    # another description (here: the seed) is built again
    reseeded = dataclasses.replace(VARIANTS["CUB_FEW10"], seed=1)
    assert not is_current(reseeded, source, tmp_path / "out")
    folder = build(reseeded, source, tmp_path / "out")
    assert '"seed": 1' in str(mat(folder / "att_splits.mat")[SPEC_KEY][0])


def test_transforms_module_stands_alone_and_is_re_exported() -> None:
    from zsl.data import variant_transforms, variants

    assert variants.PCAWhitening is variant_transforms.PCAWhitening
    assert variants.fit_pca_whitening is variant_transforms.fit_pca_whitening
    code = (
        "import sys, zsl.data.variant_transforms; "
        "assert 'zsl.data.variants' not in sys.modules, 'import cycle'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CUB[/\\]att_splits.mat: source file not found"):
        build_variant("CUB_PCA64", tmp_path / "missing", tmp_path / "out")
    source = write_source(tmp_path / "src")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"a_file[/\\]CUB_FEW10: cannot create the variant folder"):
        build_variant("CUB_FEW10", source, blocker)
    with pytest.raises(ValueError, match="unknown variant 'CUB_X'; available: CUB_SENT"):
        build_variant("CUB_X", source, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cub_pca64(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "xlsa17"
    if not (source / "CUB" / "vgg_fc7.mat").is_file():
        pytest.skip(f"{source / 'CUB' / 'vgg_fc7.mat'} not found")
    folder = build_variant("CUB_PCA64", source, tmp_path)
    data = load_xlsa17(tmp_path, folder.name, VARIANTS["CUB_PCA64"].feature_file, "test")
    assert data.features.shape == (11788, 64)
    assert (data.features < 0).mean() > 0.3 and (data.features > 0).mean() > 0.3
    trainval = data.features[data.locs["trainval_loc"]].astype(np.float64)
    np.testing.assert_allclose(trainval.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(trainval.std(axis=0), 1.0, atol=1e-3)
