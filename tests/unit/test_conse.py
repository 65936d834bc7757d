"""CONSE (Norouzi et al., ICLR 2014): the convex combination against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsl.models.classical.conse import CONSE, conse_embedding


def test_conse_embedding_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    semantics = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # T = 2: row 0 keeps classes 0 (0.5) and 1 (0.3) -> (0.5 * [1, 0] + 0.3 * [0, 1]) / 0.8
    # row 1 keeps class 2 (0.8) and the first of the tied 0.1s; only class 2's weight matters
    # for the check below, so compare row 0 exactly and row 1's dominant direction
    out = conse_embedding(probs, semantics, 2)
    torch.testing.assert_close(out[0], torch.tensor([0.625, 0.375]))
    assert out[1, 0] > 0.8 and out[1, 1] > 0.8
    # T = 1: the most probable class's vector; T above the class count uses every class
    torch.testing.assert_close(conse_embedding(probs, semantics, 1), semantics[[0, 2]])
    full = (probs / probs.sum(1, keepdim=True)) @ semantics
    torch.testing.assert_close(conse_embedding(probs, semantics, 10), full)


def test_conse_scores_are_cosines_of_the_combination() -> None:
    torch.manual_seed(0)
    model = CONSE(feature_dim=5, n_attributes=3, n_classes=4, top_t=2)
    sem = torch.randn(4, 3)
    model.semantics = sem
    model.seen_ids = torch.tensor([0, 2])
    model.unseen_ids = torch.tensor([1, 3])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(4, 5))
    x = torch.randn(6, 5)
    logits = (x @ model.classifier.weight.T + model.classifier.bias)[:, [0, 2]].detach().numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    emb = p @ sem[[0, 2]].numpy()  # T = 2 = every seen class
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = emb @ (sem.numpy() / np.linalg.norm(sem.numpy(), axis=1, keepdims=True)).T
    np.testing.assert_allclose(model.scores(x, sem).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_conse_refuses_a_non_positive_top_t() -> None:
    with pytest.raises(ValueError, match="top_t must be an integer >= 1"):
        CONSE(5, 3, 4, top_t=0)
