"""SE-GZSL, f-VAEGAN and tf-VAEGAN (``zsl.models.generative.segzsl`` / ``vaegan``), the paper-size
configs of every generator, and the step floors that keep small datasets from collapsing:

- inductive: a training step refuses unseen labels, D2 refuses to run without unlabelled unseen
  features, and unseen classes reach training as attributes only;
- the feedback path and the semantic decoder's gradients against finite differences;
- each model overfits a tiny dataset (its generated class means approach the real ones);
- each model fits, validates and tests through Lightning, and every ``_paper`` config builds and
  takes a training step;
- the second stage's ``cls_min_steps`` floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule
from conftest import tiny_trainer as trainer
from omegaconf import OmegaConf

from zsl.conf import CONFIG_DIR
from zsl.data.datamodule import ZSLDataModule
from zsl.data.types import ZSLBatch
from zsl.models import get_model_class
from zsl.models.base import LeakageError
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.second_stage import fit_softmax_classifier
from zsl.models.generative.segzsl import SEGZSL
from zsl.models.generative.tfvaegan import TFVAEGAN, semantic_loss
from zsl.models.generative.vaegan import FVAEGAN, vae_loss

NEW = ("segzsl", "fvaegan", "tfvaegan")
STAGE = dict(n_synth=20, cls_epochs=10, cls_lr=0.1, cls_batch_size=64)
SMALL: dict[str, dict[str, Any]] = {
    "segzsl": dict(hidden=32, latent_dim=4, regressor_hidden=16, lr=3e-3),
    "fvaegan": dict(hidden=32, critic_hidden=32, lr=3e-3, adv_weight=1.0),
    "tfvaegan": dict(
        hidden=32, critic_hidden=32, lr=3e-3, adv_weight=1.0, decoder_hidden=16, decoder_lr=3e-3
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")
datamodule = tiny_datamodule


def build(name: str, dm: ZSLDataModule, **overrides: Any) -> GenerativeZSL:
    space = dm.class_space
    params = {**SMALL[name], "second_stage": STAGE, **overrides}
    model = get_model_class(name)(space.feature_dim, space.n_attributes, space.n_classes, **params)
    model.bind(dm)
    return model


# ----------------------------------------------------------------------------- inductive


@pytest.mark.parametrize("name", NEW)
def test_training_step_refuses_unseen_labels(tiny, tmp_path: Path, name: str) -> None:
    dm = datamodule(tiny)
    model = build(name, dm)
    trainer(tmp_path, 1, limit_train_batches=1).fit(model, dm)  # attaches optimisers
    bad = ZSLBatch(dm.eval_x[:4], dm.class_space.unseen_ids[:1].repeat(4))
    with pytest.raises(LeakageError):
        model.training_step(bad, 0)


def test_d2_is_off_by_default_and_refused_without_unlabelled_unseen_features(
    tiny, tmp_path: Path
) -> None:
    dm = datamodule(tiny)
    assert build("fvaegan", dm).critic_d2 is None
    model = build("fvaegan", dm, transductive_d2=True)
    with pytest.raises(RuntimeError, match="transductive_d2 needs unlabelled unseen features"):
        trainer(tmp_path, 1, limit_train_batches=1).fit(model, dm)


def test_segzsl_sees_unseen_classes_as_attributes_only(tiny) -> None:
    """The attributes SE-GZSL draws for its feedback terms come from seen and unseen classes;
    the features it trains on are the seen-class batch only."""
    dm = datamodule(tiny)
    model = build("segzsl", dm)
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


def test_feedback_path_gradients_match_finite_differences(tiny) -> None:
    """Gradients of a loss on tf-VAEGAN's two-pass generation against central finite
    differences (float64). The feedback module acts on the second pass only, so its gradient
    is the full derivative; the decoder's hidden layer enters the feedback detached (as in the
    paper), so the generator's gradient is the derivative with that feedback held fixed and the
    decoder gets none through this path."""
    torch.manual_seed(0)
    dm = datamodule(tiny)
    model = build("tfvaegan", dm).double()
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


@pytest.mark.parametrize("name", NEW)
def test_gen_ema_averages_the_synthesising_networks(tiny, tmp_path: Path, name: str) -> None:
    """gen_ema: after a fit, every averaged network (tf-VAEGAN: generator and feedback
    module) differs from the trained one, holds no gradient and sits in no optimiser, is saved
    in the state dict, and is what generate_features uses; without gen_ema nothing is
    averaged."""
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm, gen_ema=0.5)
    tr = trainer(tmp_path, 1)
    tr.fit(model, dm)
    names = model.averaged
    assert names == (("generator", "feedback_module") if name == "tfvaegan" else ("generator",))
    in_optim = {id(p) for opt in tr.optimizers for g in opt.param_groups for p in g["params"]}
    for net in names:
        average, current = getattr(model, f"{net}_ema"), getattr(model, net)
        assert model.synthesis_net(net) is average
        assert not in_optim & {id(p) for p in average.parameters()}
        assert not any(p.requires_grad for p in average.parameters())
        assert any(
            not torch.equal(a, c) for a, c in zip(average.parameters(), current.parameters())
        )
        assert any(k.startswith(f"{net}_ema.") for k in model.state_dict())
    sem = dm.class_space.semantics[:2]
    with torch.no_grad():
        synth = model.generate_features(sem, 3, torch.Generator().manual_seed(1))
        for net in names:  # the trained networks in place of the averages: other numbers
            setattr(model, f"{net}_ema", getattr(model, net))
        trained = model.generate_features(sem, 3, torch.Generator().manual_seed(1))
    assert not torch.allclose(synth, trained)
    plain = build(name, dm)
    assert all(getattr(plain, f"{n}_ema", None) is None for n in plain.averaged)


def test_condition_norm_rescales_the_attributes_to_the_noise_norm(tiny) -> None:
    """condition_norm c: the generator sees c * sqrt(Z) * a instead of the unit-norm a (so
    a's norm is c times the noise's expected norm); null leaves a as it is; <= 0 is refused."""
    dm = datamodule(tiny)
    model = build("fvaegan", dm, condition_norm=2.0)
    z = model.noise_dim()
    assert model.generator.attribute_gain == pytest.approx(2.0 * z**0.5)
    seen: list[torch.Tensor] = []
    model.generator.hidden.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    sem = torch.nn.functional.normalize(dm.class_space.semantics[:3], dim=1)
    model.generator(torch.zeros(3, z), sem)
    torch.testing.assert_close(seen[0][:, z:].norm(dim=1), torch.full((3,), 2.0 * z**0.5))
    assert build("fvaegan", dm).generator.attribute_gain == 1.0
    with pytest.raises(ValueError, match="condition_norm"):
        build("segzsl", dm, condition_norm=0.0)
    with pytest.raises(ValueError, match="gen_ema"):
        build("tfvaegan", dm, gen_ema=1.0)
    # loss weights: negative or NaN refused by name, zero allowed (the term is switched off)
    with pytest.raises(ValueError, match=r"kl_weight must be >= 0, got -1.0"):
        build("fvaegan", dm, kl_weight=-1.0)
    with pytest.raises(ValueError, match=r"semantic_weight must be >= 0, got nan"):
        build("tfvaegan", dm, semantic_weight=float("nan"))
    with pytest.raises(ValueError, match=r"latent_weight must be >= 0"):
        build("segzsl", dm, latent_weight=-0.1)
    build("tfvaegan", dm, feedback_weight=0.0)


@pytest.mark.parametrize("name", NEW)
def test_unit_norm_output_puts_generated_features_on_the_sphere(
    tiny, tmp_path: Path, name: str
) -> None:
    """unit_norm_output: every generated feature (training and synthesis, tf-VAEGAN's
    feedback pass included) has L2 norm 1, the direction of the plain ReLU output; a fit on
    features that are not unit-norm is refused before any step, naming the option."""
    from zsl.data.datamodule import ZSLDataModule

    pl.seed_everything(0, verbose=False)
    dm = ZSLDataModule(tiny.name, str(tiny.root), "res101.mat", "test", preprocess="l2")
    dm.setup()
    model = build(name, dm, unit_norm_output=True)
    plain = build(name, dm)
    plain.load_state_dict(model.state_dict())
    sem = dm.class_space.semantics[:3]
    with torch.no_grad():
        out = model.generate_features(sem, 4, torch.Generator().manual_seed(2))
        ref = plain.generate_features(sem, 4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(12))
    if name != "tfvaegan":  # (tf-VAEGAN's second pass decodes the normalised first one)
        torch.testing.assert_close(out, torch.nn.functional.normalize(ref, dim=1))
    assert not torch.allclose(ref.norm(dim=1), torch.ones(12))
    trainer(tmp_path, 1, limit_train_batches=2).fit(model, dm)  # L2 features: accepted
    raw = datamodule(tiny)  # unnormalised features
    bad = build(name, raw, unit_norm_output=True)
    before = {k: v.clone() for k, v in bad.state_dict().items()}
    with pytest.raises(ValueError, match="unit_norm_output generates unit-norm features, but"):
        trainer(tmp_path, 1, limit_train_batches=2).fit(bad, raw)
    for key, value in bad.state_dict().items():  # refused before any step
        torch.testing.assert_close(value, before[key], equal_nan=True)


@pytest.mark.parametrize("name", ["fvaegan", "tfvaegan"])
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


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", NEW)
def test_each_model_overfits_a_tiny_dataset(tiny, tmp_path: Path, name: str) -> None:
    """After training on 64 images of 8 seen classes, the generated class means are much
    closer to the real ones than the untrained generator's."""
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm)
    x, y = dm.train_x, dm.train_y
    seen = dm.class_space.seen_ids
    real = torch.stack([x[y == c].mean(0) for c in seen.tolist()])

    def error() -> float:
        model.eval()
        with torch.no_grad():
            fake = model.generate_features(
                dm.class_space.semantics[seen], 50, torch.Generator().manual_seed(0)
            )
        means = fake.view(seen.numel(), 50, -1).mean(1)
        return float((means - real).norm(dim=1).mean())

    model.on_fit_start()  # the output bias starts at the mean feature, as a fit does
    before = error()
    trainer(tmp_path, 150).fit(model, dm)
    after = error()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", NEW)
