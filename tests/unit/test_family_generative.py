"""Contracts of every feature-generating model found through the registry (see
``tests/families.py``), on the tiny benchmark with small networks:

- inductive: the generator's loader yields seen classes only and a training step refuses
  unseen labels;
- learning: each model overfits a tiny dataset, fits / validates / tests through Lightning, and
  trains on signed (negative-valued) features without NaN;
- generation: ``synthesize`` / ``generate_features`` shapes, finiteness and seeding, ``gen_ema``
  weight averaging, ``unit_norm_output`` and ``condition_norm`` where a model takes them;
- the second stage: ``synth_ratio``, ``synth_seen``, ``synth_residual``, ``cls_pca`` and the
  GZSL classifier over seen + unseen classes;
- checkpoints: ``zsl.cli.generate`` round trips from a checkpoint read with
  ``weights_only=True``;
- configs: every config of every generator (the CPU one and the ``_paper`` one) builds and takes
  training steps, its search grid names constructor options;
- hyper-parameters: bad learning rates, decays, loss weights and ``gen_ema`` are refused.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule, write_xlsa17
from conftest import tiny_trainer as trainer
from families import (
    build_model,
    build_tiny,
    config_params,
    config_stems,
    constructor_params,
    family_configs,
    generative_models,
    model_class,
    model_config,
    model_module,
    paper_config_stems,
    search_grid,
    tiny_params,
    with_class,
    with_params,
)

from zsl.data.datamodule import ZSLDataModule
from zsl.data.types import ZSLBatch
from zsl.models.base import LeakageError
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.second_stage import SecondStage, within_class_residuals

GENERATORS = generative_models()
GEN_EMA = with_params(GENERATORS, "gen_ema")
#: models whose classifier sees (embedded) image features, or other codes (CADA-VAE: latents)
FEATURE_EXAMPLES = with_class(GENERATORS, lambda cls: cls.example_space == "features")
LATENT_EXAMPLES = with_class(GENERATORS, lambda cls: cls.example_space != "features")
#: loss weights that must be >= 0 wherever a generator takes them (0 switches the term off)
CHECKED_WEIGHTS = (
    "kl_weight",
    "adv_weight",
    "latent_weight",
    "semantic_weight",
    "feedback_weight",
    "synth_feedback_weight",
    "regressor_synth_weight",
)

pytestmark = pytest.mark.usefixtures("one_thread")
datamodule = tiny_datamodule
build = build_tiny


def restage(model: GenerativeZSL, **options: Any) -> None:
    """Change second-stage options of a built model (the settings are a frozen dataclass)."""
    model.second_stage = dataclasses.replace(model.second_stage, **options)


def class_means(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.stack([x[y == c].mean(0) for c in classes])


def test_the_family_holds_the_generators() -> None:
    assert {"cadavae", "clswgan", "segzsl", "fvaegan", "tfvaegan"} <= set(GENERATORS)
    assert all(issubclass(model_class(n), GenerativeZSL) for n in GENERATORS)
    assert {"clswgan", "segzsl", "fvaegan", "tfvaegan"} <= set(GEN_EMA)
    assert "cadavae" in LATENT_EXAMPLES and "clswgan" in FEATURE_EXAMPLES


@pytest.mark.parametrize("name", GENERATORS)
def test_tiny_params_make_small_networks(tiny, name: str) -> None:
    """The tiny settings shrink every network (so that the family's tests stay fast)."""
    model = build(name, datamodule(tiny))
    assert sum(p.numel() for p in model.parameters()) < 60_000


# ----------------------------------------------------------------------------- inductive


@pytest.mark.parametrize("protocol", ["val", "test"])
@pytest.mark.parametrize("name", GENERATORS)
def test_generator_loader_never_yields_unseen_features(tiny, name: str, protocol: str) -> None:
    dm = datamodule(tiny, protocol, batch_size=7)
    model = build(name, dm)
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


@pytest.mark.parametrize("name", GENERATORS)
def test_training_step_refuses_unseen_labels(tiny, tmp_path: Path, name: str) -> None:
    dm = datamodule(tiny)
    bad = ZSLBatch(dm.eval_x[:4], dm.class_space.unseen_ids[:1].repeat(4))
    with pytest.raises(LeakageError):  # before any fit
        build(name, dm).training_step(bad, 0)
    model = build(name, dm)
    trainer(tmp_path, 1, limit_train_batches=1).fit(model, dm)  # attaches optimisers
    with pytest.raises(LeakageError):
        model.training_step(bad, 0)


# ----------------------------------------------------------------------------- learning


#: the f-CLSWGAN iteration's WGAN needs more (and larger) steps than the 600 here to overfit;
#: ``test_generative.py::test_clswgan_overfits_a_tiny_dataset`` runs 800 full-batch iterations
#: for every model trained by it (a module defining ``clswgan_iteration``)
OVERFIT = [n for n in GENERATORS if not hasattr(model_module(n), "clswgan_iteration")]


@pytest.mark.slow
@pytest.mark.parametrize("name", OVERFIT)
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


@pytest.mark.parametrize("name", GENERATORS)
def test_fit_validate_and_test_through_lightning(tiny, tmp_path: Path, name: str) -> None:
    from zsl.run.callbacks import EvaluationRecorder, ProjectionPlot

    pl.seed_everything(0, verbose=False)
    dm_val = datamodule(tiny, "val")
    model = build(name, dm_val)
    recorder = EvaluationRecorder()
    trainer(tmp_path, 3, validate=True, callbacks=[recorder]).fit(model, dm_val)
    assert [h["epoch"] for h in recorder.history] == [1, 2, 3]
    assert all(0.0 <= h["gzsl_h"] <= 100.0 for h in recorder.history)
    # the classifier's inputs: features, or what the model embeds them into
    assert model.embed(dm_val.train_x[:3]).shape == (3, model.classifier_dim())

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
    path = tmp_path / f"{type(model).__name__.lower()}_projection.png"  # named by the class
    assert plot.path == path
    assert path.is_file() and path.stat().st_size > 1000


@pytest.mark.parametrize("name", GENERATORS)
def test_signed_features_train_without_nan(tiny, tmp_path: Path, name: str) -> None:
    """Features with negative values (e.g. standardised ones): a fit moves the weights and
    leaves every weight, loss and generated feature finite, and a generator network adapts its
    output to them (linear with standardised targets, not a ReLU that cannot produce them):
    the generated features are signed too."""
    from zsl.run.callbacks import EvaluationRecorder

    def centre(splits: dict[str, Any], feats: dict[str, Any]) -> None:
        feats["features"] = feats["features"] - feats["features"].mean(1, keepdims=True)

    pl.seed_everything(0, verbose=False)
    dm = datamodule(write_xlsa17(tmp_path / "signed", edit=centre))
    assert bool((dm.train_x < 0).any()) and bool((dm.eval_x < 0).any())
    model = build(name, dm)
    model.gamma.fill_(0.0)  # as chosen on validation by the engine (NaN: not chosen yet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = EvaluationRecorder()
    tr = trainer(tmp_path, 2, callbacks=[recorder])
    tr.fit(model, dm)
    tr.test(model, dm, verbose=False)
    state = model.state_dict()
    assert any(not torch.equal(state[k], v) for k, v in before.items() if v.is_floating_point())
    for key, value in state.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    for key, value in tr.logged_metrics.items():
        assert math.isfinite(float(value)), key
    with torch.no_grad():
        synth = model.generate_features(model.unseen_semantics(), 5, torch.Generator())
    if model.feature_generator() is not None:
        assert model.data_choices()["output"] == "linear, standardised targets"
        assert model.data_choices()["features"] == "signed"
        assert bool((synth < 0).any())
    assert torch.isfinite(synth).all()
    assert recorder.test is not None and math.isfinite(recorder.test.metrics["zsl_t1"])


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", GENERATORS)
def test_synthesize_and_generate_features_shapes(tiny, tmp_path: Path, name: str) -> None:
    """``generate_features``: n image features per semantic row, grouped by row; ``synthesize``:
    n classifier inputs per row; both finite, reproducible by seed, different across seeds."""
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm)
    trainer(tmp_path, 1).fit(model, dm)
    model.eval()
    sem = dm.class_space.semantics[:3]

    def draw(fn: Any, seed: int) -> torch.Tensor:
        with torch.no_grad():
            return fn(sem, 4, torch.Generator().manual_seed(seed))

    for fn, dim in (
        (model.generate_features, dm.class_space.feature_dim),
        (model.synthesize, model.classifier_dim()),
    ):
        out = draw(fn, 1)
        assert out.shape == (12, dim)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(draw(fn, 1), out)
        assert not torch.equal(draw(fn, 2), out)
    # the rows of one class come together: one class's features alone give the same rows
    with torch.no_grad():
        alone = model.generate_features(sem[:1], 4, torch.Generator().manual_seed(1))
    assert alone.shape == (4, dm.class_space.feature_dim)


