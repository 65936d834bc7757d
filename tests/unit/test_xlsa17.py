"""The xlsa17 loader: one test per input error (each must name the file, the key and the
problem), plus the conversions and quirks real copies of the benchmark need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    N_CLASSES,
    SEEN,
    TRAIN_CLASSES,
    UNSEEN,
    VAL_CLASSES,
    TinyXlsa17,
    write_xlsa17,
)

from zsl.data.errors import DataError
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.data.types import ZSLData

TEST_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


def load(ds: TinyXlsa17, protocol: str = "test", **kwargs: Any) -> ZSLData:
    return load_xlsa17(ds.root, ds.name, protocol=protocol, **kwargs)  # type: ignore[arg-type]


def expect_error(ds: TinyXlsa17, *fragments: str, protocol: str = "test", **kw: Any) -> DataError:
    """Loading must raise a DataError whose message contains every fragment."""
    with pytest.raises(DataError) as info:
        load(ds, protocol, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message {message!r}"
    return info.value


def loc0(ds: TinyXlsa17, key: str) -> np.ndarray:
    """A split of the written dataset as 0-based int64 indices."""
    return np.asarray(ds.splits[key]).ravel().astype(np.int64) - 1


def col(idx0: np.ndarray, dtype: Any = np.uint16) -> np.ndarray:
    return (np.asarray(idx0) + 1).astype(dtype).reshape(-1, 1)


def first_image_of(ds: TinyXlsa17, key: str, cls: int) -> int:
    """0-based index of the first image of class ``cls`` in split ``key``."""
    idx = loc0(ds, key)
    return int(idx[ds.labels0[idx] == cls][0])


def move(ds: TinyXlsa17, image: int, src: str, dst: str) -> dict[str, np.ndarray]:
    """Split overrides moving one image (0-based) from split ``src`` to split ``dst``."""
    a, b = loc0(ds, src), loc0(ds, dst)
    assert image in a and image not in b
    return {src: col(a[a != image]), dst: col(np.sort(np.append(b, image)))}


# --------------------------------------------------------------------------- files


def test_missing_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as info:
        load_xlsa17(tmp_path / "data", "CUB")
    assert str(tmp_path / "data" / "CUB") in str(info.value)
    assert "dataset folder not found" in str(info.value)


def test_missing_att_splits(tiny: TinyXlsa17) -> None:
    tiny.split_path.unlink()
    expect_error(tiny, str(tiny.split_path), "file not found")


def test_missing_feature_file(tiny: TinyXlsa17) -> None:
    expect_error(
        tiny, str(tiny.folder / "vgg_fc7.mat"), "file not found", feature_file="vgg_fc7.mat"
    )


@pytest.mark.parametrize("which", ["att_splits.mat", "res101.mat"])
def test_corrupt_mat_random_bytes(tiny: TinyXlsa17, which: str) -> None:
    path = tiny.folder / which
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(tiny, str(path), "cannot read MATLAB file")


def test_truncated_mat(tiny: TinyXlsa17) -> None:
    data = tiny.feature_path.read_bytes()
    tiny.feature_path.write_bytes(data[: len(data) // 2])
    expect_error(tiny, str(tiny.feature_path), "cannot read MATLAB file")


def test_matlab_v73_file_is_refused_clearly(tiny: TinyXlsa17) -> None:
    # A v7.3 (HDF5) MAT header: text, subsystem offset, version 0x0200, endian 'IM'.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5"
    header = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    tiny.split_path.write_bytes(header + b"\x89HDF\r\n\x1a\n" + b"\x00" * 512)
    expect_error(tiny, str(tiny.split_path), "v7.3")


# --------------------------------------------------------------------------- keys


def test_missing_att_key(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path, drop_split_keys=["att"])
    err = expect_error(ds, str(ds.split_path), "'att'", "missing key")
    assert "allclasses_names" in err.problem  # lists what the file does have


@pytest.mark.parametrize(
    ("protocol", "key"), [("test", "test_unseen_loc"), ("test", "trainval_loc"), ("val", "val_loc")]
)
def test_missing_split_key_of_protocol(tmp_path: Path, protocol: str, key: str) -> None:
    ds = write_xlsa17(tmp_path, drop_split_keys=[key])
    expect_error(ds, str(ds.split_path), repr(key), "missing key", protocol=protocol)


def test_missing_features_key(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path, drop_feature_keys=["features"])
    expect_error(ds, str(ds.feature_path), "'features'", "missing key")


# --------------------------------------------------------------------------- values


def test_feature_label_count_mismatch(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    ds = write_xlsa17(tmp_path, feature_overrides={"labels": base.feats["labels"][:-1]})
    n = base.n_images
    expect_error(ds, str(ds.feature_path), "'labels'", f"{n - 1} labels", f"{n} columns")


@pytest.mark.parametrize("bad", [0, N_CLASSES + 1], ids=["zero(0-based file)", "above C"])
def test_labels_out_of_range(tmp_path: Path, bad: int) -> None:
    def edit(splits: dict, feats: dict) -> None:
        feats["labels"] = feats["labels"].copy()
        feats["labels"][3, 0] = bad

    ds = write_xlsa17(tmp_path, edit=edit)
    expect_error(ds, str(ds.feature_path), "'labels'", f"must lie in [1, {N_CLASSES}]")


def test_locs_zero_based_file(tmp_path: Path) -> None:
    """A file already converted to 0-based indices (contains 0) must not be read as 1-based."""
    base = write_xlsa17(tmp_path / "ok")
    zero_based = loc0(base, "trainval_loc").astype(np.float64).reshape(-1, 1)
    zero_based[0, 0] = 0  # make sure index 0 is present
    ds = write_xlsa17(tmp_path, split_overrides={"trainval_loc": zero_based})
    expect_error(ds, str(ds.split_path), "'trainval_loc'", f"[1, {ds.n_images}]", "[0,")


def test_locs_above_image_count(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    n = base.n_images
    locs = np.append(base.splits["test_seen_loc"].ravel(), n + 1).astype(np.uint16)
    ds = write_xlsa17(tmp_path, split_overrides={"test_seen_loc": locs.reshape(-1, 1)})
    expect_error(ds, str(ds.split_path), "'test_seen_loc'", f"[1, {n}]", f"{n + 1}]")


def test_non_integer_locs(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    locs = base.splits["val_loc"].astype(np.float64)
    locs[2, 0] += 0.5
    ds = write_xlsa17(tmp_path, split_overrides={"val_loc": locs})
    expect_error(ds, str(ds.split_path), "'val_loc'", "not integers", protocol="val")


def test_nan_features(tmp_path: Path) -> None:
    def edit(splits: dict, feats: dict) -> None:
        feats["features"][4, 7] = np.nan

    ds = write_xlsa17(tmp_path, edit=edit)
    # the index is reported in the file's D x N layout (dimension 4 of image 7)
    expect_error(ds, str(ds.feature_path), "'features'", "1 non-finite", "(4, 7)")


def test_inf_attributes(tmp_path: Path) -> None:
    def edit(splits: dict, feats: dict) -> None:
        splits["att"][2, 5] = np.inf

    ds = write_xlsa17(tmp_path, edit=edit)
    expect_error(ds, str(ds.split_path), "'att'", "1 non-finite", "(2, 5)")


def test_attribute_count_differs_from_class_names(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    names = base.splits["allclasses_names"][:-1]
    ds = write_xlsa17(tmp_path, split_overrides={"allclasses_names": names})
    expect_error(
        ds, str(ds.split_path), "'att'", f"{N_CLASSES} class columns", f"lists {N_CLASSES - 1}"
    )


# --------------------------------------------------------------------------- leakage


def test_unseen_class_in_trainval(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    image = first_image_of(base, "test_unseen_loc", UNSEEN[0])
    ds = write_xlsa17(
        tmp_path, split_overrides=move(base, image, "test_unseen_loc", "trainval_loc")
    )
    name = f"{UNSEEN[0] + 1:03d}.class_{UNSEEN[0]}"
    expect_error(
        ds,
        f"{ds.split_path}['trainval_loc', 'test_unseen_loc']",
        "occur in both splits",
        f"{name} (1 images in trainval_loc, 9 in test_unseen_loc)",
    )


def test_seen_class_in_test_unseen(tmp_path: Path) -> None:
    """A seen-class image listed in test_unseen_loc: the class is then in both trainval_loc
    and test_unseen_loc; the error names both keys, the class and where its images are."""
    base = write_xlsa17(tmp_path / "ok")
    image = first_image_of(base, "test_seen_loc", SEEN[0])
    ds = write_xlsa17(
        tmp_path, split_overrides=move(base, image, "test_seen_loc", "test_unseen_loc")
    )
    expect_error(
        ds,
        f"{ds.split_path}['trainval_loc', 'test_unseen_loc']",
        "occur in both splits",
        "001.class_0 (8 images in trainval_loc, 1 in test_unseen_loc)",
    )


def test_class_in_test_seen_and_test_unseen(tmp_path: Path) -> None:
    """A class with no training images, split between test_seen_loc and test_unseen_loc."""

    def edit(splits: dict, feats: dict) -> None:
        labels = feats["labels"].ravel().astype(int) - 1
        for key in ("trainval_loc", "test_seen_loc"):
            idx = splits[key].ravel().astype(int) - 1
            splits[key] = col(idx[labels[idx] != UNSEEN[0]])
        unseen_images = splits["test_unseen_loc"].ravel().astype(int) - 1
        moved = unseen_images[labels[unseen_images] == UNSEEN[0]][:3]
        splits["test_seen_loc"] = col(
            np.sort(np.concatenate([splits["test_seen_loc"].ravel() - 1, moved]))
        )
        splits["test_unseen_loc"] = col(np.setdiff1d(unseen_images, moved))

    ds = write_xlsa17(tmp_path, edit=edit)
    expect_error(
        ds, "['test_seen_loc', 'test_unseen_loc']", "009.class_8 (3 images in test_seen_loc, 7"
    )


def test_test_seen_class_never_trained(tmp_path: Path) -> None:
    """Every class of test_seen_loc must occur in trainval_loc (else it is not seen)."""

    def edit(splits: dict, feats: dict) -> None:
        labels = feats["labels"].ravel().astype(int) - 1
        idx = splits["trainval_loc"].ravel().astype(int) - 1
        splits["trainval_loc"] = col(idx[labels[idx] != SEEN[2]])

    ds = write_xlsa17(tmp_path, edit=edit)
    expect_error(
        ds, f"{ds.split_path}['test_seen_loc']", "1 class(es) never appear in trainval_loc"
    )


def test_trainval_overlaps_test_seen(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    image = first_image_of(base, "test_seen_loc", SEEN[1])
    trainval = np.sort(np.append(loc0(base, "trainval_loc"), image))
    ds = write_xlsa17(tmp_path, split_overrides={"trainval_loc": col(trainval)})
    expect_error(
        ds, "'trainval_loc', 'test_seen_loc'", "1 images appear in both", f"index {image + 1}"
    )


def test_val_protocol_val_class_in_train_loc(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    image = first_image_of(base, "val_loc", VAL_CLASSES[0])
    ds = write_xlsa17(tmp_path, split_overrides=move(base, image, "val_loc", "train_loc"))
    name = f"{VAL_CLASSES[0] + 1:03d}.class_{VAL_CLASSES[0]}"
    expect_error(
        ds,
        f"{ds.split_path}['train_loc', 'val_loc']",
        f"{name} (1 images in train_loc, 9 in val_loc)",
        protocol="val",
    )


def test_val_protocol_train_val_image_overlap(tmp_path: Path) -> None:
    base = write_xlsa17(tmp_path / "ok")
    image = first_image_of(base, "val_loc", VAL_CLASSES[1])
    train = np.sort(np.append(loc0(base, "train_loc"), image))
    ds = write_xlsa17(tmp_path, split_overrides={"train_loc": col(train)})
    expect_error(ds, "'train_loc', 'val_loc'", "1 images appear in both", protocol="val")


# --------------------------------------------------------------------------- positive


def test_one_based_indices_become_zero_based(tiny: TinyXlsa17) -> None:
    data = load(tiny)
    raw_labels = tiny.feats["labels"].ravel()
    # image 0: its MATLAB label L is class L-1, and its feature row is column 0 of the file
    assert data.labels[0] == int(raw_labels[0]) - 1 == tiny.labels0[0]
    np.testing.assert_array_equal(data.labels, tiny.labels0)
    np.testing.assert_array_equal(data.features[5], tiny.feats["features"][:, 5])
    assert data.labels.dtype == np.int64 and data.features.dtype == np.float32
    # the first trainval image (1-based index k) is row k-1
    first = int(tiny.splits["trainval_loc"][0, 0])
    assert data.locs["trainval_loc"][0] == first - 1
    np.testing.assert_array_equal(data.locs["test_unseen_loc"], loc0(tiny, "test_unseen_loc"))
    # semantics are one row per class
    assert data.semantics.shape == (N_CLASSES, tiny.splits["att"].shape[0])
    np.testing.assert_allclose(data.semantics[3], tiny.splits["att"][:, 3], rtol=1e-6)
    assert data.class_names[0] == "001.class_0"
    assert data.image_files is not None
    assert data.image_files[1] == f"images/{tiny.labels0[1]:03d}/img_0001.jpg"
    # splits hold exactly the intended classes
    assert set(data.classes_of("trainval_loc").tolist()) == set(SEEN)
    assert set(data.classes_of("test_unseen_loc").tolist()) == set(UNSEEN)


def test_val_protocol_locs(tiny: TinyXlsa17) -> None:
    data = load(tiny, "val")
    assert set(data.locs) == {"train_loc", "val_loc"}
    assert set(data.classes_of("train_loc").tolist()) == set(TRAIN_CLASSES)
    assert set(data.classes_of("val_loc").tolist()) == set(VAL_CLASSES)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_loc_dtypes_load(tmp_path: Path, dtype: Any) -> None:
    ds = write_xlsa17(tmp_path, loc_dtype=dtype)
    assert ds.splits["trainval_loc"].dtype == dtype
    test_images = np.concatenate([loc0(ds, "test_seen_loc"), loc0(ds, "test_unseen_loc")])
    for protocol in ("test", "val"):
        data = load(ds, protocol)
        for key, idx in data.locs.items():
            assert idx.dtype == np.int64
            expected = loc0(ds, key)
            if protocol == "val":  # the val protocol drops the test images (strict default)
                expected = expected[~np.isin(expected, test_images)]
            np.testing.assert_array_equal(idx, expected)


def test_missing_class_names_are_generated(tmp_path: Path) -> None:
    """FLO ships without allclasses_names."""
    ds = write_xlsa17(tmp_path, with_names=False)
    data = load(ds)
    assert len(data.class_names) == N_CLASSES
    assert len(set(data.class_names)) == N_CLASSES
    assert data.class_names[0] == "class_001" and data.class_names[-1] == f"class_{N_CLASSES:03d}"


def test_extra_keys_are_ignored(tmp_path: Path) -> None:
    """APY's re-derived copy has extra keys; garbage in keys we do not use must not matter."""
    extra = {
        "train_allclass_loc": np.array([[0], [10_000]], dtype=np.float64),
        "tunseen_loc": np.array([[np.nan]]),
        "notes": np.array(["made by hand"], dtype=object),
    }
    ds = write_xlsa17(tmp_path, split_overrides=extra, feature_overrides={"extra": np.eye(3)})
    for protocol in ("test", "val"):
        assert load(ds, protocol).features.shape == (ds.n_images, ds.features.shape[1])


