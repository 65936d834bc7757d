"""Contracts of every training-free scorer found through the registry (see
``tests/families.py``; CLIP): closed form, no trained parameter, a fit that changes nothing,
finite scores of the right shape for any number of classes, nothing to select on validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from families import config_params, model_class, scorer_models, search_grid, takes

SCORERS = scorer_models()


def test_the_family_holds_clip() -> None:
    assert "clip" in SCORERS


def build(name: str, dim: int, n_classes: int) -> Any:
    """The scorer with its config's settings, on ``dim``-d features and semantics (one shared
    embedding space); a fixed ``logit_scale`` where it takes one, so that no pretrained
    network is loaded."""
    params = config_params(name)
    if takes(name, "logit_scale"):
        params["logit_scale"] = 10.0
    return model_class(name)(dim, dim, n_classes, **params)


@pytest.mark.parametrize("name", SCORERS)
@pytest.mark.parametrize("n_classes", [1, 7])
def test_scores_shape_for_any_number_of_classes(name: str, n_classes: int) -> None:
    model = build(name, 8, 10)
    gen = torch.Generator().manual_seed(0)
    x, sem = torch.randn(5, 8, generator=gen), torch.randn(n_classes, 8, generator=gen)
    scores = model.scores(x, sem)
    assert scores.shape == (5, n_classes)
    assert torch.isfinite(scores).all()
    # a scorer ranks by the embeddings alone: rescaling a class's embedding changes nothing
    # in the ranking of the images for that class
    again = model.scores(x, sem * 3.0)
    assert torch.equal(scores.argsort(0), again.argsort(0))


@pytest.mark.parametrize("name", SCORERS)
def test_scorers_learn_nothing_from_the_benchmark(name: str) -> None:
    model = build(name, 8, 10)
    assert model_class(name).closed_form
    assert sum(p.numel() for p in model.parameters()) == 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 8, generator=gen), torch.arange(20) % 4
    model.fit_closed_form(x, y, torch.randn(4, 8, generator=gen))
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, equal_nan=True, rtol=0, atol=0)
    assert not any(search_grid(name).values())  # nothing to select on validation classes
