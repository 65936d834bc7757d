"""The harmonic mean of two accuracies and the input checks shared by the metrics: class ids
are 1-D integer tensors in ``[0, num_classes)``, masks 1-D bool tensors."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_class_ids", "check_mask", "check_num_classes", "check_range", "harmonic_mean"]


def harmonic_mean(u: float, s: float) -> float:
    """Harmonic mean ``2us / (u + s)`` of two accuracies; 0 when ``u + s == 0``.

    NaN inputs propagate to a NaN result.
    """
    u = float(u)
    s = float(s)
    total = u + s
    if total == 0.0:
        return 0.0
    return 2.0 * u * s / total


def check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def as_class_ids(ids: Tensor, name: str) -> Tensor:
    """Check that ``ids`` is a 1-D integer tensor and return it as ``long``."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class ids, got shape {tuple(ids.shape)}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must have an integer dtype (class ids), got {ids.dtype}")
    return ids.long()


def check_range(ids: Tensor, num_classes: int, name: str) -> None:
    """Raise ValueError if any id in ``ids`` lies outside ``[0, num_classes)``."""
    if ids.numel() == 0:
        return
    lo = int(ids.min())
    hi = int(ids.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} contains class ids out of range [0, {num_classes}): min {lo}, max {hi}"
        )


def check_mask(mask: Tensor, name: str, num_classes: int | None = None) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D bool tensor, got dtype {mask.dtype} and shape "
            f"{tuple(mask.shape)}"
        )
    if num_classes is not None and mask.numel() != num_classes:
        raise ValueError(f"{name} must have {num_classes} entries, got {mask.numel()}")
    return mask
