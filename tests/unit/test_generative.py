"""Feature-generating GZSL (f-CLSWGAN, CADA-VAE) on tiny synthetic data: the WGAN-GP penalty
against finite differences, seen-only generator training data, overfitting a tiny dataset,
checkpoint round trips of ``zsl.cli.generate``, the second-stage classifier and short Lightning
fits + tests of both models."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule
from conftest import tiny_trainer as trainer
from omegaconf import OmegaConf
from torch.func import functional_call

from zsl.cli.generate import generate, load_generator, main
from zsl.conf import CONFIG_DIR as CONF_DIR
from zsl.data.datamodule import ZSLDataModule
from zsl.data.types import ZSLBatch
from zsl.models import get_model_class
from zsl.models.base import LeakageError
from zsl.models.generative.base import GenerativeZSL, linear_warmup
from zsl.models.generative.cadavae import CADAVAE, gaussian_kl, gaussian_w2, within_class_std
from zsl.models.generative.clswgan import CLSWGAN, clswgan_iteration, gradient_penalty
from zsl.models.generative.nets import FeatureCritic, FeatureGenerator, ema_update
from zsl.models.generative.second_stage import (
    SecondStage,
    fit_softmax_classifier,
    principal_basis,
    within_class_residuals,
)
from zsl.reporting.plots import plot_feature_projection, plot_seen_unseen_curve
from zsl.run.callbacks import EvaluationRecorder, ProjectionPlot

CONFIG_DIR = CONF_DIR / "model"

SMALL = {
    "clswgan": dict(
        gen_hidden=32,
        critic_hidden=32,
        lr=1e-3,
        pretrain_epochs=20,
        pretrain_lr=0.1,
        second_stage=dict(n_synth=20, cls_epochs=10, cls_lr=0.1, cls_batch_size=64),
    ),
    "cadavae": dict(
        feature_hidden=(32, 32),
        attribute_hidden=(16, 16),
        latent_dim=4,
        lr=3e-3,
        warmup_scale=1.0,
        n_seen_per_class=10,
        second_stage=dict(n_synth=20, cls_epochs=10, cls_lr=0.1, cls_batch_size=64),
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")
datamodule = tiny_datamodule


def build(name: str, dm: ZSLDataModule, **overrides) -> GenerativeZSL:
    """A small model bound to ``dm``; second-stage options (``n_synth``, ``cls_pca``, ...)
    among ``overrides`` go into its ``second_stage`` settings."""
    space = dm.class_space
    params = {**SMALL[name]}
    stage = dict(params.pop("second_stage"))
    for key in list(overrides):
        if key in SecondStage.field_names():
            stage[key] = overrides.pop(key)
    model = get_model_class(name)(
        space.feature_dim,
        space.n_attributes,
        space.n_classes,
        **params,
        **overrides,
        second_stage=stage,
    )
    model.bind(dm)
    return model


def restage(model: GenerativeZSL, **options) -> None:
    """Change second-stage options of a built model (the settings are a frozen dataclass)."""
    model.second_stage = dataclasses.replace(model.second_stage, **options)


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


# -------------------------------------------------------------- seen-only training data


@pytest.mark.parametrize("protocol", ["val", "test"])
def test_generator_loader_never_yields_unseen_features(tiny, protocol: str) -> None:
    dm = datamodule(tiny, protocol, batch_size=7)
    model = build("clswgan", dm)
    seen = set(dm.class_space.seen_ids.tolist())
    unseen = set(dm.class_space.unseen_ids.tolist())
    labels = []
    for batch in dm.train_dataloader():  # one full epoch
        assert isinstance(batch, ZSLBatch)
        labels.extend(batch.labels.tolist())
        model.to_local(batch.labels)  # the model's own guard does not fire either
    assert len(labels) == dm.train_y.numel()
    assert set(labels) <= seen and not set(labels) & unseen
    assert set(labels) == seen  # every seen class is trained on


def test_training_step_refuses_unseen_labels(tiny) -> None:
    dm = datamodule(tiny)
    model = build("cadavae", dm)
    bad = ZSLBatch(dm.eval_x[:4], dm.class_space.unseen_ids[:1].repeat(4))
    with pytest.raises(LeakageError):
        model.training_step(bad, 0)


# ----------------------------------------------------------------- generator learning


def class_means(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.stack([x[y == c].mean(0) for c in classes])


def test_clswgan_overfits_a_tiny_dataset(tiny) -> None:
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
            fake, rows = gen_net.sample(sem[seen], 50, torch.Generator().manual_seed(0))
        return (
            (class_means(fake, rows, list(range(seen.numel()))) - real_means)
            .norm(dim=1)
            .mean()
            .item()
        )

    before = mean_error()
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


def test_clswgan_seen_classifier_is_pretrained_and_frozen(tiny, tmp_path: Path) -> None:
    dm = datamodule(tiny)
    model = build("clswgan", dm)
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


class GeneratorTrace(pl.Callback):
    """The generator's weights when training starts and after every training batch."""

    def __init__(self) -> None:
        self.states: list[list[torch.Tensor]] = []

    def record(self, module: CLSWGAN) -> None:
        self.states.append([p.detach().clone() for p in module.generator.parameters()])

    def on_train_start(self, trainer: pl.Trainer, pl_module: CLSWGAN) -> None:
        self.record(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: CLSWGAN, *args) -> None:
        self.record(pl_module)