def test_fit_validate_and_test_through_lightning(tiny, tmp_path: Path, name: str) -> None:
    from zsl.run.callbacks import EvaluationRecorder

    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny, "val")
    model = build(name, dm)
    recorder = EvaluationRecorder()
    trainer(tmp_path, 2, validate=True, callbacks=[recorder]).fit(model, dm)
    assert len(recorder.history) == 2
    assert all(0.0 <= e["gzsl_h"] <= 100.0 for e in recorder.history)
    if name == "tfvaegan":  # the classifier sees [x, Dec(x), hidden(x)]
        assert isinstance(model, TFVAEGAN)
        assert model.embed(dm.train_x[:3]).shape[1] == model.classifier_dim()


# ----------------------------------------------------------------------------- configs


def model_config(name: str) -> Any:
    return OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")


@pytest.mark.parametrize("name", [*NEW, "clswgan", "cadavae"])
def test_cpu_and_paper_configs_build_and_step(tiny, tmp_path: Path, name: str) -> None:
    """The CPU config and the ``_paper`` one name the same class; the paper one (GPU-size
    networks) builds on the tiny benchmark and takes training steps on the CPU."""
    cpu, paper = model_config(name), model_config(f"{name}_paper")
    assert cpu.name == paper.name == name and cpu._target_ == paper._target_
    assert paper.params.second_stage.get("cls_min_steps") is None  # the paper's schedule
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny, batch_size=int(paper.get("batch_size") or 16))
    params = OmegaConf.to_container(paper.params, resolve=True)
    assert isinstance(params, dict)
    space = dm.class_space
    model = get_model_class(name)(space.feature_dim, space.n_attributes, space.n_classes, **params)
    model.bind(dm)
    trainer(tmp_path, 1, limit_train_batches=2).fit(model, dm)
    assert model.global_step >= 2


def test_model_classes_are_registered() -> None:
    assert get_model_class("segzsl") is SEGZSL
    assert get_model_class("fvaegan") is FVAEGAN and get_model_class("tfvaegan") is TFVAEGAN


def test_classifier_min_steps_is_a_floor() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    calls: list[int] = []
    original = torch.optim.Adam.step

    def counting(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = counting  # type: ignore[method-assign]
    try:
        fit_softmax_classifier(x, y, 3, 2, 0.1, 16, generator=gen)  # 2 epochs x 2 batches
        assert len(calls) == 4
        calls.clear()
        fit_softmax_classifier(x, y, 3, 2, 0.1, 16, generator=gen, min_steps=11)
        assert len(calls) == 11
        calls.clear()
        fit_softmax_classifier(x, y, 3, 20, 0.1, 16, generator=gen, min_steps=11)
        assert len(calls) == 40
    finally:
        torch.optim.Adam.step = original  # type: ignore[method-assign]