class AveragedTrace(pl.Callback):
    """The averaged networks' weights when training starts and after every training batch."""

    def __init__(self) -> None:
        self.states: list[list[torch.Tensor]] = []

    def record(self, module: GenerativeZSL) -> None:
        self.states.append(
            [p.detach().clone() for n in module.averaged for p in getattr(module, n).parameters()]
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: GenerativeZSL) -> None:
        self.record(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: GenerativeZSL, *args) -> None:
        self.record(pl_module)


@pytest.mark.parametrize("name", GEN_EMA)
def test_gen_ema_averages_every_generator_step(tiny, tmp_path: Path, name: str) -> None:
    """gen_ema: every averaged network (the generator, and a feedback module if the model has
    one) starts at the initialised network and follows avg <- d * avg + (1 - d) * net after
    every step; it holds no gradient, sits in no optimiser, is saved in the state dict, and is
    what synthesises features; without gen_ema nothing is averaged."""
    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm, gen_ema=0.7)
    names = model.averaged
    expected_names = {"generator"} | (
        {"feedback_module"} if hasattr(model, "feedback_module") else set()
    )
    assert set(names) == expected_names and len(names) == len(expected_names)
    trace = AveragedTrace()
    tr = trainer(tmp_path, 2, callbacks=[trace])
    tr.fit(model, dm)
    assert len(trace.states) == 1 + 2 * len(dm.train_dataloader())
    expected = trace.states[0]
    for state in trace.states[1:]:
        expected = [0.7 * e + 0.3 * s for e, s in zip(expected, state)]
    averages = [p for n in names for p in getattr(model, f"{n}_ema").parameters()]
    assert len(averages) == len(expected)
    for avg, exp in zip(averages, expected):
        torch.testing.assert_close(avg, exp)
        assert not avg.requires_grad
    in_optim = {id(p) for opt in tr.optimizers for g in opt.param_groups for p in g["params"]}
    for net in names:
        average, current = getattr(model, f"{net}_ema"), getattr(model, net)
        assert model.synthesis_net(net) is average
        assert not in_optim & {id(p) for p in average.parameters()}
        assert any(
            not torch.equal(a, c) for a, c in zip(average.parameters(), current.parameters())
        )
        assert any(k.startswith(f"{net}_ema.") for k in model.state_dict())

    sem = dm.class_space.semantics[:2]
    model.eval()
    with torch.no_grad():
        synth = model.generate_features(sem, 4, torch.Generator().manual_seed(1))
        # a model without averages whose networks are the averages: the same features
        plain = build(name, dm)
        plain.load_state_dict(
            {k: v for k, v in model.state_dict().items() if "_ema." not in k}, strict=True
        )
        for net in names:
            getattr(plain, net).load_state_dict(getattr(model, f"{net}_ema").state_dict())
        plain.eval()
        torch.testing.assert_close(
            plain.generate_features(sem, 4, torch.Generator().manual_seed(1)), synth
        )
        torch.testing.assert_close(
            model.synthesize(sem, 4, torch.Generator().manual_seed(1)),
            plain.synthesize(sem, 4, torch.Generator().manual_seed(1)),
        )
        for net in names:  # the trained networks in place of the averages: other numbers
            setattr(model, f"{net}_ema", getattr(model, net))
        trained = model.generate_features(sem, 4, torch.Generator().manual_seed(1))
    assert not torch.allclose(synth, trained)
    fresh = build(name, dm)  # null: the paper's last iterate
    assert all(getattr(fresh, f"{n}_ema", None) is None for n in fresh.averaged)
    assert not any("_ema." in k for k in fresh.state_dict())


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
@pytest.mark.parametrize("name", GEN_EMA)
def test_a_bad_gen_ema_is_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match="gen_ema"):
        model_class(name)(8, 4, 6, **tiny_params(name, gen_ema=value))


