"""Checks of hyper-parameter values that every model shares, importable without torch (the
command line checks a config with them before anything heavy is imported)."""

from __future__ import annotations

from typing import Any

__all__ = ["NON_NEGATIVE_HPARAMS", "POSITIVE_HPARAMS", "check_common_hparams"]

#: hyper-parameters that must be positive / non-negative wherever a model has them
POSITIVE_HPARAMS = ("lr", "cls_lr", "pretrain_lr")
NON_NEGATIVE_HPARAMS = ("weight_decay", "cls_weight_decay", "margin")


def check_common_hparams(model: str, hparams: dict[str, Any]) -> None:
    """Raise a ValueError naming ``model`` and the first learning rate that is not positive or
    weight decay / margin that is negative (NaN counts as bad)."""
    for name in POSITIVE_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{model}: {name} must be positive, got {value}")
    for name in NON_NEGATIVE_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not value >= 0:
            raise ValueError(f"{model}: {name} must be >= 0, got {value}")
