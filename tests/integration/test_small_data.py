"""The generative defaults on a small dataset (``experiments/small_data_check.py``): 8 classes,
6 seen (2 of them validation) and 2 unseen, a few hundred 64-d features. Every generative model's
default config, through the full protocol, ends with u > 0 and s > 0 (no collapse to either
side) and a higher uncalibrated H than ALE's. One test per model, so that test processes share
them out."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import load_experiment

pytestmark = pytest.mark.slow

GENERATIVE = ("clswgan", "cadavae", "segzsl", "fvaegan", "tfvaegan")


def _run(model: str) -> dict[str, Any]:
    script = load_experiment("small_data_check")
    return script.main(["--seeds", "0", "--models", model])[model][0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ale() -> dict[str, Any]:
    """ALE's run on the same data (once per test process)."""
    return _run("ale")


@pytest.mark.parametrize("name", GENERATIVE)
def test_generative_default_does_not_collapse_on_small_data(name: str, ale: dict[str, Any]) -> None:
    run = _run(name)
    assert run["gzsl_u"] > 0 and run["gzsl_s"] > 0, (name, run["gzsl_u"], run["gzsl_s"])
    assert run["gzsl_h"] > ale["gzsl_h"], (name, run["gzsl_h"], ale["gzsl_h"])