@pytest.mark.parametrize("name", with_params(GENERATORS, "unit_norm_output"))
def test_unit_norm_output_puts_generated_features_on_the_sphere(
    tiny, tmp_path: Path, name: str
) -> None:
    """unit_norm_output: every generated feature (training and synthesis, a feedback pass
    included) has L2 norm 1, the direction of the plain ReLU output; a fit on features that are
    not unit-norm is refused before any step, naming the option."""
    pl.seed_everything(0, verbose=False)
    dm = ZSLDataModule(tiny.name, str(tiny.root), "res101.mat", "test", preprocess="l2")
    dm.setup()
    model = build(name, dm, unit_norm_output=True)
    plain = build(name, dm)  # the same weights; its own (ReLU, not unit-norm) output choice
    weights = model.state_dict()
    for key in [k for k in weights if k.endswith("output_unit_norm")]:
        weights[key] = torch.tensor(False)
    plain.load_state_dict(weights)
    sem = dm.class_space.semantics[:3]
    with torch.no_grad():
        out = model.generate_features(sem, 4, torch.Generator().manual_seed(2))
        ref = plain.generate_features(sem, 4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(12))
    if not hasattr(model, "feedback_module"):  # (a feedback pass decodes the normalised first)
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


def _check_unit_norm_choice(
    name: str, tmp_path: Path, setting: str, cases: list[tuple[ZSLDataModule, bool]]
) -> None:
    """For every (datamodule, unit) case: a model with ``unit_norm_output=setting`` fitted on
    it records ``unit``, generates unit-norm features exactly when ``unit``, and a copy built
    from its state dict makes the same choice."""
    for dm, unit in cases:
        pl.seed_everything(0, verbose=False)
        model = build(name, dm, unit_norm_output=setting)
        trainer(tmp_path, 1, limit_train_batches=2).fit(model, dm)
        assert model.data_choices()["unit_norm_output"] is unit
        sem = dm.class_space.semantics[:3]
        with torch.no_grad():
            norms = model.generate_features(sem, 4, torch.Generator()).norm(dim=1)
        assert bool(torch.allclose(norms, torch.ones(12), atol=1e-5)) is unit
        copy = build(name, dm, unit_norm_output=setting)
        copy.load_state_dict(model.state_dict())
        assert copy.feature_generator().unit_norm is unit


