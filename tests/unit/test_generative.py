"""Feature-generating GZSL: the math of individual models and of the shared pieces on tiny
synthetic data -- the WGAN-GP penalty against finite differences, the f-CLSWGAN iteration and
its frozen seen-class classifier, CADA-VAE's latent alignment and unseen spread, the
second-stage helpers and the plots. Models are selected by a capability (a module function, a
constructor parameter, a method), so a copy of a model under a new name is tested too. The
contracts every generator shares are in ``test_family_generative.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule
from conftest import tiny_trainer as trainer
from families import (
    build_tiny,
    generative_models,
    model_class,
    model_module,
    tiny_params,
    with_class,
    with_module_attr,
    with_params,
)
from torch.func import functional_call

from zsl.data.types import ZSLBatch
from zsl.models import get_model_class
from zsl.models.generative.cadavae import CADAVAE, gaussian_kl, gaussian_w2, within_class_std
from zsl.models.generative.clswgan import CLSWGAN
from zsl.models.generative.losses import gradient_penalty, linear_warmup
from zsl.models.generative.nets import (
    FeatureCritic,
    FeatureGenerator,
    default_noise_dim,
    ema_update,
)
from zsl.models.generative.second_stage import (
    SoftmaxFit,
    fit_softmax_classifier,
    principal_basis,
    within_class_residuals,
)
from zsl.models.generative.sharing import shared_fit
from zsl.reporting.plots import plot_feature_projection, plot_seen_unseen_curve

GENERATORS = generative_models()
#: models trained by the f-CLSWGAN iteration (their module defines it)
CLSWGAN_ITERATION = with_module_attr(GENERATORS, "clswgan_iteration")
#: models whose generator loss includes a pre-trained, frozen seen-class classifier
PRETRAINED_CLASSIFIER = with_params(GENERATORS, "pretrain_epochs", "pretrain_lr")
#: models with a feature VAE and an attribute VAE aligned in a shared latent space
ALIGNED_VAES = with_class(GENERATORS, lambda cls: hasattr(cls, "vae_losses"))
UNSEEN_SPREAD = with_params(GENERATORS, "unseen_spread")

pytestmark = pytest.mark.usefixtures("one_thread")
datamodule = tiny_datamodule
build = build_tiny


def test_capabilities_find_the_models() -> None:
    assert "clswgan" in CLSWGAN_ITERATION and "clswgan" in PRETRAINED_CLASSIFIER
    assert "cadavae" in ALIGNED_VAES and "cadavae" in UNSEEN_SPREAD


# ------------------------------------------------------------------- WGAN-GP penalty


def tiny_critic() -> FeatureCritic:
    torch.manual_seed(0)
    critic = FeatureCritic(feature_dim=3, n_attributes=2, hidden=5).double()
    for p in critic.parameters():  # larger weights than the N(0, 0.02) init: a real test
        torch.nn.init.normal_(p, 0.0, 0.7)
    return critic


def test_gradient_penalty_matches_finite_differences() -> None:
    critic = tiny_critic()
    gen = torch.Generator().manual_seed(1)
    real, fake = (
        torch.rand(4, 3, generator=gen, dtype=torch.float64),
        torch.rand(4, 3, generator=gen, dtype=torch.float64),
    )
    sem = torch.rand(4, 2, generator=gen, dtype=torch.float64)
    alpha = torch.rand(4, 1, generator=gen, dtype=torch.float64)
    got = gradient_penalty(critic, real, fake, sem, alpha)

    eps = 1e-6
    x_hat = alpha * real + (1 - alpha) * fake
    norms = []
    with torch.no_grad():
        for i in range(4):
            grad = torch.zeros(3, dtype=torch.float64)
            for j in range(3):
                step = torch.zeros(3, dtype=torch.float64)
                step[j] = eps
                up = critic((x_hat[i] + step)[None], sem[i][None])
                down = critic((x_hat[i] - step)[None], sem[i][None])
                grad[j] = (up - down).item() / (2 * eps)
            norms.append(grad.norm())
    expected = torch.stack([(n - 1) ** 2 for n in norms]).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-9)
    assert got.item() > 1e-3  # not trivially zero


def test_gradient_penalty_is_differentiable_in_the_critic_weights() -> None:
    """create_graph=True: d GP / d weights is exact (checked by gradcheck, double precision)."""
    critic = tiny_critic()
    gen = torch.Generator().manual_seed(2)
    real, fake = (
        torch.rand(3, 3, generator=gen, dtype=torch.float64),
        torch.rand(3, 3, generator=gen, dtype=torch.float64),
    )
    sem, alpha = (
        torch.rand(3, 2, generator=gen, dtype=torch.float64),
        torch.rand(3, 1, generator=gen, dtype=torch.float64),
    )
    params = {k: v.detach() for k, v in critic.named_parameters()}
    first = "net.0.weight"

    def penalty(w: torch.Tensor) -> torch.Tensor:
        class Wrapped(torch.nn.Module):
            def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
                return functional_call(critic, {**params, first: w}, (x, a))

        return gradient_penalty(Wrapped(), real, fake, sem, alpha)

    w = params[first].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(penalty, (w,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------- generator learning


def class_means(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.stack([x[y == c].mean(0) for c in classes])


@pytest.mark.parametrize("name", CLSWGAN_ITERATION)
def test_clswgan_overfits_a_tiny_dataset(tiny, name: str) -> None:
    """600 f-CLSWGAN iterations on 64 images of 8 classes: the classification loss goes down
    and the synthetic class means approach the real ones."""
    torch.manual_seed(0)
    dm = datamodule(tiny)
    x, y = dm.train_x, dm.train_y
    seen = dm.class_space.seen_ids
    local = torch.searchsorted(seen, y)
    sem = dm.class_space.semantics
    gen_net = FeatureGenerator(sem.shape[1], sem.shape[1], 64, x.shape[1])
    critic = FeatureCritic(x.shape[1], sem.shape[1], 64)
    gen_net.init_output_bias(x.mean(0))
    w, b = fit_softmax_classifier(x, local, seen.numel(), 30, 0.1, 64)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=3e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=3e-3, betas=(0.5, 0.999))
    real_means = class_means(x, local, list(range(seen.numel())))

    def mean_error() -> float:
        with torch.no_grad():
            fake, rows = gen_net.sample_rows(sem[seen], 50, torch.Generator().manual_seed(0))
        return (
            (class_means(fake, rows, list(range(seen.numel()))) - real_means)
            .norm(dim=1)
            .mean()
            .item()
        )

    before = mean_error()
    clswgan_iteration = model_module(name).clswgan_iteration
    history = [
        clswgan_iteration(
            gen_net,
            critic,
            opt_g,
            opt_d,
            lambda f: f @ w + b,
            x,
            sem[y],
            local,
            n_critic=5,
            gp_weight=10.0,
            cls_weight=0.1,
        )
        for _ in range(800)
    ]
    after = mean_error()
    first = torch.stack([h["cls_loss"] for h in history[:50]]).mean()
    last = torch.stack([h["cls_loss"] for h in history[-50:]]).mean()
    assert last < 0.8 * first, (first, last)
    assert after < 0.5 * before, (before, after)  # before: every class at the mean feature


@pytest.mark.parametrize("name", PRETRAINED_CLASSIFIER)
def test_seen_classifier_is_pretrained_and_frozen(tiny, tmp_path: Path, name: str) -> None:
    dm = datamodule(tiny)
    model = build(name, dm)
    tr = trainer(tmp_path, 1)
    tr.fit(model, dm)
    assert bool(model.generator_initialised)
    logits = model.seen_logits(dm.train_x)
    assert (logits.argmax(1) == model.to_local(dm.train_y)).float().mean() > 0.9
    assert not any(p.requires_grad for p in model.seen_classifier.parameters())
    in_optim = {id(p) for opt in tr.optimizers for g in opt.param_groups for p in g["params"]}
    assert not in_optim & {id(p) for p in model.seen_classifier.parameters()}
    assert in_optim == {id(p) for p in [*model.generator.parameters(), *model.critic.parameters()]}


def test_ema_update_is_the_moving_average() -> None:
    torch.manual_seed(0)
    average, model = FeatureGenerator(3, 2, 5, 4), FeatureGenerator(3, 2, 5, 4)
    before = [p.clone() for p in average.parameters()]
    ema_update(average, model, 0.9)
    for avg, old, cur in zip(average.parameters(), before, model.parameters()):
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * cur)
    with pytest.raises(ValueError, match="averaged tensor"):
        ema_update(average, FeatureGenerator(3, 2, 6, 4), 0.9)


@pytest.mark.parametrize("name", ALIGNED_VAES)
def test_cadavae_aligns_latents_on_a_tiny_dataset(tiny, tmp_path: Path, name: str) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny, batch_size=16)
    model = build(name, dm)
    x = dm.train_x * 1.0
    sem = model.semantics[dm.train_y]
    with torch.no_grad():
        before = model.vae_losses(x * model.feature_scale, sem)
    trainer(tmp_path, 150).fit(model, dm)
    with torch.no_grad():
        after = model.vae_losses(x * model.feature_scale, sem)
    assert model.feature_scale.item() == pytest.approx(
        1.0 / dm.train_x.abs().mean().item(), rel=1e-5
    )
    assert after["recon"] < 0.7 * before["recon"]
    assert after["cross"] < 0.7 * before["cross"]
    # cross-modal generation lands near the right class means
    seen = dm.class_space.seen_ids.tolist()
    with torch.no_grad():
        fake = model.generate_features(model.seen_semantics(), 30, torch.Generator().manual_seed(0))
    fake_means = class_means(fake, model.seen_ids.repeat_interleave(30), seen)
    real = class_means(dm.train_x, dm.train_y, seen)
    dists = torch.cdist(fake_means, real)
    assert (dists.argmin(dim=1) == torch.arange(len(seen))).float().mean() >= 0.5
    assert dists.diag().mean() < 0.6 * dists.mean()


def test_within_class_std_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([3, 3, 3, 7, 7, 9, 9, 9, 9])
    x = rng.normal(size=(9, 4)) + labels[:, None]
    centred = x.copy()
    for c in np.unique(labels):
        centred[labels == c] -= x[labels == c].mean(axis=0)
    expected = np.sqrt((centred**2).mean(axis=0))
    got = within_class_std(torch.from_numpy(x), torch.from_numpy(labels))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", UNSEEN_SPREAD)
def test_unseen_spread_widens_synthetic_latents(tiny, name: str) -> None:
    dm = datamodule(tiny)
    model = build(name, dm, unseen_spread=1.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, y = dm.train_x, dm.train_y
        model.embed_seen(x, y, gen)  # measures the seen classes' within-class spread
        std = model.latent_within_std.clone()
        means = model.feature_encoder(x * model.feature_scale)[0]
        unseen = model.unseen_semantics()[:2]
        model.hparams.unseen_spread = 0.0
        tight = model.synthesize(unseen, 4000, torch.Generator().manual_seed(1))
        model.hparams.unseen_spread = 1.0
        wide = model.synthesize(unseen, 4000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(std, within_class_std(means, y))
    assert bool((std > 0).all())
    labels = torch.arange(2).repeat_interleave(4000)
    # independent noise: the variances add up (per dimension, up to sampling error)
    expected = within_class_std(tight, labels) ** 2 + std**2
    torch.testing.assert_close(within_class_std(wide, labels) ** 2, expected, rtol=0.1, atol=1e-6)
    with pytest.raises(ValueError, match="unseen_spread"):
        build(name, dm, unseen_spread=-1.0)


# ------------------------------------------------------------------- second stage


def test_fit_softmax_classifier_max_steps_counts_updates() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen) + torch.arange(3).repeat_interleave(30)[:, None]
    y = torch.arange(3).repeat_interleave(30)

    def fit(epochs: int, max_steps: int | None) -> torch.Tensor:
        w, b = fit_softmax_classifier(
            x,
            y,
            3,
            epochs,
            0.1,
            16,
            generator=torch.Generator().manual_seed(1),
            max_steps=max_steps,
        )
        return x @ w + b

    by_epochs = fit(3, None)  # 3 passes of ceil(90 / 16) = 6 updates
    torch.testing.assert_close(fit(99, 18), by_epochs)  # the same 18 updates, epochs ignored
    assert not torch.allclose(fit(99, 17), by_epochs)
    assert not torch.allclose(fit(99, 19), by_epochs)
    for name in GENERATORS:  # every generator's second stage refuses it
        with pytest.raises(ValueError, match="second_stage.cls_steps must be positive"):
            model_class(name)(4, 3, 5, **tiny_params(name, cls_steps=0))


def test_a_softmax_fit_continues_as_one_longer_fit() -> None:
    """SoftmaxFit's updates do not depend on how many are taken: 10 then 13 updates (across a
    pass boundary of ceil(90 / 16) = 6) are the 23 of one fit, and a copy continues
    independently of the fit it was copied from."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen) + torch.arange(3).repeat_interleave(30)[:, None]
    y = torch.arange(3).repeat_interleave(30)

    def new_fit() -> SoftmaxFit:
        return SoftmaxFit(x, y, 3, 0.1, 16, 0.01, torch.Generator().manual_seed(1))

    whole = new_fit()
    whole.run(23)
    parts = new_fit()
    parts.run(10)
    assert parts.generator is not None
    state = parts.generator.get_state()
    branch = parts.copy(torch.Generator().manual_seed(5))
    assert branch.generator is not None
    branch.generator.set_state(state)
    parts.run(13)
    branch.run(13)
    for fit in (parts, branch):
        assert fit.done == 23
        assert all(torch.equal(a, b) for a, b in zip(fit.result(), whole.result(), strict=True))
    w, b = fit_softmax_classifier(x, y, 3, 99, 0.1, 16, 0.01, torch.Generator().manual_seed(1), 23)
    assert torch.equal(w, whole.result()[0]) and torch.equal(b, whole.result()[1])
    shorter = new_fit()
    shorter.run(22)
    assert not torch.equal(shorter.result()[0], whole.result()[0])