def test_clswgan_gen_ema_averages_every_generator_step(tiny, tmp_path: Path) -> None:
    """gen_ema: the average starts at the initialised generator, follows
    avg <- d * avg + (1 - d) * generator after every step, stays out of the optimizers, and is
    what synthesises features."""
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build("clswgan", dm, gen_ema=0.7)
    trace = GeneratorTrace()
    tr = trainer(tmp_path, 2, callbacks=[trace])
    tr.fit(model, dm)
    assert len(trace.states) == 1 + 2 * len(dm.train_dataloader())
    expected = trace.states[0]
    for state in trace.states[1:]:
        expected = [0.7 * e + 0.3 * s for e, s in zip(expected, state)]
    assert model.generator_ema is not None
    for avg, exp, cur in zip(model.generator_ema.parameters(), expected, trace.states[-1]):
        torch.testing.assert_close(avg, exp)
        assert not torch.allclose(avg, cur)
        assert not avg.requires_grad
    in_optim = {id(p) for opt in tr.optimizers for g in opt.param_groups for p in g["params"]}
    assert not in_optim & {id(p) for p in model.generator_ema.parameters()}

    sem = dm.class_space.semantics[:2]
    averaged = model.synthesize(sem, 4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        averaged, model.generator_ema.sample(sem, 4, torch.Generator().manual_seed(1))[0]
    )
    assert not torch.allclose(
        averaged, model.generator.sample(sem, 4, torch.Generator().manual_seed(1))[0]
    )
    torch.testing.assert_close(
        model.generate_features(sem, 4, torch.Generator().manual_seed(1)), averaged
    )
    assert "generator_ema.output.weight" in model.state_dict()
    assert (
        getattr(build("clswgan", dm), "generator_ema", None) is None
    )  # null: the paper's last iterate


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_clswgan_rejects_a_bad_gen_ema(value: float) -> None:
    with pytest.raises(ValueError, match="gen_ema"):
        CLSWGAN(8, 4, 6, gen_hidden=8, critic_hidden=8, gen_ema=value)


def test_cadavae_aligns_latents_on_a_tiny_dataset(tiny, tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny, batch_size=16)
    model = build("cadavae", dm)
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


def test_cadavae_unseen_spread_widens_synthetic_latents(tiny) -> None:
    dm = datamodule(tiny)
    model = build("cadavae", dm, unseen_spread=1.0)
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
        build("cadavae", dm, unseen_spread=-1.0)


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
    with pytest.raises(ValueError, match="second_stage.cls_steps must be positive"):
        CADAVAE(4, 3, 5, second_stage={"cls_steps": 0})


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_synth_ratio_fixes_the_unseen_share(tiny, name: str) -> None:
    dm = datamodule(tiny)
    n_unseen = dm.class_space.unseen_ids.numel()
    assert build(name, dm, n_synth=7).n_synth_per_class(1000) == 7  # the papers' rule
    model = build(name, dm, n_synth=7, synth_ratio=0.5)
    assert model.n_synth_per_class(40 * n_unseen) == 20
    # twice the real seen examples (e.g. more seen classes) -> twice the synthetic ones
    assert model.n_synth_per_class(80 * n_unseen) == 40
    assert model.n_synth_per_class(1) == 1
    with pytest.raises(ValueError, match="synth_ratio"):
        build(name, dm, synth_ratio=0.0)