def test_absolute_feature_file_path(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path / "data")
    elsewhere = tmp_path / "features" / "vgg_fc7.mat"
    elsewhere.parent.mkdir()
    ds.feature_path.rename(elsewhere)
    data = load(ds, feature_file=str(elsewhere))
    np.testing.assert_array_equal(data.labels, ds.labels0)
    # a relative name still resolves inside the dataset folder (where it no longer is)
    expect_error(ds, str(ds.feature_path), "file not found")


def test_val_protocol_never_reads_test_keys(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path, drop_split_keys=TEST_KEYS)
    data = load(ds, "val")
    assert set(data.locs) == {"train_loc", "val_loc"}
    expect_error(ds, str(ds.split_path), "'trainval_loc'", "missing key", protocol="test")


def test_val_protocol_checks_the_test_keys_it_guards_against(tmp_path: Path) -> None:
    """The val protocol reads the test keys' indices (never their features) to keep test
    images out of validation: corrupt ones are an error there too, naming the key."""
    bad = np.array([[0], [99_999]], dtype=np.float64)
    ds = write_xlsa17(tmp_path, split_overrides=dict.fromkeys(TEST_KEYS, bad))
    expect_error(ds, "'trainval_loc'", "must lie in", protocol="val")
    expect_error(ds, "'trainval_loc'", "must lie in", protocol="test")


def test_test_protocol_never_reads_val_keys(tmp_path: Path) -> None:
    ds = write_xlsa17(tmp_path, drop_split_keys=["train_loc", "val_loc"])
    assert set(load(ds, "test").locs) == set(TEST_KEYS)


def test_unknown_protocol(tiny: TinyXlsa17) -> None:
    expect_error(tiny, "data.protocol", "'trainval'", protocol="trainval")


@pytest.mark.realdata
def test_real_split_files_open(shared_data: Path) -> None:
    """The real CUB att_splits.mat has the documented keys and shapes (no features needed)."""
    import scipy.io

    mat = scipy.io.loadmat(str(shared_data / "xlsa17" / "CUB" / "att_splits.mat"))
    assert mat["att"].shape == (312, 200)
    assert mat["trainval_loc"].size == 7057 and mat["test_unseen_loc"].size == 2967
    assert int(mat["trainval_loc"].min()) >= 1  # 1-based
