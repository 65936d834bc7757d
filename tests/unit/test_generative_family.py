"""Model-specific checks of SE-GZSL, f-VAEGAN and tf-VAEGAN (``zsl.models.generative.segzsl`` /
``vaegan`` / ``tfvaegan``) and the second stage's step floor; each model is selected by a
capability (a constructor parameter or a method), so a copy under a new name is tested too:

- inductive: D2 refuses to run without unlabelled unseen features, and unseen classes reach
  SE-GZSL's training as attributes only;
- the feedback path's gradients against finite differences, encoded noise before the critic;
- the loss helpers against hand computations;
- the second stage's ``cls_min_steps`` floor.

The contracts every generator shares (overfitting, Lightning fits, ``gen_ema``, unit-norm
output, ``condition_norm``, configs, refusals) are in ``test_family_generative.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_datamodule
from conftest import tiny_trainer as trainer
from families import build_tiny, generative_models, with_class, with_params

from zsl.models import get_model_class
from zsl.models.generative.losses import semantic_loss, vae_loss
from zsl.models.generative.second_stage import fit_softmax_classifier
from zsl.models.generative.segzsl import SEGZSL
from zsl.models.generative.tfvaegan import TFVAEGAN
from zsl.models.generative.vaegan import FVAEGAN

GENERATORS = generative_models()
#: a second critic on unlabelled unseen features (transductive f-VAEGAN)
TRANSDUCTIVE_D2 = with_params(GENERATORS, "transductive_d2")
#: attributes drawn from seen and unseen classes for the generator's feedback terms
SAMPLED_SEMANTICS = with_class(GENERATORS, lambda cls: hasattr(cls, "sampled_semantics"))
#: a feedback module that feeds a semantic decoder's hidden layer back into the generator
FEEDBACK = with_params(GENERATORS, "synth_feedback_weight", "decoder_hidden")
ENCODED_NOISE = with_params(GENERATORS, "encoded_noise")

pytestmark = pytest.mark.usefixtures("one_thread")
datamodule = tiny_datamodule
build = build_tiny


def test_capabilities_find_the_models() -> None:
    assert "fvaegan" in TRANSDUCTIVE_D2 and "segzsl" in SAMPLED_SEMANTICS
    assert "tfvaegan" in FEEDBACK and {"fvaegan", "tfvaegan"} <= set(ENCODED_NOISE)


# ----------------------------------------------------------------------------- inductive


@pytest.mark.parametrize("name", TRANSDUCTIVE_D2)
def test_d2_is_off_by_default_and_refused_without_unlabelled_unseen_features(
    tiny, tmp_path: Path, name: str
) -> None:
    dm = datamodule(tiny)
    assert build(name, dm).critic_d2 is None
    model = build(name, dm, transductive_d2=True)
    with pytest.raises(RuntimeError, match="transductive_d2 needs unlabelled unseen features"):
        trainer(tmp_path, 1, limit_train_batches=1).fit(model, dm)


@pytest.mark.parametrize("name", SAMPLED_SEMANTICS)
def test_segzsl_sees_unseen_classes_as_attributes_only(tiny, name: str) -> None:
    """The attributes SE-GZSL draws for its feedback terms come from seen and unseen classes;
    the features it trains on are the seen-class batch only."""
    dm = datamodule(tiny)
    model = build(name, dm)
    model.train()
    drawn = model.sampled_semantics(400, dm.train_x)
    rows = {tuple(r.tolist()) for r in drawn}
    unseen = {tuple(r.tolist()) for r in model.unseen_semantics()}
    seen = {tuple(r.tolist()) for r in model.seen_semantics()}
    assert rows <= seen | unseen and rows & unseen and rows & seen


# ----------------------------------------------------------------------------- gradients


def finite_difference(
    f: Any, param: torch.Tensor, index: tuple[int, ...], eps: float = 1e-6
) -> float:
    with torch.no_grad():
        old = float(param[index])
        param[index] = old + eps
        up = float(f())
        param[index] = old - eps
        down = float(f())
        param[index] = old
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("name", FEEDBACK)
def test_feedback_path_gradients_match_finite_differences(tiny, name: str) -> None:
    """Gradients of a loss on tf-VAEGAN's two-pass generation against central finite
    differences (float64). The feedback module acts on the second pass only, so its gradient
    is the full derivative; the decoder's hidden layer enters the feedback detached (as in the
    paper), so the generator's gradient is the derivative with that feedback held fixed and the
    decoder gets none through this path."""
    torch.manual_seed(0)
    dm = datamodule(tiny)
    model = build(name, dm).double()
    with torch.no_grad():  # weights large enough for gradients well above round-off
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    sem = dm.class_space.semantics.double()[:5]
    noise = torch.randn(5, model.noise_dim(), dtype=torch.float64)
    target = torch.rand(5, model.feature_dim, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (model.generate(noise, sem) - target).pow(2).sum()

    with torch.no_grad():
        hidden = model.decoder(model.generator(noise, sem))[1]

    def loss_fixed_feedback() -> torch.Tensor:
        feedback = float(model.hp.feedback_weight) * model.feedback_module(hidden)
        return (model.generator(noise, sem, feedback) - target).pow(2).sum()

    model.zero_grad()
    loss().backward()
    checks = [
        (model.feedback_module.net[0].weight, (3, 2), loss),
        (model.feedback_module.net[2].bias, (7,), loss),
        (model.generator.hidden[0].weight, (1, 4), loss_fixed_feedback),
        (model.generator.output.weight, (2, 5), loss_fixed_feedback),
    ]
    for param, index, f in checks:
        assert param.grad is not None
        numeric = finite_difference(f, param, index)
        assert float(param.grad[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-7)
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    model.hp.synth_feedback_weight = 0.0
    with torch.no_grad():  # a zero feedback weight: the second pass is the first
        assert torch.equal(model.generate(noise, sem, synthesis=True), model.generator(noise, sem))


@pytest.mark.parametrize("name", ENCODED_NOISE)
def test_encoded_noise_puts_the_reconstructions_before_the_critic(
    tiny, tmp_path: Path, name: str
) -> None:
    """encoded_noise: the adversarial term judges G(E(x, a)) -- the reconstruction -- so its
    gradient reaches the encoder, and the critic's fakes come from the encoder's posterior;
    without it both use prior noise and the encoder gets no adversarial gradient."""
    dm = datamodule(tiny)
    x, y = dm.train_x[:16], dm.train_y[:16]
    for encoded in (False, True):
        model = build(name, dm, encoded_noise=encoded)
        trainer(tmp_path, 1, limit_train_batches=1).fit(model, dm)  # attaches optimisers
        assert bool(model.hparams["encoded_noise"]) == encoded
        model.zero_grad(set_to_none=True)
        sem = model.semantics[y]
        torch.manual_seed(0)
        terms = model.generator_terms(x, sem)
        terms["adversarial"].backward()
        grads = [p.grad for p in model.encoder.parameters()]
        reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert reached == encoded
        # the critic's fakes: with encoded noise, a posterior sample's reconstruction
        calls: list[torch.Tensor] = []
        hook = model.encoder.register_forward_hook(
            lambda _m, inp, _o, calls=calls: calls.append(inp[0])  # type: ignore[misc]
        )
        model.critic_step(x, sem, model.optimizers()[1])  # type: ignore[index]
        hook.remove()
        assert (len(calls) == 1) == encoded
        if encoded:
            torch.testing.assert_close(calls[0], x)


def test_semantic_and_vae_losses_match_hand_computations() -> None:
    decoded = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    semantics = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: (0.6, 0.8), (0, 1)
    assert float(semantic_loss(decoded, semantics)) == pytest.approx((0.0 + 2.0) / 2)
    recon, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    mean, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    rec, kl = vae_loss(recon, target, mean, logvar)
    assert float(rec) == pytest.approx(5.0)
    expected_kl = -0.5 * ((1 + 0 - 1 - 1) + (1 + 1 - 0 - torch.e))
    assert float(kl) == pytest.approx(float(expected_kl))


def test_model_classes_are_registered() -> None:
    assert get_model_class("segzsl") is SEGZSL
    assert get_model_class("fvaegan") is FVAEGAN and get_model_class("tfvaegan") is TFVAEGAN


def test_classifier_min_steps_is_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    from zsl.models.generative import second_stage

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    calls: list[int] = []
    original = second_stage._AdamStep.__call__

    def counting(self: Any, grads: list[torch.Tensor]) -> None:
        calls.append(1)
        original(self, grads)

    monkeypatch.setattr(second_stage._AdamStep, "__call__", counting)
    fit_softmax_classifier(x, y, 3, 2, 0.1, 16, generator=gen)  # 2 epochs x 2 batches
    assert len(calls) == 4
    calls.clear()
    fit_softmax_classifier(x, y, 3, 2, 0.1, 16, generator=gen, min_steps=11)
    assert len(calls) == 11
    calls.clear()
    fit_softmax_classifier(x, y, 3, 20, 0.1, 16, generator=gen, min_steps=11)
    assert len(calls) == 40


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_classifier_equals_autograd_and_torch_adam(weight_decay: float) -> None:
    """The second stage's hand-written cross-entropy gradient and Adam step follow autograd
    and ``torch.optim.Adam`` (betas 0.5, 0.999) update for update."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen) + torch.arange(5).repeat(60)[:, None]
    y = torch.arange(5).repeat(60)
    weight, bias = fit_softmax_classifier(
        x, y, 5, 3, 0.05, 64, weight_decay, torch.Generator().manual_seed(1)
    )
    scale = 1.0 / float(x.abs().sum(dim=1).mean())
    w = torch.zeros(8, 5, requires_grad=True)
    b = torch.zeros(5, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05, betas=(0.5, 0.999), weight_decay=weight_decay)
    order_gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for idx in torch.randperm(300, generator=order_gen).split(64):
            loss = F.cross_entropy(torch.addmm(b, x[idx] * scale, w), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(weight, w.detach() * scale, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bias, b.detach(), rtol=1e-4, atol=1e-6)
