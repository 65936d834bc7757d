"""Every generator on synthetic data unlike CUB VGG: signed features (CLIP/ViT-like, the
generator's output must adapt, a ReLU cannot produce them) and few images per class (10-15).
Through the full protocol with each generator's default config on a short budget (4 epochs,
the config's parameters, one validation split), none collapses: GZSL u > 0 and s > 0; the
features' sign is recorded in ``metrics.json`` and, on signed features, a generator network's
output is linear with standardised targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from families import generative_models

pytestmark = pytest.mark.usefixtures("one_thread")

#: a small synthetic benchmark: 20 classes, 5 unseen (chance 20 %), 5 validation classes
BASE = [
    "data.synthetic.n_classes=20",
    "data.synthetic.n_unseen=5",
    "data.synthetic.n_val=5",
    "data.synthetic.n_attributes=24",
    "data.synthetic.feature_dim=64",
]
CASES = {
    "signed": [
        "data.synthetic.signed=true",
        "data.synthetic.min_per_class=30",
        "data.synthetic.max_per_class=60",
    ],
    "few_shot": ["data.synthetic.min_per_class=10", "data.synthetic.max_per_class=15"],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", generative_models())
def test_generator_does_not_collapse(tmp_path: Path, name: str, case: str) -> None:
    from zsl.cli.train import run

    metrics = run(
        [
            f"model={name}",
            *BASE,
            *CASES[case],
            "model.max_epochs=4",  # a short budget: a collapse shows from the first epochs
            "selection.grid=false",
            "model.search.folds=1",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    assert metrics is not None
    assert metrics["gzsl_u"] > 0 and metrics["gzsl_s"] > 0, (metrics["gzsl_u"], metrics["gzsl_s"])
    choices = metrics["data_choices"]
    assert choices["features"] == ("signed" if case == "signed" else "non-negative")
    if case == "signed" and "output" in choices:  # a generator network's last layer
        assert choices["output"] == "linear, standardised targets"
