"""f-VAEGAN-D2: a conditional VAE and a WGAN sharing one feature generator.

Xian, Sharma, Schiele, Akata, "f-VAEGAN-D2: A Feature Generating Framework for Any-Shot
Learning", CVPR 2019, https://arxiv.org/abs/1903.10132. An encoder E(x, a) gives a Gaussian
posterior over the noise; the generator G(z, a) is at once the VAE's decoder (reconstruction +
KL) and the generator of a conditional WGAN-GP whose critic D(x, a) scores real seen features
against features generated from prior noise. The paper's D2 is an *unconditional* critic on
unlabelled features of the unseen classes (the transductive setting); here it is the option
``transductive_d2``, off by default and never part of an inductive run: it reads the
protocol's unseen evaluation features without their labels, which the inductive protocol
forbids, so the engine refuses it unless the data hands them over (see
:meth:`FVAEGAN.unlabelled_unseen_features`). tf-VAEGAN builds on it
(:mod:`zsl.models.generative.tfvaegan`).

Training uses Lightning's manual optimisation. Every batch of real seen features is split into
``n_critic`` critic batches (one critic step each), followed by one step of the encoder and
generator on the whole batch. The reconstruction term is the squared error summed over feature
dimensions (the features are L2-normalised CNN features here, not min-max scaled into [0, 1]
for a sigmoid/BCE as in the reference code). The reference code adapts the gradient-penalty
weight every step; here it is the fixed ``gp_weight`` of WGAN-GP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL, check_nonnegative, check_positive
from zsl.models.generative.clswgan import critic_loss
from zsl.models.generative.nets import (
    FeatureCritic,
    class_noise,
    init_normal,
    randn,
    reparameterize,
)
from zsl.models.generative.second_stage import SecondStage


class ConditionalEncoder(nn.Module):
    """E(x, a): a feature [B, D] and its class semantics [B, A] -> (mean, log-variance) [B, Z]."""

    def __init__(self, feature_dim: int, n_attributes: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim + n_attributes, hidden), nn.LeakyReLU(0.2))
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_normal(self)

    def forward(self, features: Tensor, semantics: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(torch.cat([features, semantics], dim=1))
        return self.mean(h), self.logvar(h)


class FeedbackGenerator(nn.Module):
    """G(z, a) with one LeakyReLU hidden layer h and a ReLU output (CNN features are
    non-negative); ``feedback`` [B, H], if given, is added to h first (tf-VAEGAN).

    ``condition_norm`` (None = the papers): rescale the L2-normalised attributes to that
    multiple of the noise's expected norm sqrt(Z) before they enter the network. With Z = 312
    noise dimensions the unit-norm attributes are 1/18 of the input's norm, and a small network
    trained briefly hardly conditions on them (see :class:`FVAEGAN`).

    ``unit_norm`` (False = the papers): L2-normalise every output, so that generated features lie
    on the unit sphere as L2-normalised real features do (the papers' features are min-max
    scaled into a box instead, and their generators end in a sigmoid that keeps them there)."""

    def __init__(
        self,
        n_attributes: int,
        noise_dim: int,
        hidden: int,
        feature_dim: int,
        condition_norm: float | None = None,
        unit_norm: bool = False,
    ) -> None:
        super().__init__()
        self.noise_dim, self.hidden_dim = noise_dim, hidden
        self.unit_norm = bool(unit_norm)
        self.attribute_gain = 1.0 if condition_norm is None else condition_norm * noise_dim**0.5
        self.hidden = nn.Sequential(nn.Linear(n_attributes + noise_dim, hidden), nn.LeakyReLU(0.2))
        self.output = nn.Linear(hidden, feature_dim)
        init_normal(self)

    def forward(self, noise: Tensor, semantics: Tensor, feedback: Tensor | None = None) -> Tensor:
        h = self.hidden(torch.cat([noise, self.attribute_gain * semantics], dim=1))
        if feedback is not None:
            h = h + feedback
        out = torch.relu(self.output(h))
        return F.normalize(out, dim=1) if self.unit_norm else out

    @torch.no_grad()
    def init_output_bias(self, feature_mean: Tensor) -> None:
        """Start the outputs at the mean training feature (see FeatureGenerator)."""
        self.output.bias.copy_(feature_mean)


def check_generator_options(condition_norm: float | None, gen_ema: float | None) -> None:
    """Refuse a non-positive ``condition_norm`` or a ``gen_ema`` outside [0, 1)."""
    if condition_norm is not None and not condition_norm > 0:
        raise ValueError(f"condition_norm must be positive or null, got {condition_norm}")
    if gen_ema is not None and not 0.0 <= gen_ema < 1.0:
        raise ValueError(f"gen_ema must be in [0, 1) or null, got {gen_ema}")


def vae_loss(recon: Tensor, target: Tensor, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """(reconstruction, KL) of a Gaussian VAE, each summed over dimensions and averaged over
    the batch: ``sum (recon - x)^2`` and ``KL(N(mean, exp(logvar)) || N(0, I))``."""
    reconstruction = (recon - target).pow(2).sum(dim=1).mean()
    kl = -0.5 * (1.0 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1).mean()
    return reconstruction, kl


class FVAEGAN(GenerativeZSL):
    """f-VAEGAN (Xian et al., CVPR 2019), inductive unless ``transductive_d2``.

    Defaults are the paper's recipe as published with tf-VAEGAN's code (4096 hidden units,
    noise size = number of attributes, Adam 1e-4 / betas (0.5, 0.999), 5 critic steps, lambda
    10, generator adversarial weight 10, 300 synthetic features per unseen class, final
    classifier 25 epochs at 1e-3 in batches of 300); ``zsl/conf/model/fvaegan.yaml`` sizes it
    for a CPU.

    ``kl_weight`` and ``recon_weight`` scale the VAE terms, ``adv_weight`` the generator's WGAN
    term (gamma in the paper). ``transductive_d2``: add the D2 critic on unlabelled unseen
    features (``d2_weight``); see the module docstring.

    Two options for L2-normalised features and short CPU budgets (null = the paper):
    ``condition_norm`` scales the attributes entering the generator to that multiple of the
    noise's norm (:class:`FeedbackGenerator`), and ``gen_ema`` synthesises from a moving
    average of the generator's weights (tf-VAEGAN: also of the feedback module; see
    :meth:`GenerativeZSL.register_generator_state`). With ``recon_weight`` 1 the summed squared
    error of unit-norm features can fall by at most about 1 against the KL term and the
    posterior collapses; the CPU configs weight it 100 (docs/generative.md has the CUB
    measurements).

    ``encoded_noise`` (the authors' image scripts, ``--encoded_noise``): the WGAN's fakes are
    generated from the encoder's posterior sample of the real batch instead of prior noise, so
    the critic and the generator's adversarial term (and tf-VAEGAN's semantic term) see the
    VAE's reconstructions, and the adversarial gradient also reaches the encoder. Synthesis
    always draws prior noise.

    ``unit_norm_output`` (False = the paper): the generator's outputs are L2-normalised, so
    generated features lie on the unit sphere with the L2-normalised real ones
    (:class:`FeedbackGenerator`; a fit on features that are not unit-norm is refused).
    """

    default_second_stage = SecondStage(n_synth=300, cls_epochs=25, cls_lr=1e-3, cls_batch_size=300)
    #: tf-VAEGAN adds the semantic decoder and the feedback module
    feedback: ClassVar[bool] = False

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        hidden: int = 4096,
        critic_hidden: int = 4096,
        noise_dim: int | None = None,
        lr: float = 1e-4,
        beta1: float = 0.5,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        adv_weight: float = 10.0,
        kl_weight: float = 1.0,
        recon_weight: float = 1.0,
        transductive_d2: bool = False,
        d2_weight: float = 1.0,
        condition_norm: float | None = None,
        gen_ema: float | None = None,
        encoded_noise: bool = False,
        unit_norm_output: bool = False,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        check_positive(hidden=hidden, critic_hidden=critic_hidden, n_critic=n_critic)
        check_generator_options(condition_norm, gen_ema)
        check_nonnegative(adv_weight=adv_weight, kl_weight=kl_weight)
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)
        self.automatic_optimization = False

    # -- networks -----------------------------------------------------------------------
    def noise_dim(self) -> int:
        return int(self.hp.noise_dim or self.n_attributes)

    def configure_models(self) -> None:
        hp = self.hp
        z = self.noise_dim()
        self.encoder = ConditionalEncoder(self.feature_dim, self.n_attributes, hp.hidden, z)
        self.generator = FeedbackGenerator(
            self.n_attributes,
            z,
            hp.hidden,
            self.feature_dim,
            hp.get("condition_norm"),
            bool(hp.get("unit_norm_output", False)),
        )
        self.critic = FeatureCritic(self.feature_dim, self.n_attributes, hp.critic_hidden)
        self.critic_d2: nn.Module | None = None
        if hp.get("transductive_d2"):
            self.critic_d2 = nn.Sequential(
                nn.Linear(self.feature_dim, hp.critic_hidden),
                nn.LeakyReLU(0.2),
                nn.Linear(hp.critic_hidden, 1),
            )
            init_normal(self.critic_d2)
        self.register_generator_state()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (float(self.hp.beta1), 0.999)
        lr = float(self.hp.lr)
        critics = [*self.critic.parameters()]
        if self.critic_d2 is not None:
            critics += [*self.critic_d2.parameters()]
        return [
            torch.optim.Adam([*self.encoder.parameters(), *self.generator.parameters()], lr, betas),
            torch.optim.Adam(critics, lr, betas),
        ]

    def on_fit_start(self) -> None:
        x, _ = self.seen_training_data()
        self.start_generator(self.generator, x)

    # -- generation ---------------------------------------------------------------------
    def generate(self, noise: Tensor, semantics: Tensor, synthesis: bool = False) -> Tensor:
        """G(z, a) (tf-VAEGAN: with the decoder's latent fed back); ``synthesis``: with the
        weight average of :meth:`synthesis_net` (the networks being trained otherwise)."""
        generator = self.synthesis_net("generator") if synthesis else self.generator
        return generator(noise, semantics)  # type: ignore[no-any-return]

    def synthesize(self, class_semantics: Tensor, n: int, generator: torch.Generator) -> Tensor:
        return self.embed(self.generate_features(class_semantics, n, generator))

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        noise, rows = class_noise(attributes, n, self.noise_dim(), generator)
        return self.generate(noise, attributes[rows], synthesis=True)

    # -- training -----------------------------------------------------------------------
    def unlabelled_unseen_features(self) -> Tensor:
        """D2's real inputs: unseen-class features without labels. Only a transductive data
        source provides them; the inductive protocol never does."""
        source = getattr(self, "_transductive_features", None)
        if source is None:
            raise RuntimeError(
                f"{type(self).__name__}: transductive_d2 needs unlabelled unseen features, "
                "which the inductive protocol does not provide; set transductive_d2=false "
                "(and never mix transductive numbers into inductive tables)"
            )
        return source

    def critic_step(self, real: Tensor, semantics: Tensor, opt_d: Any) -> Tensor:
        """One critic step on a chunk of real seen features (tf-VAEGAN: decoder step first)."""
        with torch.no_grad():
            if self.hp.get("encoded_noise"):
                noise = reparameterize(*self.encoder(real, semantics))
            else:
                noise = randn((real.shape[0], self.noise_dim()), None, real)
            fake = self.generate(noise, semantics)
        loss_d, _ = critic_loss(self.critic, real, fake, semantics, float(self.hp.gp_weight))
        if self.critic_d2 is not None:
            unlabelled = self.unlabelled_unseen_features()
            pick = torch.randint(0, unlabelled.shape[0], (real.shape[0],), device=real.device)
            unseen = self.unseen_semantics()
            pick_a = torch.randint(0, unseen.shape[0], (real.shape[0],), device=real.device)
            with torch.no_grad():
                noise = randn((real.shape[0], self.noise_dim()), None, real)
                fake_u = self.generate(noise, unseen[pick_a])
            d2 = self.critic_d2
            loss_d2, _ = critic_loss(
                lambda x, _a: d2(x).squeeze(1),  # type: ignore[arg-type]
                unlabelled[pick],
                fake_u,
                unseen[pick_a],
                float(self.hp.gp_weight),
            )
            loss_d = loss_d + float(self.hp.d2_weight) * loss_d2
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        return loss_d.detach()

    def generator_terms(self, real: Tensor, semantics: Tensor) -> dict[str, Tensor]:
        """The VAE and adversarial terms of a generator step on real seen features."""
        hp = self.hp
        mean, logvar = self.encoder(real, semantics)
        recon = self.generate(reparameterize(mean, logvar), semantics)
        reconstruction, kl = vae_loss(recon, real, mean, logvar)
        if hp.get("encoded_noise"):  # the adversarial term judges the reconstructions
            fake = recon
        else:
            fake = self.generate(randn((real.shape[0], self.noise_dim()), None, real), semantics)
        terms = {
            "reconstruction": reconstruction,
            "kl": kl,
            "adversarial": -self.critic(fake, semantics).mean(),
        }
        if self.critic_d2 is not None:
            unseen = self.unseen_semantics()
            pick = torch.randint(0, unseen.shape[0], (real.shape[0],), device=real.device)
            fake_u = self.generate(
                randn((real.shape[0], self.noise_dim()), None, real), unseen[pick]
            )
            terms["adversarial_d2"] = -float(hp.d2_weight) * self.critic_d2(fake_u).mean()
        terms["_fake"] = fake
        return terms

    def generator_loss(self, terms: dict[str, Tensor]) -> Tensor:
        hp = self.hp
        loss = float(hp.recon_weight) * terms["reconstruction"] + float(hp.kl_weight) * terms["kl"]
        loss = loss + float(hp.adv_weight) * terms["adversarial"]
        if "adversarial_d2" in terms:
            loss = loss + float(hp.adv_weight) * terms["adversarial_d2"]
        return loss

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        opt_g, opt_d = self.optimizers()[:2]  # type: ignore[index]
        real, semantics = batch.features, seen_semantics[local_labels]
        self.critic.requires_grad_(True)
        losses = [
            self.critic_step(r, s, opt_d)
            for r, s in zip(
                real.chunk(int(self.hp.n_critic)), semantics.chunk(int(self.hp.n_critic))
            )
        ]
        self.check_finite(losses[-1], "critic loss")
        self.critic.requires_grad_(False)
        try:
            terms = self.generator_terms(real, semantics)
            loss = self.generator_loss(terms)
            self.check_finite(loss, "generator loss")
            for opt in self.generator_optimizers():
                opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            for opt in self.generator_optimizers():
                opt.step()
            self.update_averages()
        finally:
            self.critic.requires_grad_(True)
        self.log_dict(
            {
                "train/critic_loss": losses[-1],
                **{f"train/{k}": v.detach() for k, v in terms.items() if not k.startswith("_")},
            },
            on_step=False,
            on_epoch=True,
        )
        return loss.detach()

    def generator_optimizers(self) -> list[Any]:
        """The optimisers stepped with the generator (encoder + generator here)."""
        return [self.optimizers()[0]]  # type: ignore[index]
