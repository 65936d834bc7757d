"""The finite check that losses, scores and a generative model's synthetic examples (up to a
gigabyte) go through."""

from __future__ import annotations

import pytest
import torch

from zsl.models.classical.ale import ALE


@pytest.mark.parametrize(
    "bad",
    [
        [1.0, float("nan"), 2.0],
        [1.0, float("inf")],
        [float("-inf"), 0.0],
        [float("inf"), float("-inf")],  # the sum is NaN, not a cancellation
    ],
)
def test_check_finite_finds_every_non_finite_value(bad: list[float]) -> None:
    model = ALE(4, 3, 5)
    values = torch.zeros(1000)
    values[500 : 500 + len(bad)] = torch.tensor(bad)
    with pytest.raises(FloatingPointError, match="ALE: non-finite synthetic examples"):
        model.check_finite(values, "synthetic examples")


def test_check_finite_accepts_finite_values_whose_sum_overflows() -> None:
    model = ALE(4, 3, 5)
    huge = torch.full((8,), 3e38)
    assert not torch.isfinite(huge.sum())
    model.check_finite(huge, "features")  # every element is finite
    model.check_finite(torch.tensor(2.0), "loss")
