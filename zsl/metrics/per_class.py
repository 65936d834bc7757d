"""Per-class top-1 accuracy accumulated over batches (:class:`PerClassAccuracy`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from zsl.metrics.inputs import as_class_ids, check_mask, check_num_classes, check_range

__all__ = ["PerClassAccuracy"]


class PerClassAccuracy(Metric):
    """Per-class top-1 accuracy, accumulated over batches (states are summed under DDP).

    Accuracies are fractions in ``[0, 1]``.

    Args:
        num_classes: total number of classes (ids are in ``[0, num_classes)``).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes)
        self.add_state(
            "correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state(
            "total", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch of predicted and true global class ids (1-D, same length)."""
        preds = as_class_ids(preds, "preds")
        target = as_class_ids(target, "target")
        if preds.shape != target.shape:
            raise ValueError(
                f"preds and target must have the same length, got {preds.numel()} and "
                f"{target.numel()}"
            )
        check_range(preds, self.num_classes, "preds")
        check_range(target, self.num_classes, "target")
        target = target.to(self.total.device)
        preds = preds.to(self.total.device)
        self.total += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target[preds == target], minlength=self.num_classes)

    def compute(self) -> Tensor:
        """Per-class accuracy, float ``[num_classes]``; NaN for classes without targets."""
        return self.correct.float() / self.total.float()

    def mean_over(self, class_ids: Tensor) -> Tensor:
        """Mean accuracy over ``class_ids`` that have at least one target.

        ``class_ids`` is a 1-D tensor of global ids (duplicates are ignored) or a bool mask of
        length ``num_classes``. Classes without targets are excluded from the mean (never
        counted as 0). Raises ValueError if none of the given classes has targets.
        """
        if isinstance(class_ids, Tensor) and class_ids.dtype == torch.bool:
            mask = check_mask(class_ids, "class_ids", self.num_classes)
            ids = mask.nonzero().flatten()
        else:
            ids = as_class_ids(class_ids, "class_ids")
            check_range(ids, self.num_classes, "class_ids")
            ids = torch.unique(ids)
        acc = self.compute()
        selected = acc[ids.to(acc.device)]
        selected = selected[~torch.isnan(selected)]
        if selected.numel() == 0:
            raise ValueError(
                "mean_over: none of the given classes has any target sample; the mean "
                "accuracy is undefined"
            )
        return selected.mean()
