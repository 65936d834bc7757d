"""The data types models see: a benchmark in memory, its class space, batches and the
training set. Models import these types only, never the datamodule or a file format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

#: ``val``: train classes vs validation classes; ``test``: trainval vs the test split
ProtocolName = Literal["val", "test"]
#: the split keys each protocol reads (and the only ones it reads)
PROTOCOL_KEYS: dict[str, tuple[str, ...]] = {
    "val": ("train_loc", "val_loc"),
    "test": ("trainval_loc", "test_seen_loc", "test_unseen_loc"),
}


@dataclass(frozen=True)
class ZSLData:
    """One benchmark in memory: 0-based labels/locs, features as rows, semantics as rows."""

    name: str
    features: np.ndarray  # [N, D] float32
    labels: np.ndarray  # [N] int64, global class ids in [0, C)
    semantics: np.ndarray  # [C, A] float32, one row per class
    class_names: tuple[str, ...]
    locs: Mapping[str, np.ndarray] = field(repr=False)  # 0-based image indices per split key
    image_files: tuple[str, ...] | None = field(default=None, repr=False)
    source: str = ""
    #: the other protocol's split indices, read only to check the cross-split invariants
    guard_locs: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: val protocol: test images removed from each split key (see ``exclude_test_images``)
    removed_test_images: Mapping[str, int] = field(default_factory=dict)
    #: the features were generated at the benchmark's shapes, not read (zsl.data.standin)
    synthetic_features: bool = False

    @property
    def n_classes(self) -> int:
        return int(self.semantics.shape[0])

    def classes_of(self, key: str) -> np.ndarray:
        """Sorted global class ids that occur among the images of split ``key``."""
        return np.unique(self.labels[self.locs[key]])


@dataclass
class ZSLBatch:
    """A mini-batch: features [B, D] and global class ids [B].

    ``share`` is ``B * world_size / global_batch_size``: 1.0 in a single process; under DDP a
    rank's mean loss multiplied by it makes the averaged gradient equal the gradient of the
    mean loss over the whole global batch, even when the ranks' slices differ in size.
    """

    features: torch.Tensor
    labels: torch.Tensor
    share: float = 1.0

    def to(self, device: torch.device | str) -> ZSLBatch:
        return ZSLBatch(self.features.to(device), self.labels.to(device), self.share)


@dataclass(frozen=True)
class ClassSpace:
    """What a model needs to know about the classes of one protocol (read from data)."""

    semantics: torch.Tensor  # [C, A] all classes of the benchmark (rows outside unused)
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


@dataclass(frozen=True)
class ExampleSet:
    """Preprocessed examples of one side of a protocol: features [N, D], global labels [N]."""

    features: torch.Tensor
    labels: torch.Tensor


@runtime_checkable
class ZSLDataSource(Protocol):
    """What a model is handed: the protocol's classes and its (seen-class) training examples.

    :class:`zsl.data.datamodule.ZSLDataModule` implements it after ``setup()``; a model bound
    to a source (``model.bind(source)``, done automatically by ``trainer.fit(model, dm)``)
    never reads anything else from the data."""

    @property
    def class_space(self) -> ClassSpace: ...

    def training_examples(self) -> ExampleSet: ...