def test_points_sharing_a_classifier_fit_get_their_own_in_any_order() -> None:
    """shared_fit (the classifiers of a shared fit's points that differ only in their number
    of updates): longer, equal and shorter points in any order each get the classifier and
    the generator state of their own separate fit, from one fit, and nothing is left behind."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen) + torch.arange(3).repeat_interleave(30)[:, None]
    y = torch.arange(3).repeat_interleave(30)
    counts = [9, 4, 13, 4]  # a longer one first, then a shorter, a longer, an equal one
    memo: dict[str, Any] = {}
    fitted: set[int] = set()
    started = []
    for i, steps in enumerate(counts):
        point_gen = torch.Generator().manual_seed(1)
        fitted.add(i)

        def new_fit(g: torch.Generator = point_gen) -> SoftmaxFit:
            started.append(1)
            return SoftmaxFit(x, y, 3, 0.1, 16, 0.01, g)

        def pending() -> list[int]:
            return [c for j, c in enumerate(counts) if j not in fitted]

        w, b = shared_fit(memo, "classifier", steps, point_gen, new_fit, pending)
        alone = SoftmaxFit(x, y, 3, 0.1, 16, 0.01, torch.Generator().manual_seed(1))
        alone.run(steps)
        assert torch.equal(w, alone.result()[0]) and torch.equal(b, alone.result()[1])
        assert alone.generator is not None
        assert torch.equal(point_gen.get_state(), alone.generator.get_state())
    assert len(started) == 1 and memo == {}


def test_within_class_residuals_match_numpy() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([7, 3, 7, 9, 3, 3, 9])
    x = rng.normal(size=(7, 4)) + labels[:, None]
    expected = x.copy()
    for c in np.unique(labels):
        expected[labels == c] -= x[labels == c].mean(axis=0)
    got = within_class_residuals(torch.from_numpy(x), torch.from_numpy(labels))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fit_softmax_classifier_is_scale_invariant() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen) + torch.arange(3).repeat_interleave(30)[:, None] * 2.0
    y = torch.arange(3).repeat_interleave(30)
    w1, b1 = fit_softmax_classifier(
        x, y, 3, 20, 0.1, 16, generator=torch.Generator().manual_seed(1)
    )
    w2, b2 = fit_softmax_classifier(
        x * 100, y, 3, 20, 0.1, 16, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(x @ w1 + b1, (x * 100) @ w2 + b2, rtol=1e-4, atol=1e-4)
    assert ((x @ w1 + b1).argmax(1) == y).float().mean() > 0.9


def test_principal_basis_finds_the_high_variance_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=gen) * torch.tensor([0.1, 5.0, 0.1, 2.0, 0.1, 0.1]) + 3.0
    mean, basis = principal_basis(x, 2)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-5, rtol=0)
    # leading direction = axis 1 (std 5), second = axis 3 (std 2), up to sign
    assert basis[:, 0].abs().argmax() == 1 and basis[1, 0].abs() > 0.99
    assert basis[:, 1].abs().argmax() == 3 and basis[3, 1].abs() > 0.99
    with pytest.raises(ValueError, match="cls_pca=7"):
        principal_basis(x, 7)


def test_randomised_principal_basis_holds_the_top_variance_and_repeats() -> None:
    """k small against the dimension (4 (k + 64) <= E): the randomised subspace iteration, whose
    directions hold (nearly) the variance of the exact top k, the same on every call."""
    gen = torch.Generator().manual_seed(0)
    spectrum = torch.logspace(0, -2, 600)  # a decaying spectrum, as CNN features have
    x = torch.randn(2000, 600, generator=gen) * spectrum + 1.0
    k = 40  # 4 * (40 + 64) = 416 <= 600
    mean, basis = principal_basis(x, k)
    centred = x - mean
    _, exact = torch.linalg.eigh(centred.T @ centred)
    held = centred.matmul(basis).pow(2).sum() / centred.matmul(exact[:, -k:]).pow(2).sum()
    assert held > 0.999
    torch.testing.assert_close(basis.T @ basis, torch.eye(k), atol=1e-5, rtol=0)
    variances = centred.matmul(basis).pow(2).sum(0)
    assert bool((variances[:-1] >= variances[1:] - 1e-3).all())  # descending
    assert torch.equal(principal_basis(x, k)[1], basis)


# ------------------------------------------------------------------------ plots


def test_plots_write_pngs(tmp_path: Path) -> None:
    gammas = torch.linspace(-1, 1, 11)
    u = torch.linspace(0, 80, 11)
    s = torch.linspace(70, 0, 11)
    path = plot_seen_unseen_curve(gammas, u, s, tmp_path / "curve.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000
    chosen = (float(gammas[5]), float(u[5]), float(s[5]))  # the validation-chosen point
    path = plot_seen_unseen_curve(gammas, u, s, tmp_path / "chosen.png", chosen=chosen)
    assert path.is_file() and path.stat().st_size > 1000
    gen = torch.Generator().manual_seed(0)
    real, synth = torch.randn(30, 8, generator=gen), torch.randn(30, 8, generator=gen)
    labels = torch.arange(3).repeat_interleave(10)
    path = plot_feature_projection(
        real, labels, synth, labels, tmp_path / "proj.png", ["a", "b", "c"]
    )
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_seen_unseen_curve(gammas, u[:3], s, tmp_path / "bad.png")


def test_loss_helpers_match_closed_forms() -> None:
    gen = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    lv1, lv2 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    p = torch.distributions.Normal(mu1, torch.exp(0.5 * lv1))
    q = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
    torch.testing.assert_close(
        gaussian_kl(mu1, lv1), torch.distributions.kl_divergence(p, q).sum(1)
    )
    s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
    w2 = torch.sqrt(((mu1 - mu2) ** 2).sum(1) + ((s1 - s2) ** 2).sum(1))
    torch.testing.assert_close(gaussian_w2(mu1, lv1, mu2, lv2), w2)
    assert linear_warmup(5, 6, 22) == 0.0 and linear_warmup(14, 6, 22) == 0.5
    assert linear_warmup(30, 6, 22) == 1.0


def test_cadavae_leaves_out_the_cross_term_exactly_while_its_weight_is_zero(tiny) -> None:
    """Before the cross-reconstruction warm-up starts, training_loss skips the term (a second
    feature-decoder pass): the loss and every gradient are those of the full sum with the
    term at weight 0, bit for bit."""
    dm = datamodule(tiny, batch_size=16)
    model = build("cadavae", dm)
    x, labels = dm.train_x[:16], dm.train_y[:16]
    local = torch.searchsorted(model.seen_ids, labels)
    seen = model.seen_semantics()
    w = model.loss_weights(0)
    assert w["cross"] == 0.0 and w["beta"] == 0.0

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    torch.manual_seed(3)
    terms = model.vae_losses(x * model.feature_scale, seen[local] * model.semantic_scale)
    full = terms["recon"] + w["beta"] * terms["kl"] + w["cross"] * terms["cross"]
    full = full + w["distance"] * terms["distance"]
    torch.manual_seed(3)
    calls: list[int] = []
    hook = model.feature_decoder.register_forward_hook(lambda *_: calls.append(1))
    skipped = model.training_loss(ZSLBatch(x, labels), local, seen)
    hook.remove()
    assert len(calls) == 1  # the cross term's decoder pass is left out
    assert torch.equal(full.detach(), skipped.detach())
    expected, got = gradients(full), gradients(skipped)
    assert len(expected) == len(got) > 0
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_cadavae_steps_transfer_keeps_its_warmups_in_updates(tiny) -> None:
    """Under ``search.transfer: steps`` the trainval fit's epochs hold 1 / ratio times the
    updates: CADA-VAE's rescaled warm-ups reach at epoch e the weights the selected fit had
    at epoch e / ratio (the same update), and nothing else changes; other models keep their
    parameters."""
    dm = datamodule(tiny, batch_size=16)
    params = {"warmup_scale": 0.3, "unseen_spread": 1.0, "latent_dim": 4}
    ratio = 30 / 56  # CUB VGG: validation-protocol / trainval batches per epoch
    moved = CADAVAE.steps_transfer_params(params, ratio)
    assert moved == {**params, "warmup_scale": pytest.approx(0.3 * ratio)}
    assert params["warmup_scale"] == 0.3  # the selected parameters are left alone
    selected = build("cadavae", dm, warmup_scale=0.3)
    final = build("cadavae", dm, warmup_scale=moved["warmup_scale"])
    for epoch in (2, 5, 8, 11, 14):
        before, after = selected.loss_weights(epoch / ratio), final.loss_weights(epoch)
        assert after == pytest.approx(before), epoch
    # sooner per epoch
    assert final.loss_weights(8)["cross"] > selected.loss_weights(8)["cross"] > 0
    assert CLSWGAN.steps_transfer_params({"gen_ema": 0.995}, ratio) == {"gen_ema": 0.995}


def test_model_classes_are_registered() -> None:
    assert get_model_class("clswgan") is CLSWGAN
    assert get_model_class("cadavae") is CADAVAE


def test_generator_output_adapts_to_the_sign_of_the_features() -> None:
    """GeneratorNet.adapt: non-negative features keep the paper's ReLU (bias at the mean
    feature); signed ones get a linear output with standardised targets whose first outputs
    sit at the feature mean; the choice round-trips through a state dict; a state dict written
    before the output adapted loads as a ReLU generator; a ReLU generator refuses later signed
    features; the default noise size is the attribute count capped at the feature size."""
    torch.manual_seed(0)  # the networks' initialisation, whatever ran before in this process
    gen = torch.Generator().manual_seed(0)
    signed = torch.randn(200, 12, generator=gen) * torch.linspace(0.5, 2.0, 12) + 0.3
    net = FeatureGenerator(5, 5, 16, 12)
    choice = net.adapt(signed, "test")
    assert choice["features"] == "signed" and choice["output"] == "linear, standardised targets"
    torch.testing.assert_close(net.output_shift, signed.mean(0))
    torch.testing.assert_close(net.output_scale, signed.std(0))
    noise, sem = torch.randn(400, 5, generator=gen), torch.rand(400, 5, generator=gen)
    with torch.no_grad():
        start = net(noise, sem)
        assert float((start.mean(0) - signed.mean(0)).abs().max()) < 0.05  # at the mean
        net.output.weight.normal_(0.0, 0.5, generator=gen)  # as if trained
        out = net(noise, sem)
    assert bool((out < 0).any())  # a ReLU could not
    copy = FeatureGenerator(5, 5, 16, 12)
    copy.load_state_dict(net.state_dict())
    assert copy.activation == "linear"
    with torch.no_grad():
        torch.testing.assert_close(copy(noise, sem), out)
    old = {k: v for k, v in net.state_dict().items() if not k.startswith("output_")}
    legacy = FeatureGenerator(5, 5, 16, 12)
    legacy.load_state_dict(old)  # an earlier version's checkpoint
    assert legacy.activation == "relu" and not legacy.unit_norm
    relu = FeatureGenerator(5, 5, 16, 12)
    positive = signed.abs()
    assert relu.adapt(positive, "test")["output"] == "relu"
    torch.testing.assert_close(relu.output.bias, positive.mean(0))
    with pytest.raises(ValueError, match="trained with a ReLU output"):
        relu.adapt(signed, "test", first=False)
    assert default_noise_dim(None, 312, 64) == 64
    assert default_noise_dim(None, 312, 4096) == 312
    assert default_noise_dim(20, 312, 64) == 20
