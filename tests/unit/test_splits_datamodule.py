"""Leakage guarantees of the protocol splits, the datamodule and the model base class."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import PER_CLASS, SEEN, TRAIN_CLASSES, UNSEEN, VAL_CLASSES, TinyXlsa17, write_xlsa17
from torch import Tensor

from zsl.data.datamodule import ZSLDataModule
from zsl.data.formats.xlsa17 import load_xlsa17
from zsl.data.splits import FeatureScaler, make_split
from zsl.data.types import ZSLBatch
from zsl.models.base import LeakageError, ZSLModule
from zsl.models.classical.ale import ALE
from zsl.run.callbacks import EvaluationRecorder

PROTOCOL_CLASSES = {  # protocol -> (training classes, unseen evaluation classes)
    "test": (set(SEEN), set(UNSEEN)),
    "val": (set(TRAIN_CLASSES), set(VAL_CLASSES)),
}


def datamodule(ds: TinyXlsa17, protocol: str = "test", **kwargs: Any) -> ZSLDataModule:
    kwargs.setdefault("batch_size", 8)
    dm = ZSLDataModule(name=ds.name, root=str(ds.root), protocol=protocol, **kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def build_model(dm: ZSLDataModule, cls: type[ZSLModule] = ALE, **params: Any) -> ZSLModule:
    """As ``zsl.run.builders.make_model`` does: shapes from the data, then bound to it (the
    class space and the seen-class training examples)."""
    space = dm.class_space
    model = cls(space.feature_dim, space.n_attributes, space.n_classes, **params)
    model.bind(dm)
    return model


def loc0(ds: TinyXlsa17, key: str) -> np.ndarray:
    return np.sort(np.asarray(ds.splits[key]).ravel().astype(np.int64) - 1)


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("protocol", ["test", "val"])
def test_training_batches_hold_only_seen_classes(tiny: TinyXlsa17, protocol: str) -> None:
    seen, unseen = PROTOCOL_CLASSES[protocol]
    dm = datamodule(tiny, protocol)
    assert set(dm.class_space.seen_ids.tolist()) == seen
    assert set(dm.class_space.unseen_ids.tolist()) == unseen
    labels = []
    n_batches = 0
    for batch in dm.train_dataloader():  # one full epoch
        assert isinstance(batch, ZSLBatch)
        assert batch.features.shape == (batch.labels.shape[0], tiny.features.shape[1])
        assert set(batch.labels.tolist()) <= seen, f"non-seen label in a {protocol} batch"
        labels.append(batch.labels)
        n_batches += 1
    epoch = torch.cat(labels)
    assert n_batches > 1
    assert epoch.numel() == dm.split.train_idx.size  # every training image exactly once
    np.testing.assert_array_equal(np.sort(epoch.numpy()), np.sort(tiny.labels0[dm.split.train_idx]))
    assert not set(epoch.tolist()) & unseen


@pytest.mark.parametrize("protocol", ["test", "val"])
def test_train_and_eval_images_disjoint(tiny: TinyXlsa17, protocol: str) -> None:
    split = datamodule(tiny, protocol).split
    assert split is not None
    assert np.intersect1d(split.train_idx, split.eval_idx).size == 0
    assert np.intersect1d(split.eval_seen_idx, split.eval_unseen_idx).size == 0
    seen, unseen = PROTOCOL_CLASSES[protocol]
    assert set(tiny.labels0[split.eval_seen_idx].tolist()) == seen
    assert set(tiny.labels0[split.eval_unseen_idx].tolist()) == unseen


def test_test_protocol_uses_the_proposed_split(tiny: TinyXlsa17) -> None:
    split = datamodule(tiny, "test").split
    assert split is not None
    np.testing.assert_array_equal(split.train_idx, loc0(tiny, "trainval_loc"))
    np.testing.assert_array_equal(split.eval_seen_idx, loc0(tiny, "test_seen_loc"))
    np.testing.assert_array_equal(split.eval_unseen_idx, loc0(tiny, "test_unseen_loc"))


def test_val_protocol_holds_out_seeded_fraction(tiny: TinyXlsa17) -> None:
    # the file's literal lists (the strict default only drops the test images first)
    data = load_xlsa17(tiny.root, tiny.name, protocol="val", exclude_test_from_val=False)
    split = make_split(data, "val", val_seen_fraction=0.2, seed=0)
    # eval-unseen is exactly val_loc
    np.testing.assert_array_equal(split.eval_unseen_idx, loc0(tiny, "val_loc"))
    # train + eval-seen partition train_loc, with round(20%) of every train class held out
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.train_idx, split.eval_seen_idx])), loc0(tiny, "train_loc")
    )
    held_labels = tiny.labels0[split.eval_seen_idx]
    for cls in TRAIN_CLASSES:
        assert (held_labels == cls).sum() == round(0.2 * PER_CLASS)
    # deterministic for a seed, different for another
    again = make_split(data, "val", val_seen_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again.eval_seen_idx, split.eval_seen_idx)
    other = make_split(data, "val", val_seen_fraction=0.2, seed=1)
    assert not np.array_equal(other.eval_seen_idx, split.eval_seen_idx)
    assert other.eval_seen_idx.size == split.eval_seen_idx.size
    # the datamodule uses the same split for its split_seed
    dm = datamodule(tiny, "val", split_seed=1, exclude_test_from_val=False)
    assert dm.split is not None
    np.testing.assert_array_equal(dm.split.eval_seen_idx, other.eval_seen_idx)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_val_seen_fraction_must_be_a_proper_fraction(tiny: TinyXlsa17, fraction: float) -> None:
    from zsl.data.errors import DataError

    data = load_xlsa17(tiny.root, tiny.name, protocol="val")
    with pytest.raises(DataError, match="val_seen_fraction"):
        make_split(data, "val", val_seen_fraction=fraction)


# --------------------------------------------------------------------------- preprocessing


@pytest.fixture
def outlier(tmp_path: Path) -> tuple[TinyXlsa17, int]:
    """The tiny set with one test-unseen image far larger than every training feature."""
    probe = write_xlsa17(tmp_path / "probe")
    image = int(loc0(probe, "test_unseen_loc")[0])

    def edit(splits: dict, feats: dict) -> None:
        feats["features"][:, image] = feats["features"].max() * 10 + 1

    return write_xlsa17(tmp_path / "data", edit=edit), image


def test_minmax_is_fitted_on_training_features_only(outlier: tuple[TinyXlsa17, int]) -> None:
    ds, image = outlier
    dm = datamodule(ds, "test", preprocess="minmax")
    assert dm.split is not None
    train = ds.features[dm.split.train_idx]
    # training features land exactly in [0, 1], every dimension spanning it
    assert torch.all(dm.train_x >= 0) and torch.all(dm.train_x <= 1 + 1e-6)
    np.testing.assert_allclose(dm.train_x.min(0).values.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(dm.train_x.max(0).values.numpy(), 1.0, atol=1e-6)
    # evaluation features use the training statistics: the outlier exceeds 1
    row = int(np.flatnonzero(dm.split.eval_idx == image)[0])
    assert torch.all(dm.eval_x[row] > 1)
    low, span = train.min(0), train.max(0) - train.min(0)
    expected = (ds.features[dm.split.eval_idx] - low) / span
    np.testing.assert_allclose(dm.eval_x.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", ["test", "val"])
def test_l2_rows_are_unit_norm(tiny: TinyXlsa17, protocol: str) -> None:
    dm = datamodule(tiny, protocol, preprocess="l2")
    for x in (dm.train_x, dm.eval_x):
        np.testing.assert_allclose(x.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_no_preprocessing_keeps_features(tiny: TinyXlsa17) -> None:
    dm = datamodule(tiny, "test", preprocess="none")
    assert dm.split is not None
    np.testing.assert_array_equal(dm.train_x.numpy(), tiny.features[dm.split.train_idx])


def test_minmax_constant_dimension_does_not_divide_by_zero() -> None:
    train = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    out = FeatureScaler.fit("minmax", train).transform(np.array([[2.0, 5.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.5, 0.0]])


# --------------------------------------------------------------------------- model guards


def test_unseen_semantics_refused_in_training(tiny: TinyXlsa17) -> None:
    dm = datamodule(tiny, "test")
    model = build_model(dm)
    model.train()
    with pytest.raises(LeakageError, match="unseen-class semantics during training"):
        model.unseen_semantics()
    model.eval()
    unseen = model.unseen_semantics()
    torch.testing.assert_close(unseen, dm.class_space.semantics[list(UNSEEN)])


def test_generative_models_may_read_unseen_semantics(tiny: TinyXlsa17) -> None:
    class Generative(ALE):
        uses_unseen_semantics: ClassVar[bool] = True

    model = build_model(datamodule(tiny, "test"), Generative)
    model.train()
    assert model.unseen_semantics().shape[0] == len(UNSEEN)


def test_to_local_maps_seen_and_refuses_unseen(tiny: TinyXlsa17) -> None:
    model = build_model(datamodule(tiny, "val"))  # seen = train classes 0-4 only
    local = model.to_local(torch.tensor([4, 0, 2, 2]))
    assert local.tolist() == [4, 0, 2, 2]
    for bad in (VAL_CLASSES[0], UNSEEN[-1], max(SEEN) + len(UNSEEN)):
        with pytest.raises(LeakageError, match="non-seen classes"):
            model.to_local(torch.tensor([1, bad, 3]))


class SpyALE(ALE):
    """ALE that records what its training loss is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen_semantics_calls: list[Tensor] = []
        self.label_calls: list[Tensor] = []
        self.training_flags: list[bool] = []

    def training_loss(self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor) -> Any:
        self.seen_semantics_calls.append(seen_semantics.detach().clone())
        self.label_calls.append(batch.labels.detach().clone())
        self.training_flags.append(self.training)
        return super().training_loss(batch, local_labels, seen_semantics)


