"""Lightning datamodule over an xlsa17-format benchmark (real or the built-in synthetic one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from zsl.data.errors import DataError
from zsl.data.splits import FeatureScaler, Preprocess, ProtocolSplit, make_split
from zsl.data.xlsa17 import Protocol, ZSLData, load_xlsa17


@dataclass
class ZSLBatch:
    """A mini-batch: features [B, D] and global class ids [B]."""

    features: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> ZSLBatch:
        return ZSLBatch(self.features.to(device), self.labels.to(device))


@dataclass(frozen=True)
class ClassSpace:
    """What a model needs to know about the classes of one protocol (read from data)."""

    semantics: (
        torch.Tensor
    )  # [C, A] all classes of the benchmark (rows outside the universe unused)
    seen_ids: torch.Tensor  # sorted global ids trained on
    unseen_ids: torch.Tensor  # sorted global ids only evaluated on
    feature_dim: int
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return int(self.semantics.shape[0])

    @property
    def n_attributes(self) -> int:
        return int(self.semantics.shape[1])


class _TensorBatches(Dataset):
    """In-memory tensors indexed by a whole list of indices at once (no per-sample work)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, idx: list[int]) -> ZSLBatch:
        index = torch.as_tensor(idx, dtype=torch.long)
        return ZSLBatch(self.features[index], self.labels[index])


def tensor_loader(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader that yields :class:`ZSLBatch` slices of in-memory tensors."""
    data = _TensorBatches(features, labels)
    if shuffle:
        base = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    else:
        base = SequentialSampler(data)
    size = len(data) if batch_size <= 0 else batch_size
    sampler = BatchSampler(base, batch_size=size, drop_last=False)
    return DataLoader(data, sampler=sampler, batch_size=None, collate_fn=None)


class ZSLDataModule(pl.LightningDataModule):
    """Loads a benchmark, builds the protocol split, fits preprocessing on training features.

    Guarantees (asserted): training batches hold only seen-class images; evaluation images
    are disjoint from training images. ``batch_size <= 0`` yields the full training set as
    one batch (used by closed-form models).
    """

    def __init__(
        self,
        name: str,
        root: str,
        feature_file: str = "res101.mat",
        protocol: Protocol = "test",
        preprocess: Preprocess = "l2",
        batch_size: int = 256,
        eval_batch_size: int = 4096,
        val_seen_fraction: float = 0.2,
        split_seed: int = 0,
        semantics_key: str = "att",
        synthetic: dict[str, Any] | None = None,
        data: ZSLData | None = None,
    ) -> None:
        super().__init__()
        self.name, self.root, self.feature_file = name, root, feature_file
        self.protocol: Protocol = protocol
        self.preprocess: Preprocess = preprocess
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_seen_fraction, self.split_seed = val_seen_fraction, split_seed
        self.semantics_key = semantics_key
        self.synthetic = synthetic
        self._data = data
        self.split: ProtocolSplit | None = None

    # -- loading -----------------------------------------------------------------------
    def _load(self) -> ZSLData:
        if self._data is None:
            if self.synthetic is not None:
                from zsl.data.synthetic import SyntheticSpec, ensure_synthetic

                ensure_synthetic(
                    Path(self.root) / self.name, SyntheticSpec(**self.synthetic), self.feature_file
                )
            self._data = load_xlsa17(
                self.root, self.name, self.feature_file, self.protocol, self.semantics_key
            )
        return self._data

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        data = self._load()
        split = make_split(data, self.protocol, self.val_seen_fraction, self.split_seed)
        scaler = FeatureScaler.fit(self.preprocess, data.features[split.train_idx])
        labels = torch.from_numpy(data.labels)

        def take(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            feats = torch.from_numpy(np.ascontiguousarray(scaler.transform(data.features[idx])))
            return feats, labels[torch.from_numpy(idx)]

        self.train_x, self.train_y = take(split.train_idx)
        self.eval_x, self.eval_y = take(split.eval_idx)
        seen = torch.from_numpy(split.seen_classes)
        if not torch.isin(self.train_y, seen).all():  # the guarantee, asserted on tensors
            raise DataError(self.name, "a training label is not a seen class")
        self.class_space = ClassSpace(
            semantics=torch.from_numpy(data.semantics),
            seen_ids=seen,
            unseen_ids=torch.from_numpy(split.unseen_classes),
            feature_dim=int(data.features.shape[1]),
            class_names=data.class_names,
        )
        self.split = split

    # -- loaders -----------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return tensor_loader(self.train_x, self.train_y, self.batch_size, True, self.split_seed)

    def _eval_loader(self) -> DataLoader:
        return tensor_loader(self.eval_x, self.eval_y, self.eval_batch_size, False)

    def val_dataloader(self) -> DataLoader | list:
        # Per-epoch validation only exists in the val protocol: the test split is never
        # looked at during training.
        return self._eval_loader() if self.protocol == "val" else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()
