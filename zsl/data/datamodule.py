"""Lightning datamodule over an xlsa17-format benchmark (real or the built-in synthetic one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zsl.data.errors import DataError
from zsl.data.formats import read_dataset
from zsl.data.splits import FeatureScaler, Preprocess, ProtocolSplit, make_split
from zsl.data.types import ClassSpace, ExampleSet, ProtocolName, ZSLBatch, ZSLData


class MappedRows:
    """Rows ``index`` of a memory-mapped feature matrix, read and preprocessed per batch.

    Evaluation sets of a memory-mapped benchmark stay on disk: a batch reads only its own
    rows, so the evaluation of millions of images never holds their features at once."""

    def __init__(self, source: np.ndarray, index: np.ndarray, scaler: FeatureScaler) -> None:
        self.source, self.index, self.scaler = source, np.asarray(index), scaler
        self.shape = (int(self.index.size), int(source.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        wanted = self.index[rows.numpy()]
        order = np.argsort(wanted, kind="stable")  # read the file front to back
        block = np.empty(wanted.shape + self.shape[1:], dtype=np.float32)
        block[order] = self.source[wanted[order]]
        return torch.from_numpy(np.ascontiguousarray(self.scaler.transform(block)))

    def materialise(self) -> torch.Tensor:
        """Every row in memory (for consumers that need the whole set, e.g. a projection plot)."""
        return self[torch.arange(self.shape[0])]


class _TensorBatches(Dataset):
    """In-memory tensors (or :class:`MappedRows`) indexed by a whole list of indices at once
    (no per-sample work)."""

    def __init__(self, features: torch.Tensor | MappedRows, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, item: tuple[torch.Tensor, float]) -> ZSLBatch:
        index, share = item
        if isinstance(self.features, torch.Tensor):
            rows = _consecutive(index)
            if rows is not None:  # evaluation's sequential batches: a view, no copy
                return ZSLBatch(self.features[rows], self.labels[rows], share)
            # index_select: the fast row gather
            return ZSLBatch(self.features.index_select(0, index), self.labels[index], share)
        return ZSLBatch(self.features[index], self.labels[index], share)


def _consecutive(index: torch.Tensor) -> slice | None:
    """The slice of ``index`` when it is a run of consecutive ascending rows, else None.
    An evaluation batch of 4096 x 4096 float32 features is then read in place instead of
    being copied into a fresh 64 MB buffer (which the allocator maps, faults in page by page
    and unmaps again, every batch of every validation pass)."""
    n = index.numel()
    if n == 0:
        return None
    first = int(index[0])
    if int(index[-1]) - first != n - 1 or (n > 1 and not bool((index.diff() == 1).all())):
        return None
    return slice(first, first + n)


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) outside DDP."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedBatchSampler(Sampler[tuple[torch.Tensor, float]]):
    """Global batches of ``batch_size`` indices, each split evenly across DDP ranks.

    The order is a permutation seeded by ``(seed, epoch)`` (``set_epoch``, called by Lightning
    every epoch), so an epoch's batches do not depend on how many epochs ran in this process:
    a run resumed from a checkpoint sees exactly the batches an uninterrupted one would. Every
    rank yields the same number of batches and the ranks' slices partition each global batch
    with no padding, so metrics gathered across ranks count every example exactly once and a
    DDP step sees the same global batch as a single process. Yields ``(indices, share)``
    (see :class:`ZSLBatch`). ``batch_size <= 0`` means one batch of everything.

    ``min_batches`` (shuffled sampling): an epoch has at least this many full batches; a small
    training set is drawn again, in further permutations of the same epoch seed, until it has.
    A model whose schedule is written in epochs then takes as many optimiser steps per epoch
    on 400 images as on a few thousand (``model.min_steps_per_epoch``).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        min_batches: int = 0,
    ) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.batch_size = n if batch_size <= 0 else batch_size
        self._rank, self._world = rank, world_size
        self.min_batches = int(min_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rank_world(self) -> tuple[int, int]:
        """Explicit values if given, else the process group's (resolved at iteration time,
        because datamodules are built before Lightning starts the DDP processes)."""
        rank, world = _world()
        return (
            rank if self._rank is None else self._rank,
            world if self._world is None else self._world,
        )

    def _global_batches(self) -> list[torch.Tensor]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
            if len(order.split(self.batch_size)) < self.min_batches:  # repeat a small set
                rounds = -(-self.min_batches * self.batch_size // self.n)
                more = [torch.randperm(self.n, generator=gen) for _ in range(rounds - 1)]
                order = torch.cat([order, *more])[: self.min_batches * self.batch_size]
        else:
            order = torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        _, world = self.rank_world()
        if len(batches) > 1 and batches[-1].numel() < world:  # no rank may get an empty slice
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        rank, world = self.rank_world()
        for batch in self._global_batches():
            part = batch.tensor_split(world)[rank]
            yield part, part.numel() * world / batch.numel()

    def __len__(self) -> int:
        return len(self._global_batches())


def tensor_loader(
    features: torch.Tensor | MappedRows,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    min_batches: int = 0,
) -> DataLoader:
    """A DataLoader that yields :class:`ZSLBatch` slices of in-memory tensors (sharded
    across DDP ranks, see :class:`ShardedBatchSampler`)."""
    data = _TensorBatches(features, labels)
    sampler = ShardedBatchSampler(len(data), batch_size, shuffle, seed, min_batches=min_batches)
    return DataLoader(data, sampler=sampler, batch_size=None, collate_fn=None)


class ZSLDataModule(pl.LightningDataModule):
    """Loads a benchmark, builds the protocol split, fits preprocessing on training features.

    The benchmark is ``data`` when given (already read, and prepared for the model), else it
    is read through the format registry (:func:`zsl.data.formats.read_dataset`, format
    ``data_format``).

    Guarantees (asserted): training batches hold only seen-class images; evaluation images
    are disjoint from training images. ``batch_size <= 0`` yields the full training set as
    one batch (used by closed-form models).
    """

    def __init__(
        self,
        name: str,
        root: str | Path | None,
        feature_file: str = "res101.mat",
        protocol: ProtocolName = "test",
        preprocess: Preprocess = "l2",
        batch_size: int = 128,
        eval_batch_size: int = 4096,
        val_seen_fraction: float = 0.2,
        split_seed: int = 0,
        semantics_key: str = "att",
        synthetic: dict[str, Any] | None = None,
        data: ZSLData | None = None,
        exclude_test_from_val: bool = True,
        min_steps_per_epoch: int = 0,
        data_format: str = "xlsa17",
    ) -> None:
        super().__init__()
        #: training epochs have at least this many batches (see ShardedBatchSampler)
        self.min_steps_per_epoch = int(min_steps_per_epoch)
        self.name, self.root, self.feature_file = name, root, feature_file
        self.protocol: ProtocolName = protocol
        self.preprocess: Preprocess = preprocess
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_seen_fraction, self.split_seed = val_seen_fraction, split_seed
        self.semantics_key = semantics_key
        self.synthetic = synthetic
        self.exclude_test_from_val = exclude_test_from_val
        self.data_format = data_format
        self._data = data
        self.split: ProtocolSplit | None = None

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> ZSLData:
        if self._data is None:
            if self.root is None:
                raise DataError(str(self.name), "no data given and no root to read it from")
            if self.synthetic is not None:
                from zsl.data.synthetic import SyntheticSpec, ensure_synthetic

                ensure_synthetic(
                    Path(self.root) / str(self.name),
                    SyntheticSpec(**self.synthetic),
                    self.feature_file,
                )
            self._data = read_dataset(
                self.data_format,
                self.root,
                str(self.name),
                self.feature_file,
                self.protocol,
                self.semantics_key,
                self.exclude_test_from_val,
            )
        return self._data

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        data = self._load()
        split = make_split(data, self.protocol, self.val_seen_fraction, self.split_seed)
        # (l2 and none fit nothing: no copy of the training rows for them)
        fitted_on = data.features[split.train_idx] if self.preprocess == "minmax" else data.features
        scaler = FeatureScaler.fit(self.preprocess, fitted_on)
        labels = torch.from_numpy(data.labels)

        def take(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            rows = scaler.transform_rows(data.features, idx)
            feats = torch.from_numpy(np.ascontiguousarray(rows))
            return feats, labels[torch.from_numpy(idx)]

        self.train_x, self.train_y = take(split.train_idx)
        self.eval_x: torch.Tensor | MappedRows
        if isinstance(data.features, np.memmap):  # evaluation reads its rows batch by batch
            self.eval_x = MappedRows(data.features, split.eval_idx, scaler)
            self.eval_y = labels[torch.from_numpy(split.eval_idx)]
        else:
            self.eval_x, self.eval_y = take(split.eval_idx)
        seen = torch.from_numpy(split.seen_classes)
        if not torch.isin(self.train_y, seen).all():  # the guarantee, asserted on tensors
            raise DataError(str(self.name), "a training label is not a seen class")
        self.class_space = ClassSpace(
            semantics=torch.from_numpy(data.semantics),
            seen_ids=seen,
            unseen_ids=torch.from_numpy(split.unseen_classes),
            feature_dim=int(data.features.shape[1]),
            class_names=data.class_names,
        )
        self.split = split

    def training_examples(self) -> ExampleSet:
        """The preprocessed seen-class training examples (after ``setup()``)."""
        self.setup()
        return ExampleSet(self.train_x, self.train_y)

    def evaluation_examples(self) -> ExampleSet:
        """The preprocessed evaluation examples (validation or test, by protocol); read whole
        into memory when the benchmark's features are memory-mapped."""
        self.setup()
        x = self.eval_x.materialise() if isinstance(self.eval_x, MappedRows) else self.eval_x
        return ExampleSet(x, self.eval_y)

    # -- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.batch_size <= 0:
            # closed-form models: every rank fits on the whole training set (identical fits)
            data = _TensorBatches(self.train_x, self.train_y)
            full = ShardedBatchSampler(len(data), 0, False, rank=0, world_size=1)
            return DataLoader(data, sampler=full, batch_size=None, collate_fn=None)
        return tensor_loader(
            self.train_x,
            self.train_y,
            self.batch_size,
            True,
            self.split_seed,
            self.min_steps_per_epoch,
        )

    def _eval_loader(self) -> DataLoader:
        return tensor_loader(self.eval_x, self.eval_y, self.eval_batch_size, False)

    def val_dataloader(self) -> DataLoader | list:
        # Per-epoch validation only exists in the val protocol: the test split is never
        # looked at during training.
        return self._eval_loader() if self.protocol == "val" else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