def test_within_class_residuals_match_numpy() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([7, 3, 7, 9, 3, 3, 9])
    x = rng.normal(size=(7, 4)) + labels[:, None]
    expected = x.copy()
    for c in np.unique(labels):
        expected[labels == c] -= x[labels == c].mean(axis=0)
    got = within_class_residuals(torch.from_numpy(x), torch.from_numpy(labels))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_synth_residual_adds_real_seen_deviations(tiny) -> None:
    """Every synthetic example is the generated feature + k x one real seen residual (clamped
    at 0 for non-negative features), and the synthetic classes then vary more."""
    dm = datamodule(tiny)
    model = build("clswgan", dm)
    x, y = model.seen_training_data()
    x = x.abs()  # non-negative, as CNN features are
    residuals = within_class_residuals(x, y)
    k = 0.5
    restage(model, synth_residual=k)
    with torch.no_grad():
        plain = model.generate_features(
            model.unseen_semantics(), 300, torch.Generator().manual_seed(3)
        )
        got = model.synthesize_unseen(300, torch.Generator().manual_seed(3), residuals, True)
    # the same generator draws come first, then one residual index per example
    pick = torch.randint(
        0, residuals.shape[0], (plain.shape[0],), generator=_after(plain, model, 3)
    )
    torch.testing.assert_close(got, (plain + k * residuals[pick]).clamp_min(0.0))
    n_unseen = model.unseen_ids.numel()
    labels = torch.arange(n_unseen).repeat_interleave(300)
    assert bool((within_class_std(got, labels) > within_class_std(plain, labels)).all())
    restage(model, synth_residual=None)
    with torch.no_grad():
        torch.testing.assert_close(
            model.synthesize_unseen(300, torch.Generator().manual_seed(3)), plain
        )
    with pytest.raises(ValueError, match="synth_residual must be positive"):
        build("clswgan", dm, synth_residual=0.0)
    with pytest.raises(ValueError, match="synth_residual"):
        build("cadavae", dm, synth_residual=1.0)


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_synth_seen_adds_synthetic_examples_of_every_seen_class(
    tiny, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``synth_seen = r`` the classifier's data hold, after the real seen and synthetic
    unseen examples, ``round(r * n_real / n_seen)`` synthetic examples of each seen class: the
    generator's examples for the seen semantics, drawn after the unseen ones."""
    import zsl.models.generative.base as base

    dm = datamodule(tiny)
    model = build(name, dm, n_synth=5)
    seen, unseen = model.seen_ids, model.unseen_ids
    assert model.n_synth_seen_per_class(1000) == 0  # off: the papers' classifier
    restage(model, synth_seen=0.5)
    assert model.n_synth_seen_per_class(40 * seen.numel()) == 20
    assert model.n_synth_seen_per_class(1) == 1
    captured: dict[str, torch.Tensor] = {}

    def capture(x, y, n_out, *args, **kwargs):
        captured["x"], captured["y"] = x.clone(), y.clone()
        return torch.zeros(x.shape[1], n_out), torch.zeros(n_out)

    monkeypatch.setattr(base, "fit_softmax_classifier", capture)
    x, y = model.seen_training_data()
    real, real_y = model.embed_seen(x, y, torch.Generator().manual_seed(4))
    model.train_classifier(real, real_y, torch.Generator().manual_seed(4))
    n_real = real.shape[0]
    per_seen = model.n_synth_seen_per_class(n_real)
    universe = torch.nonzero(model.universe_mask()).squeeze(1)
    labels = universe[captured["y"]]
    expected = torch.cat([real_y, unseen.repeat_interleave(5), seen.repeat_interleave(per_seen)])
    torch.testing.assert_close(labels, expected)
    gen = torch.Generator().manual_seed(4)
    model.eval()
    with torch.no_grad():
        synth_unseen = model.synthesize_unseen(5, gen)
        synth_seen = model.synthesize_classes(model.seen_semantics(), per_seen, gen)
    torch.testing.assert_close(captured["x"][n_real:], torch.cat([synth_unseen, synth_seen]))
    with pytest.raises(ValueError, match="synth_seen must be positive"):
        build(name, dm, synth_seen=0.0)


def _after(plain: torch.Tensor, model: GenerativeZSL, seed: int) -> torch.Generator:
    """An RNG seeded ``seed`` that has made the draws of ``generate_features`` (as
    :meth:`GenerativeZSL.synthesize_unseen` does before drawing residual rows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        again = model.generate_features(model.unseen_semantics(), 300, gen)
    torch.testing.assert_close(again, plain)
    return gen


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


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_second_stage_classifier_covers_unseen_classes(tiny, tmp_path: Path, name: str) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm)
    trainer(tmp_path, 3).fit(model, dm)
    with pytest.raises(RuntimeError, match="on_eval_start"):
        model.scores(dm.eval_x, model.semantics)
    restage(model, synth_ratio=2.0)
    counts: list[int] = []
    synthesize = model.synthesize
    model.synthesize = lambda sem, n, gen: counts.append(n) or synthesize(sem, n, gen)  # type: ignore
    model.fit_classifier()
    del model.synthesize
    n_real = model.embed_seen(dm.train_x, dm.train_y, torch.Generator())[1].numel()
    assert counts == [model.n_synth_per_class(n_real)]
    assert counts[0] == max(1, round(2.0 * n_real / dm.class_space.unseen_ids.numel()))
    weight, bias, universe = model._classifier
    space = dm.class_space
    assert universe.tolist() == sorted(space.seen_ids.tolist() + space.unseen_ids.tolist())
    scores = model.scores(dm.eval_x, model.semantics)
    assert scores.shape == (dm.eval_x.shape[0], space.n_classes)
    inside = model.universe_mask()
    assert torch.isfinite(scores[:, inside]).all() and torch.isinf(scores[:, ~inside]).all()
    assert torch.allclose(scores[:, inside].exp().sum(1), torch.ones(len(scores)), atol=1e-5)
    # the classifier was trained on unseen examples: synthetic unseen examples go to them
    synth = model.synthesize(model.unseen_semantics(), 20, torch.Generator().manual_seed(5))
    logits = synth @ weight + bias
    predicted = universe[logits.argmax(1)]
    assert torch.isin(predicted, space.unseen_ids).float().mean() > 0.8
    # and it is not part of the checkpointed state
    assert not any("classifier" in k and "seen_classifier" not in k for k in model.state_dict())


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


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_cls_pca_restricts_the_classifier_to_the_real_seen_span(
    tiny, tmp_path: Path, name: str
) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm, cls_pca=2)
    trainer(tmp_path, 2).fit(model, dm)
    model.fit_classifier()
    weight, bias, universe = model._classifier
    real = model.embed_seen(dm.train_x, dm.train_y, model._eval_generator())[0]
    if name == "clswgan":  # the PCA of the (fixed) real features is computed once
        assert model._basis_cache is not None
        key = model._basis_cache[0]
        model.fit_classifier()
        assert model._basis_cache[0] == key
        weight, bias, _ = model._classifier
    basis = model._basis_cache[2]
    assert basis.shape == (real.shape[1], 2)
    # the folded weight lives in the span of the two principal directions: rank 2, and
    # moving an input orthogonally to that span changes no score
    assert torch.linalg.matrix_rank(weight) == 2
    torch.testing.assert_close(basis @ (basis.T @ weight), weight, atol=1e-5, rtol=1e-4)
    inputs = model.embed(dm.eval_x)
    other = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(3))
    other = other - (other @ basis) @ basis.T
    torch.testing.assert_close(inputs @ weight + bias, (inputs + other) @ weight + bias)
    with pytest.raises(ValueError, match="cls_pca"):
        build(name, dm, cls_pca=0)
    restage(model, cls_pca=real.shape[1] + 1)
    with pytest.raises(ValueError, match=f"cls_pca={real.shape[1] + 1}"):
        model.fit_classifier()


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_cls_pca_not_below_the_classifier_inputs_means_none(tiny, name: str) -> None:
    """A default ``cls_pca`` of 256 on smaller inputs is a rotation: the classifier takes them
    whole (the setting is adjusted before training, with a warning, and stored so)."""
    dm = datamodule(tiny)
    probe = build(name, dm)
    dim = probe.classifier_dim()
    with pytest.warns(UserWarning, match=f"cls_pca={dim} is not below"):
        model = build(name, dm, cls_pca=dim)
    assert model.second_stage.cls_pca is None
    assert model.hparams["second_stage"]["cls_pca"] is None


# ---------------------------------------------------------- Lightning fit + test, plots


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_tiny_lightning_fit_validate_and_test(tiny, tmp_path: Path, name: str) -> None:
    pl.seed_everything(0, verbose=False)
    dm_val = datamodule(tiny, "val")
    model = build(name, dm_val)
    recorder = EvaluationRecorder()
    trainer(tmp_path, 3, validate=True, callbacks=[recorder]).fit(model, dm_val)
    assert [h["epoch"] for h in recorder.history] == [1, 2, 3]
    assert all(math.isfinite(h["gzsl_h"]) for h in recorder.history)

    dm = datamodule(tiny, "test")
    model = build(name, dm)
    model.gamma.fill_(0.0)  # as chosen on validation by the engine
    recorder = EvaluationRecorder()
    names = dm.class_space.class_names
    plot = ProjectionPlot(tmp_path, dm.evaluation_examples(), names)
    tr = trainer(tmp_path, 3, callbacks=[recorder, plot])
    tr.fit(model, dm)
    tr.test(model, dm, verbose=False)
    assert recorder.test is not None
    for key in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc", "gzsl_h_cal"):
        assert math.isfinite(recorder.test.metrics[key])
    path = tmp_path / f"{name}_projection.png"
    assert plot.path == path
    assert path.is_file() and path.stat().st_size > 1000


@pytest.mark.parametrize("name", ["clswgan", "cadavae"])
def test_config_params_build_the_model(name: str) -> None:
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert cfg.name == name and cfg.search.metric == "gzsl_h"
    params = OmegaConf.to_container(cfg.params)
    for key in cfg.search.grid:  # dotted keys name second-stage options
        head, _, rest = str(key).partition(".")
        assert head in params and (not rest or rest in params[head]), key
    model = get_model_class(name)(512, 6, 12, **params)  # cls_pca fits 512-d features
    assert isinstance(model, GenerativeZSL) and model.uses_unseen_semantics
    assert isinstance(model.second_stage, SecondStage)
    assert model.second_stage == SecondStage(**params["second_stage"])
    assert model.hparams.second_stage == params["second_stage"]  # stored as a dict
    rank = params["second_stage"].get("cls_pca")
    if rank is not None:  # not fewer components than the classifier's inputs: no reduction
        with pytest.warns(UserWarning, match=f"second_stage.cls_pca={rank} is not below"):
            small = get_model_class(name)(rank - 1, 6, 12, **params)
        assert isinstance(small, GenerativeZSL) and small.second_stage.cls_pca is None


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


# ------------------------------------------------------------------------ generate()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("clswgan", {}), ("clswgan", {"gen_ema": 0.5}), ("cadavae", {})],
    ids=["clswgan", "clswgan-gen_ema", "cadavae"],
)
def test_generate_round_trips_from_a_checkpoint(
    tiny, tmp_path: Path, name: str, overrides: dict
) -> None:
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm, **overrides)
    tr = trainer(tmp_path, 2)
    tr.fit(model, dm)
    ckpt = tmp_path / "model.ckpt"
    tr.save_checkpoint(ckpt)

    new_classes = np.random.default_rng(0).uniform(0, 1, size=(3, dm.class_space.n_attributes))
    new_classes /= np.linalg.norm(new_classes, axis=1, keepdims=True)  # like xlsa17 att
    feats = generate(str(ckpt), new_classes, n=7, seed=3)
    assert feats.shape == (21, dm.class_space.feature_dim)
    model.eval()
    with torch.no_grad():
        expected = model.generate_features(
            torch.as_tensor(new_classes, dtype=torch.float32), 7, torch.Generator().manual_seed(3)
        )
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(generate(str(ckpt), new_classes, n=7, seed=3), feats)
    assert not torch.equal(generate(str(ckpt), new_classes, n=7, seed=4), feats)

    loaded = load_generator(ckpt)
    assert type(loaded) is type(model)
    assert torch.equal(loaded.seen_ids, model.seen_ids)
    assert torch.equal(loaded.unseen_ids, model.unseen_ids)
    with pytest.raises(ValueError, match="shape"):
        generate(str(ckpt), new_classes[:, :2], n=2)

    np.save(tmp_path / "att.npy", new_classes)
    out = tmp_path / "gen" / "x.npy"
    main(
        [
            "--checkpoint",
            str(ckpt),
            "--attributes",
            str(tmp_path / "att.npy"),
            "--n",
            "7",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "gen" / "x.npy"),
        ]
    )
    np.testing.assert_allclose(np.load(out), feats.numpy(), rtol=1e-6)


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


def test_model_classes_are_registered() -> None:
    assert get_model_class("clswgan") is CLSWGAN
    assert get_model_class("cadavae") is CADAVAE