@pytest.mark.parametrize("name", with_params(GENERATORS, "unit_norm_output"))
def test_unit_norm_output_auto_follows_the_training_features(
    tiny, tmp_path: Path, name: str
) -> None:
    """unit_norm_output=auto: unit-norm outputs on L2-normalised features, plain ones on raw
    features (accepted, where true is refused); the choice is recorded and survives a
    checkpoint; any other value is refused when the model is built."""
    l2 = ZSLDataModule(tiny.name, str(tiny.root), "res101.mat", "test", preprocess="l2")
    l2.setup()
    _check_unit_norm_choice(name, tmp_path, "auto", [(l2, True), (datamodule(tiny), False)])
    with pytest.raises(ValueError, match="unit_norm_output must be true, false, auto or signed"):
        build(name, l2, unit_norm_output="yes")


@pytest.mark.parametrize("name", with_params(GENERATORS, "unit_norm_output"))
def test_unit_norm_output_signed_normalises_only_signed_unit_norm_features(
    tiny, tmp_path: Path, name: str
) -> None:
    """unit_norm_output=signed: unit-norm outputs on L2-normalised signed features (a linear
    output), plain ones on L2-normalised non-negative features (a ReLU output) and on signed
    features that are not unit-norm; the choice is recorded and survives a checkpoint."""

    def centre(splits: dict[str, Any], feats: dict[str, Any]) -> None:
        feats["features"] = feats["features"] - feats["features"].mean(1, keepdims=True)

    signed = write_xlsa17(tmp_path / "signed", edit=centre)
    signed_l2 = ZSLDataModule(signed.name, str(signed.root), "res101.mat", "test", preprocess="l2")
    signed_l2.setup()
    plain_l2 = ZSLDataModule(tiny.name, str(tiny.root), "res101.mat", "test", preprocess="l2")
    plain_l2.setup()
    cases = [(signed_l2, True), (plain_l2, False), (datamodule(signed), False)]
    _check_unit_norm_choice(name, tmp_path, "signed", cases)


