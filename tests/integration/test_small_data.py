"""The generative defaults on a small dataset (``experiments/small_data_check.py``): 8 classes,
6 seen (2 of them validation) and 2 unseen, a few hundred 64-d features. Every generative model's
default config, through the full protocol, ends with u > 0 and s > 0 (no collapse to either
side) and a higher uncalibrated H than ALE's."""

from __future__ import annotations

import pytest
from conftest import load_experiment

pytestmark = pytest.mark.slow

GENERATIVE = ("clswgan", "cadavae", "segzsl", "fvaegan", "tfvaegan")


def test_generative_defaults_do_not_collapse_on_small_data() -> None:
    script = load_experiment("small_data_check")
    results = script.main(["--seeds", "0"])
    ale = results["ale"][0]["gzsl_h"]
    for name in GENERATIVE:
        run = results[name][0]
        assert run["gzsl_u"] > 0 and run["gzsl_s"] > 0, (name, run["gzsl_u"], run["gzsl_s"])
        assert run["gzsl_h"] > ale, (name, run["gzsl_h"], ale)
