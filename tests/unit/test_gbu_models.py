"""IAP, CMT, SSE, SYNC and GFZSL (the GBU benchmark's remaining methods): every loss and
closed form against a hand-worked example or an independent NumPy/SciPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from zsl.data.types import ExampleSet
from zsl.models.classical.cmt import CMT, GATE, seen_log_density
from zsl.models.classical.dap import attribute_log_posterior
from zsl.models.classical.gfzsl import GFZSL, class_gaussians, gaussian_log_likelihood
from zsl.models.classical.iap import IAP, iap_attribute_probs
from zsl.models.classical.sse import (
    SSE,
    project_to_simplex,
    relu_similarities,
    simplex_proportions,
)
from zsl.models.classical.sync import SYNC, graph_weights, one_vs_other_squared_hinge


def install(model, seen: list[int], unseen: list[int], semantics: torch.Tensor) -> None:
    """Give a bare model its classes (what ``bind`` does from a datamodule)."""
    model.semantics = semantics.to(model.semantics)
    model.seen_ids = torch.tensor(seen)
    model.unseen_ids = torch.tensor(unseen)


# ----------------------------------------------------------------------------- IAP


def test_iap_attribute_posterior_by_hand() -> None:
    # two seen classes with signatures (1, 0) and (1, 1); p(y | x) = (0.75, 0.25)
    probs = torch.tensor([[0.75, 0.25]])
    signatures = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # p(a_1) = 0.75 + 0.25 = 1 -> clamped to 1 - eps; p(a_2) = 0.25
    p_on = iap_attribute_probs(probs, signatures, eps=0.01)
    torch.testing.assert_close(p_on, torch.tensor([[0.99, 0.25]]))
    # the DAP posterior of signature (0, 1) with priors (0.5, 0.5): log(0.01/0.5) + log(0.25/0.5)
    score = attribute_log_posterior(
        p_on.log(), (1 - p_on).log(), torch.tensor([[0.0, 1.0]]), torch.tensor([0.5, 0.5])
    )
    assert score.item() == pytest.approx(math.log(0.02) + math.log(0.5), rel=1e-5)


def test_iap_scores_follow_the_seen_softmax() -> None:
    model = IAP(3, 2, 3, eps=0.01)
    semantics = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.7]])
    install(model, [0, 1], [2], semantics)
    model.on_fit_start()  # threshold (0.5, 0.5): signatures (1, 0), (0, 1), (1, 1)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([math.log(3.0), 0.0, 5.0]))  # p = (3/4, 1/4)
    scores = model.scores(torch.zeros(1, 3), semantics)
    # p(a) = (0.75, 0.25), prior (0.5, 0.5); class 2 = (1, 1): log(1.5) + log(0.5)
    assert scores[0, 2].item() == pytest.approx(math.log(1.5) + math.log(0.5), rel=1e-5)
    assert scores[0].argmax().item() == 0  # the unseen column's bias never enters


def test_iap_refuses_eps_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="eps must lie in"):
        IAP(3, 2, 3, eps=0.5)


# ----------------------------------------------------------------------------- CMT


def test_cmt_loss_and_scores_by_hand() -> None:
    model = CMT(2, 2, 3, hidden=2)
    with torch.no_grad():  # f(x) = tanh(x) (identity layers around the tanh)
        model.net[0].weight.copy_(torch.eye(2))
        model.net[0].bias.zero_()
        model.net[2].weight.copy_(torch.eye(2))
        model.net[2].bias.zero_()
    x = torch.tensor([[0.0, 0.0]])
    semantics = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    from zsl.data.types import ZSLBatch

    loss = model.training_loss(ZSLBatch(x, torch.tensor([1])), torch.tensor([1]), semantics)
    assert loss.item() == pytest.approx(0.5 * 4.0)  # 1/2 |(0, 2) - (0, 0)|^2
    torch.testing.assert_close(model.scores(x, semantics), torch.tensor([[-1.0, -4.0]]))


def test_seen_log_density_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    mapped = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    centres = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    variances = torch.tensor([0.5, 2.0], dtype=torch.float64)
    priors = torch.tensor([0.3, 0.7], dtype=torch.float64)
    ours = seen_log_density(mapped, centres, variances, priors.log())
    ref = np.log(
        sum(
            p * scipy.stats.multivariate_normal(c.numpy(), v * np.eye(3)).pdf(mapped.numpy())
            for p, c, v in zip(priors.numpy(), centres, variances.numpy())
        )
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)


def test_cmt_novelty_detector_sends_outliers_to_unseen_classes() -> None:
    torch.manual_seed(0)
    semantics = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    model = CMT(2, 2, 3, hidden=8, novelty=True, outlier_fraction=0.1)
    install(model, [0, 1], [2], semantics)
    with torch.no_grad():  # an f(x) close to x in the region used
        model.net[0].weight.copy_(torch.cat([torch.eye(2), torch.zeros(6, 2)]) * 0.05)
        model.net[0].bias.zero_()
        model.net[2].weight.copy_(torch.cat([torch.eye(2), torch.zeros(2, 6)], 1) * 20.0)
        model.net[2].bias.zero_()
    seen_x = torch.cat([semantics[0] + 0.3 * torch.randn(40, 2), semantics[1] + torch.randn(40, 2)])
    model._training_examples = ExampleSet(seen_x, torch.tensor([0] * 40 + [1] * 40))
    model.on_eval_start()
    # per-class variances: mean squared distance / dimension, class 0 tighter than class 1
    assert model.class_variance[0] < model.class_variance[1]
    mapped = model.net(seen_x)
    density = model.seen_log_density(mapped)
    assert (density < model.log_threshold).float().mean().item() == pytest.approx(0.1, abs=0.03)
    probe = torch.stack([semantics[0] / 20 * 20, torch.tensor([-4.0, -4.0])])
    with torch.no_grad():
        scores = model.all_scores(probe)
    # the inlier keeps its seen decision; the outlier is classified among unseen classes
    assert scores[0].argmax().item() == 0 and scores[0, 2] < -GATE / 2
    assert scores[1].argmax().item() == 2 and scores[1, :2].max() < -GATE / 2
    model.hparams.novelty = False
    with torch.no_grad():
        plain = model.all_scores(probe)
    assert plain.max() > -GATE / 2 and plain[1].argmax().item() == 2


# ----------------------------------------------------------------------------- SSE


def test_simplex_projection_by_hand() -> None:
    v = torch.tensor([[0.5, 0.5], [2.0, 0.0], [0.6, 0.6], [0.1, 0.2]], dtype=torch.float64)
    expected = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.45, 0.55]], dtype=torch.float64)
    torch.testing.assert_close(project_to_simplex(v), expected)


def test_sse_class_proportions_match_scipy() -> None:
    rng = np.random.default_rng(0)
    att = rng.uniform(size=(6, 4))
    att /= np.linalg.norm(att, axis=1, keepdims=True)
    seen, queries = att[:4], att
    gamma = 0.5
    ours = simplex_proportions(
        torch.from_numpy(seen @ seen.T), torch.from_numpy(queries @ seen.T), gamma
    ).numpy()
    for c in range(len(queries)):

        def objective(alpha: np.ndarray, c: int = c) -> float:
            return 0.5 * float(np.sum((queries[c] - alpha @ seen) ** 2)) + 0.5 * gamma * float(
                alpha @ alpha
            )

        ref = scipy.optimize.minimize(
            objective,
            np.full(4, 0.25),
            method="SLSQP",
            bounds=[(0, 1)] * 4,
            constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0}],
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        np.testing.assert_allclose(ours[c], ref, atol=1e-5)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-12)
    assert (ours >= 0).all()


def test_sse_scores_are_proportions_of_relu_similarities() -> None:
    torch.manual_seed(0)
    x, templates, w = torch.rand(5, 6), torch.rand(3, 6), torch.randn(6)
    ref = np.maximum(x.numpy()[:, None, :] - templates.numpy()[None], 0.0) @ w.numpy()
    np.testing.assert_allclose(relu_similarities(x, templates, w).numpy(), ref, rtol=1e-5)
    model = SSE(6, 4, 5, gamma=0.5)
    semantics = torch.rand(5, 4)
    install(model, [0, 2, 4], [1, 3], semantics)
    with torch.no_grad():
        model.templates[model.seen_ids] = templates
        model.weight.copy_(w)
    alpha = model.proportions(semantics)
    assert alpha.shape == (5, 3)
    torch.testing.assert_close(model.scores(x, semantics), torch.from_numpy(ref).float() @ alpha.T)


# ----------------------------------------------------------------------------- SYNC


def test_sync_graph_weights_and_loss_by_hand() -> None:
    classes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    phantoms = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # class 0: distances^2 (0, 1) -> softmax(0, -2) at scale 2; class 1: (1, 2) -> (-2, -4)
    w = graph_weights(classes, phantoms, 2.0)
    e = math.exp(-2.0)
    torch.testing.assert_close(w, torch.tensor([[1 / (1 + e), e / (1 + e)]] * 2))
    scores = torch.tensor([[0.5, 0.5], [-2.0, 0.0]])
    # image 0 (class 0): (1 - 0.5)^2 + (1 + 0.5)^2; image 1 (class 1): (1 - 2)... -> 0 + 1
    loss = one_vs_other_squared_hinge(scores, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((0.25 + 2.25 + 0.0 + 1.0) / 4)


def test_sync_synthesises_every_classifier_from_the_phantom_bases() -> None:
    torch.manual_seed(0)
    model = SYNC(4, 3, 5, scale=0.7)
    semantics = torch.rand(5, 3, dtype=torch.float64)
    install(model, [0, 1, 3], [2, 4], semantics.float())
    model.on_fit_start()
    learned = torch.randn(5, 4)
    with torch.no_grad():
        model.seen_classifiers.copy_(learned)
    a = semantics.numpy() / np.linalg.norm(semantics.numpy(), axis=1, keepdims=True)
    seen = [0, 1, 3]
    median = np.median(scipy.spatial.distance.pdist(a[seen]))
    a = a / median
    d2 = ((a[:, None, :] - a[seen][None]) ** 2).sum(-1)
    s = np.exp(-0.7 * d2)
    s /= s.sum(1, keepdims=True)
    bases = np.linalg.solve(s[seen], learned.numpy()[seen].astype(np.float64))
    ref = s @ bases
    got = model.classifiers(semantics.float()).detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the seen classes' synthesised classifiers are the learned ones
    np.testing.assert_allclose(got[seen], learned.numpy()[seen], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- GFZSL


def test_gaussian_log_likelihood_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    means = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    variances = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.1
    ours = gaussian_log_likelihood(x, means, variances).numpy()
    const = 0.5 * 3 * math.log(2 * math.pi)
    for c in range(2):
        ref = scipy.stats.multivariate_normal(means[c].numpy(), np.diag(variances[c].numpy()))
        np.testing.assert_allclose(ours[:, c] - const, ref.logpdf(x.numpy()), rtol=1e-10)


def test_class_gaussians_are_maximum_likelihood_estimates() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    labels = torch.arange(30) % 3
    means, variances = class_gaussians(x, labels, 3)
    for c in range(3):
        rows = x[labels == c].numpy()
        np.testing.assert_allclose(means[c].numpy(), rows.mean(0), rtol=1e-10)
        np.testing.assert_allclose(variances[c].numpy(), rows.var(0), rtol=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "poly", "rbf"])
def test_gfzsl_closed_form_matches_numpy_kernel_ridge(kernel: str) -> None:
    gen = torch.Generator().manual_seed(2)
    n_seen, dim, n_att = 4, 5, 3
    x = torch.randn(40, dim, generator=gen, dtype=torch.float64)
    labels = torch.arange(40) % n_seen
    semantics = torch.rand(6, n_att, generator=gen)  # float32, as a model stores them
    model = GFZSL(dim, n_att, 6, reg_mean=0.3, reg_var=2.0, kernel=kernel, kernel_width=1.5)
    install(model, [0, 1, 2, 3], [4, 5], semantics)
    model.fit_closed_form(x, labels, semantics[:n_seen])

    # independent NumPy: MLE per class, kernel ridge on centred attributes
    xs, a = x.numpy(), semantics.double().numpy()
    mu = np.stack([xs[labels.numpy() == c].mean(0) for c in range(n_seen)])
    var = np.stack([xs[labels.numpy() == c].var(0) for c in range(n_seen)])
    var = np.maximum(var, 1e-3 * var.mean())
    centre = a[:n_seen].mean(0)
    ac = a - centre

    def k(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        if kernel == "linear":
            return p @ q.T
        if kernel == "poly":
            return (1.0 + p @ q.T) ** 2
        bw = 1.5 * np.median(scipy.spatial.distance.pdist(ac[:n_seen]))
        return np.exp(-scipy.spatial.distance.cdist(p, q, "sqeuclidean") / (2 * bw**2))

    gram = k(ac[:n_seen], ac[:n_seen])
    kq = k(ac, ac[:n_seen])

    def ridge(t: np.ndarray, reg: float) -> np.ndarray:
        return t.mean(0) + kq @ np.linalg.solve(gram + reg * np.eye(n_seen), t - t.mean(0))

    ref_mu, ref_var = ridge(mu, 0.3), np.exp(ridge(np.log(var), 2.0))
    got_mu, got_var = model.class_parameters(semantics)
    np.testing.assert_allclose(got_mu.numpy(), ref_mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got_var.numpy(), ref_var, rtol=1e-8)
    if kernel == "linear":  # the dual equals the primal ridge (A^T A + reg I)^-1 A^T T
        w = np.linalg.solve(
            ac[:n_seen].T @ ac[:n_seen] + 0.3 * np.eye(n_att), ac[:n_seen].T @ (mu - mu.mean(0))
        )
        np.testing.assert_allclose(got_mu.numpy(), mu.mean(0) + ac @ w, rtol=1e-8, atol=1e-10)


def test_gfzsl_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="reg_mean must be positive"):
        GFZSL(3, 2, 3, reg_mean=0.0)
    with pytest.raises(ValueError, match="kernel must be"):
        GFZSL(3, 2, 3, kernel="cubic")  # type: ignore[arg-type]