@pytest.mark.parametrize("name", with_params(GENERATORS, "condition_norm"))
def test_condition_norm_rescales_the_attributes_to_the_noise_norm(tiny, name: str) -> None:
    """condition_norm c: the generator sees c * sqrt(Z) * a instead of the unit-norm a (so
    a's norm is c times the noise's expected norm); null leaves a as it is; <= 0 is refused."""
    dm = datamodule(tiny)
    model = build(name, dm, condition_norm=2.0)
    z = model.generator.noise_dim
    assert model.generator.attribute_gain == pytest.approx(2.0 * z**0.5)
    seen: list[torch.Tensor] = []
    model.generator.hidden.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    sem = torch.nn.functional.normalize(dm.class_space.semantics[:3], dim=1)
    model.generator(torch.zeros(3, z), sem)
    torch.testing.assert_close(seen[0][:, z:].norm(dim=1), torch.full((3,), 2.0 * z**0.5))
    assert build(name, dm).generator.attribute_gain == 1.0
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="condition_norm"):
            build(name, dm, condition_norm=bad)


# ----------------------------------------------------------------------------- second stage


@pytest.mark.parametrize("name", GENERATORS)
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


@pytest.mark.parametrize("name", GENERATORS)
def test_synth_seen_adds_synthetic_examples_of_every_seen_class(
    tiny, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``synth_seen = r`` the classifier's data hold, after the real seen and synthetic
    unseen examples, ``round(r * n_real / n_seen)`` synthetic examples of each seen class: the
    generator's examples for the seen semantics, drawn after the unseen ones."""
    import zsl.models.generative.stage as stage

    dm = datamodule(tiny)
    model = build(name, dm, n_synth=5)
    seen, unseen = model.seen_ids, model.unseen_ids
    assert model.n_synth_seen_per_class(1000) == 0  # off: the papers' classifier
    restage(model, synth_seen=0.5)
    assert model.n_synth_seen_per_class(40 * seen.numel()) == 20
    assert model.n_synth_seen_per_class(1) == 1
    captured: dict[str, torch.Tensor] = {}

    class Capture:  # the classifier fit: records its training data
        def __init__(self, x, y, n_out, *args, **kwargs) -> None:
            captured["x"], captured["y"] = x.clone(), y.clone()
            self.shape, self.done = (x.shape[1], n_out), 0

        def run(self, steps: int) -> None:
            self.done += steps

        def result(self) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.zeros(self.shape), torch.zeros(self.shape[1])

    monkeypatch.setattr(stage, "SoftmaxFit", Capture)
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


@pytest.mark.parametrize("name", FEATURE_EXAMPLES)
def test_synth_residual_adds_real_seen_deviations(tiny, name: str) -> None:
    """Every synthetic example is the generated feature + k x one real seen residual (clamped
    at 0 for non-negative features), then the model's classifier embedding, and the synthetic
    classes then vary more."""
    dm = datamodule(tiny)
    model = build(name, dm)
    model.eval()
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
        shifted = (plain + k * residuals[pick]).clamp_min(0.0)
        torch.testing.assert_close(got, model.embed(shifted))
    n_unseen = model.unseen_ids.numel()
    labels = torch.arange(n_unseen).repeat_interleave(300)
    assert bool((within_class_std(shifted, labels) > within_class_std(plain, labels)).all())
    restage(model, synth_residual=None)
    with torch.no_grad():
        torch.testing.assert_close(
            model.synthesize_unseen(300, torch.Generator().manual_seed(3)),
            model.embed(plain),
        )
    with pytest.raises(ValueError, match="synth_residual must be positive"):
        build(name, dm, synth_residual=0.0)


def within_class_std(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    centred = x.clone()
    for c in labels.unique():
        centred[labels == c] -= x[labels == c].mean(0)
    return centred.pow(2).mean(0).sqrt()


@pytest.mark.parametrize("name", LATENT_EXAMPLES)
def test_synth_residual_is_refused_outside_feature_space(tiny, name: str) -> None:
    with pytest.raises(ValueError, match="synth_residual"):
        build(name, datamodule(tiny), synth_residual=1.0)


@pytest.mark.parametrize("name", GENERATORS)
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


@pytest.mark.parametrize("name", GENERATORS)
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
    again = model.embed_seen(dm.train_x, dm.train_y, model._eval_generator())[0]
    if torch.equal(real, again):  # fixed real classifier inputs: their PCA is computed once
        assert model._basis.entry is not None
        key = model._basis.entry[0]
        basis_before = model._basis.entry[2]
        model.fit_classifier()
        assert model._basis.entry[0] == key and model._basis.entry[2] is basis_before
        weight, bias, _ = model._classifier
    assert model._basis.entry is not None
    basis = model._basis.entry[2]
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


@pytest.mark.parametrize("name", GENERATORS)
def test_cls_pca_not_below_the_classifier_inputs_means_none(tiny, name: str) -> None:
    """A default ``cls_pca`` of 256 on smaller inputs is a rotation: the classifier takes them
    whole (the setting is adjusted before training, stored so, and recorded in the model's
    data choices); one component less is kept."""
    dm = datamodule(tiny)
    probe = build(name, dm)
    dim = probe.classifier_dim()
    model = build(name, dm, cls_pca=dim)
    assert model.second_stage.cls_pca is None
    assert model.hparams["second_stage"]["cls_pca"] is None
    assert model.data_choices()["cls_pca"] == {"set": dim, "inputs": dim, "used": None}
    below = build(name, dm, cls_pca=dim - 1)
    assert below.second_stage.cls_pca == dim - 1 and "cls_pca" not in below.data_choices()


# ----------------------------------------------------------------------------- checkpoints


def _variants() -> list[Any]:
    cases = [pytest.param(n, {}, id=n) for n in GENERATORS]
    cases += [pytest.param(n, {"gen_ema": 0.5}, id=f"{n}-gen_ema") for n in GEN_EMA]
    return cases


@pytest.mark.parametrize(("name", "overrides"), _variants())
def test_generate_round_trips_from_a_checkpoint(
    tiny, tmp_path: Path, name: str, overrides: dict
) -> None:
    from zsl.cli.generate import generate, load_generator, main

    pl.seed_everything(0, verbose=False)
    dm = datamodule(tiny)
    model = build(name, dm, **overrides)
    tr = trainer(tmp_path, 2)
    tr.fit(model, dm)
    ckpt = tmp_path / "model.ckpt"
    tr.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["state_dict"]  # tensors and plain data only
    assert stored.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(stored[key], value, equal_nan=True)

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
            str(out),
        ]
    )
    np.testing.assert_allclose(np.load(out), feats.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- configs

CONFIGS = [pytest.param(n, s, id=s) for n, s in family_configs(GENERATORS)]


@pytest.mark.parametrize(("name", "stem"), CONFIGS)
def test_config_params_build_the_model(name: str, stem: str) -> None:
    """Every config of a generator (the CPU one and the ``_paper`` one) names a class of the
    family, selects on validation H, its grid names constructor options, and its params build
    the model with the typed second stage."""
    cfg = model_config(name, stem)
    assert cfg.name == name and cfg.search.metric == "gzsl_h"
    params = config_params(name, stem)
    takes = constructor_params(name)
    assert set(params) <= set(takes)
    for key in search_grid(name, stem):  # dotted keys name second-stage options
        head, _, rest = str(key).partition(".")
        assert head in takes, key
        if rest:
            assert head == "second_stage" and rest in SecondStage.field_names(), key
    model = model_class(name)(512, 6, 12, **params)  # cls_pca fits 512-d features
    assert isinstance(model, GenerativeZSL) and model.uses_unseen_semantics
    assert isinstance(model.second_stage, SecondStage)
    assert model.second_stage == SecondStage(**params["second_stage"])
    assert model.hparams.second_stage == params["second_stage"]  # stored as a dict
    rank = params["second_stage"].get("cls_pca")
    # not fewer components than the classifier's inputs: no reduction. Features of rank - 1
    # dimensions give a classifier of at most rank inputs where the classifier sees features
    # (+ a fixed number of decoded dimensions).
    extra = model.classifier_dim() - 512
    if rank is not None and model.example_space == "features" and rank - extra - 1 >= 1:
        small = model_class(name)(rank - extra - 1, 6, 12, **params)
        assert isinstance(small, GenerativeZSL) and small.second_stage.cls_pca is None
        assert small.classifier_dim() == rank - 1
        assert small.data_choices()["cls_pca"] == {"set": rank, "inputs": rank - 1, "used": None}


@pytest.mark.parametrize(("name", "stem"), CONFIGS)
def test_configs_build_and_step(tiny, tmp_path: Path, name: str, stem: str) -> None:
    """Every config (the CPU one and the ``_paper`` one, GPU-size networks) builds on the tiny
    benchmark and takes training steps on the CPU. A ``_paper`` config names the same class
    as the model's other configs and keeps the paper's classifier schedule."""
    cfg = model_config(name, stem)
    if stem in paper_config_stems(name):
        assert any(s not in paper_config_stems(name) for s in config_stems(name))
        for other in config_stems(name):
            assert model_config(name, other)._target_ == cfg._target_
        assert cfg.params.second_stage.get("cls_min_steps") is None  # the paper's schedule
    pl.seed_everything(0, verbose=False)
    params = config_params(name, stem)
    batch_size = int(cfg.get("batch_size") or 16)
    if params.get("unit_norm_output"):  # generates unit-norm features: L2-normalised data
        dm = ZSLDataModule(
            tiny.name, str(tiny.root), "res101.mat", "test", preprocess="l2", batch_size=batch_size
        )
        dm.setup()
    else:
        dm = datamodule(tiny, batch_size=batch_size)
    model = build_model(name, dm, params)
    trainer(tmp_path, 1, limit_train_batches=2).fit(model, dm)
    assert model.global_step >= 2


def test_every_paper_config_is_found() -> None:
    found = {s for n in GENERATORS for s in paper_config_stems(n)}
    expected = {"cadavae_paper", "clswgan_paper", "segzsl_paper", "fvaegan_paper"}
    assert expected | {"tfvaegan_paper"} <= found


# ----------------------------------------------------------------------------- refusals


def bad_hparams() -> list[Any]:
    """(model, hyper-parameter, bad value) for every learning rate, weight decay and margin a
    generator takes, its second stage's included."""
    from zsl.models.base import NON_NEGATIVE_HPARAMS, POSITIVE_HPARAMS

    stage = SecondStage.field_names()
    cases = []
    for name in GENERATORS:
        params = constructor_params(name)
        cases += [(name, p, 0.0) for p in POSITIVE_HPARAMS if p in params]
        cases += [(name, p, -0.5) for p in NON_NEGATIVE_HPARAMS if p in params]
        cases += [(name, f"second_stage.{p}", 0.0) for p in POSITIVE_HPARAMS if p in stage]
        cases += [(name, f"second_stage.{p}", -0.5) for p in NON_NEGATIVE_HPARAMS if p in stage]
    return cases


@pytest.mark.parametrize(("name", "param", "value"), bad_hparams())
def test_generators_reject_bad_rates_decays_and_margins(
    name: str, param: str, value: float
) -> None:
    cls = model_class(name)
    if param.startswith("second_stage."):  # checked by SecondStage, named by its option
        option = param.split(".", 1)[1]
        message = rf"second_stage\.{option} must be"
        with pytest.raises(ValueError, match=message):
            cls(8, 4, 6, second_stage={option: value})
        with pytest.raises(ValueError, match=message):
            cls(8, 4, 6, second_stage={option: float("nan")})
        return
    # the base's check names the model; the generative models' own checks list every bad value
    message = rf"({cls.__name__}: {param} must be|must be positive: (.*, )?{param}=)"
    with pytest.raises(ValueError, match=message):
        cls(8, 4, 6, **{param: value})
    with pytest.raises(ValueError, match=message):
        cls(8, 4, 6, **{param: float("nan")})


def weight_cases() -> list[Any]:
    return [
        pytest.param(n, w, id=f"{n}-{w}")
        for n in GENERATORS
        for w in constructor_params(n)
        if w.endswith("_weight")  # every loss weight, whatever the model calls it
    ]


@pytest.mark.parametrize(("name", "weight"), weight_cases())
def test_loss_weights_are_refused_if_negative_or_nan(name: str, weight: str) -> None:
    """Negative or NaN loss weights are refused by name; zero is allowed (the term is off)."""
    cls = model_class(name)
    with pytest.raises(ValueError, match=rf"{weight} must be >= 0, got -1.0"):
        cls(8, 4, 6, **tiny_params(name, **{weight: -1.0}))
    with pytest.raises(ValueError, match=rf"{weight} must be >= 0, got nan"):
        cls(8, 4, 6, **tiny_params(name, **{weight: float("nan")}))
    cls(8, 4, 6, **tiny_params(name, **{weight: 0.0}))


def test_weight_cases_cover_the_known_checks() -> None:
    ids = {tuple(p.values) for p in weight_cases()}
    assert {
        (n, w) for n in GENERATORS for w in CHECKED_WEIGHTS if w in constructor_params(n)
    } <= ids
    assert {("fvaegan", "kl_weight"), ("tfvaegan", "semantic_weight")} <= ids
    assert {("segzsl", "latent_weight"), ("clswgan", "cls_weight"), ("clswgan", "gp_weight")} <= ids
    assert {("fvaegan", "recon_weight"), ("fvaegan", "d2_weight")} <= ids


@pytest.mark.parametrize("name", GENERATORS)
def test_constructor_defaults_are_the_papers(name: str) -> None:
    """Every constructor parameter has a default (the paper's settings): a config need only
    name what it changes, and the tiny settings only what they shrink."""
    missing = [
        k
        for k, p in constructor_params(name).items()
        if k not in ("feature_dim", "n_attributes", "n_classes")
        and p.default is inspect.Parameter.empty
    ]
    assert not missing