@pytest.mark.parametrize("protocol", ["test", "val"])
def test_training_loss_sees_only_seen_classes(tiny: TinyXlsa17, protocol: str) -> None:
    seen, unseen = PROTOCOL_CLASSES[protocol]
    dm = datamodule(tiny, protocol)
    model = build_model(dm, SpyALE)
    assert isinstance(model, SpyALE)
    recorder = EvaluationRecorder()
    trainer = pl.Trainer(
        callbacks=[recorder],
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1.0 if protocol == "val" else 0,  # as the engine: no test peeking
    )
    trainer.fit(model, dm)
    n_batches = -(-dm.split.train_idx.size // dm.batch_size)  # type: ignore[union-attr]
    assert len(model.seen_semantics_calls) == 2 * n_batches
    expected = dm.class_space.semantics[sorted(seen)]
    for sem in model.seen_semantics_calls:
        assert torch.equal(sem, expected)
    labels = set(torch.cat(model.label_calls).tolist())
    assert labels <= seen and not labels & unseen
    assert all(model.training_flags)
    if protocol == "val":  # validation ran in eval mode with the unseen classes
        assert len(recorder.history) == 2


def test_min_batches_repeat_a_small_training_set_in_fresh_permutations() -> None:
    """An epoch of 10 examples in batches of 4 with at least 7 batches: 7 full batches, each
    run of 10 a permutation, seeded by the epoch; a set with enough batches is unchanged."""
    from zsl.data.datamodule import ShardedBatchSampler

    sampler = ShardedBatchSampler(10, 4, True, seed=3, rank=0, world_size=1, min_batches=7)
    batches = [b for b, _ in sampler]
    assert len(sampler) == 7 and [b.numel() for b in batches] == [4] * 7
    order = torch.cat(batches)
    assert sorted(order[:10].tolist()) == list(range(10))
    assert sorted(order[10:20].tolist()) == list(range(10))
    assert torch.equal(order, torch.cat([b for b, _ in sampler]))  # same epoch, same batches
    sampler.set_epoch(1)
    assert not torch.equal(order, torch.cat([b for b, _ in sampler]))
    plain = ShardedBatchSampler(10, 4, True, seed=3, rank=0, world_size=1)
    enough = ShardedBatchSampler(10, 4, True, seed=3, rank=0, world_size=1, min_batches=3)
    assert [b.tolist() for b, _ in plain] == [b.tolist() for b, _ in enough]
    assert torch.equal(torch.cat([b for b, _ in plain]), order[:10])  # the first round as before


def test_read_only_features_are_normalised_once_with_the_same_numbers() -> None:
    from zsl.data import splits

    gen = np.random.default_rng(0)
    features = gen.standard_normal((700, 33)).astype(np.float32) * 5
    features.setflags(write=False)
    scaler = FeatureScaler.fit("l2", features)
    rows_a, rows_b = gen.permutation(700)[:300], np.arange(650, 700)
    expected_a = scaler.transform(features[rows_a])
    got_a = scaler.transform_rows(features, rows_a)
    whole = splits._NORMALISED[0][1]
    got_b = scaler.transform_rows(features, rows_b)
    assert splits._NORMALISED[0][1] is whole  # the second protocol reuses the first's
    np.testing.assert_array_equal(got_a, expected_a)  # bit for bit
    np.testing.assert_array_equal(got_b, scaler.transform(features[rows_b]))
    writable = features.copy()  # may change between calls: normalised per call
    np.testing.assert_array_equal(scaler.transform_rows(writable, rows_b), got_b)
    assert splits._NORMALISED[0][1] is whole
