"""The class-space methods of every ZSL model: which classes it scores, which it was trained on.

A model holds the protocol's classes as buffers (``semantics`` [C, A] of every class, the
global ids ``seen_ids`` / ``unseen_ids``) and the class names; :class:`ClassSpaceMixin` installs
them, converts global seen-class labels to positions among the seen classes and refuses
unseen-class semantics during the training of a model that may not read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from zsl.data.types import ClassSpace
from zsl.errors import LeakageError


class ClassSpaceMixin:
    """The class space of a :class:`~zsl.models.base.ZSLModule` (a mixin of it)."""

    uses_unseen_semantics: ClassVar[bool]
    training: bool
    feature_dim: int
    n_attributes: int
    n_classes: int
    class_names: tuple[str, ...]
    semantics: Tensor
    seen_ids: Tensor
    unseen_ids: Tensor

    def set_class_space(self, space: ClassSpace) -> None:
        """Install the protocol's classes; shapes must match the model's."""
        if space.semantics.shape != (self.n_classes, self.n_attributes):
            raise ValueError(
                f"{type(self).__name__}: class semantics of shape {tuple(space.semantics.shape)} "
                f"do not match the model's ({self.n_classes}, {self.n_attributes})"
            )
        if space.feature_dim != self.feature_dim:
            raise ValueError(
                f"{type(self).__name__}: data has {space.feature_dim}-d features, "
                f"model was built for {self.feature_dim}"
            )
        self.semantics = space.semantics.to(self.semantics)
        self.seen_ids = space.seen_ids.to(self.seen_ids.device)
        self.unseen_ids = space.unseen_ids.to(self.unseen_ids.device)
        self.class_names = tuple(space.class_names)

    def use_classes(
        self, semantics: Tensor, names: Sequence[str], seen_ids: Tensor, unseen_ids: Tensor
    ) -> None:
        """Score against another class set (e.g. the checkpoint's classes plus new ones given
        by their semantic vectors): ``semantics`` [C, A], one name per row; ``seen_ids`` must be
        classes the model was trained on, at the same rows. A generative model trains its
        final classifier for the new set at the next :meth:`prepare_inference`."""
        if semantics.ndim != 2 or semantics.shape[1] != self.n_attributes:
            raise ValueError(
                f"{type(self).__name__}: class semantics must be [C, {self.n_attributes}], got "
                f"{tuple(semantics.shape)}"
            )
        if len(names) != semantics.shape[0]:
            raise ValueError(f"{len(names)} class names for {semantics.shape[0]} classes")
        self.n_classes = int(semantics.shape[0])
        self.semantics = semantics.to(self.semantics)
        self.seen_ids = seen_ids.to(self.seen_ids)
        self.unseen_ids = unseen_ids.to(self.unseen_ids)
        self.class_names = tuple(names)

    def seen_semantics(self) -> Tensor:
        return self.semantics[self.seen_ids]

    def unseen_semantics(self) -> Tensor:
        """Unseen semantics; refused while training a non-generative model."""
        if self.training and not self.uses_unseen_semantics:
            raise LeakageError(
                f"{type(self).__name__} asked for unseen-class semantics during training"
            )
        return self.semantics[self.unseen_ids]

    def universe_mask(self) -> Tensor:
        mask = torch.zeros(self.n_classes, dtype=torch.bool, device=self.semantics.device)
        mask[self.seen_ids] = True
        mask[self.unseen_ids] = True
        return mask

    def to_local(self, labels: Tensor) -> Tensor:
        """Global seen-class ids -> positions in ``seen_ids``; raises on any unseen label."""
        pos = torch.searchsorted(self.seen_ids, labels)
        pos = pos.clamp(max=self.seen_ids.numel() - 1)
        if not torch.equal(self.seen_ids[pos], labels):
            bad = labels[self.seen_ids[pos] != labels][:5].tolist()
            raise LeakageError(
                f"{type(self).__name__}: training batch holds non-seen classes {bad}"
            )
        return pos
