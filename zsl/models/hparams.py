"""Checks of hyper-parameter values that every model shares, importable without torch (the
command line checks a config with them before anything heavy is imported)."""

from __future__ import annotations

import math
from typing import Any

#: the words ``unit_norm_output`` takes besides true and false (the generator's output layer,
#: :func:`zsl.models.generative.nets.unit_norm_setting`)
UNIT_NORM_WORDS = ("auto", "signed")

__all__ = [
    "LOSS_WEIGHT_SUFFIX",
    "NON_NEGATIVE_HPARAMS",
    "POSITIVE_HPARAMS",
    "check_common_hparams",
    "check_nonnegative",
    "check_positive",
    "UNIT_INTERVAL_HPARAMS",
]

#: hyper-parameters that must be positive / non-negative wherever a model has them
POSITIVE_HPARAMS = ("lr", "cls_lr", "pretrain_lr")
NON_NEGATIVE_HPARAMS = ("weight_decay", "cls_weight_decay", "margin")
#: the suffix of loss weights (``cls_weight``, ``gp_weight``, ``kl_weight``, ...): each >= 0
LOSS_WEIGHT_SUFFIX = "_weight"
#: hyper-parameters that must be null or in [0, 1): the generators' weight-average decay
UNIT_INTERVAL_HPARAMS = ("gen_ema",)


def check_common_hparams(model: str, hparams: dict[str, Any]) -> None:
    """Raise a ValueError naming ``model`` and the first learning rate that is not positive,
    weight decay, margin or loss weight (``*_weight``) that is negative or decay outside
    [0, 1) (NaN counts as bad)."""
    for name in POSITIVE_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{model}: {name} must be positive, got {value}")
    weights = [name for name in hparams if name.endswith(LOSS_WEIGHT_SUFFIX)]
    for name in (*NON_NEGATIVE_HPARAMS, *weights):
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
            raise ValueError(f"{model}: {name} must be >= 0, got {value}")
    for name in UNIT_INTERVAL_HPARAMS:
        value = hparams.get(name)
        if isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
            raise ValueError(f"{model}: {name} must be in [0, 1) or null, got {value}")
    unit_norm = hparams.get("unit_norm_output", False)
    if not (isinstance(unit_norm, bool) or unit_norm in UNIT_NORM_WORDS):
        raise ValueError(
            f"{model}: unit_norm_output must be true, false, auto or signed, got {unit_norm!r}"
        )


def check_positive(**values: float) -> None:
    """Raise a ValueError naming every non-positive (or NaN) value."""
    bad = [f"{k}={v}" for k, v in values.items() if not (v > 0) or math.isnan(v)]
    if bad:
        raise ValueError(f"must be positive: {', '.join(bad)}")


def check_nonnegative(**values: float) -> None:
    """Raise a ValueError naming the first negative (or NaN) value, e.g. a loss weight."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
