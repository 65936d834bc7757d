"""The conditional VAE-GAN shared by f-VAEGAN and tf-VAEGAN.

:class:`VAEGANBase` is f-VAEGAN-D2's model (Xian, Sharma, Schiele, Akata, "f-VAEGAN-D2: A
Feature Generating Framework for Any-Shot Learning", CVPR 2019): an encoder E(x, a), one
feature generator G(z, a) that is both the VAE's decoder and a conditional WGAN-GP's
generator, a critic D(x, a) and the optional transductive critic D2. f-VAEGAN
(:mod:`zsl.models.generative.vaegan`) is this model as it is; tf-VAEGAN
(:mod:`zsl.models.generative.tfvaegan`) adds its semantic decoder and feedback module through
the hooks :meth:`VAEGANBase.generate`, :meth:`VAEGANBase.critic_step`,
:meth:`VAEGANBase.generator_terms`, :meth:`VAEGANBase.generator_loss` and
:meth:`VAEGANBase.generator_optimizers`. The training schedule is described in
:mod:`zsl.models.generative.vaegan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.losses import critic_loss, vae_loss
from zsl.models.generative.nets import (
    FeatureCritic,
    FeedbackGenerator,
    GeneratorNet,
    check_condition_norm,
    class_noise,
    default_noise_dim,
    init_normal,
    randn,
    reparameterize,
    unit_norm_setting,
)
from zsl.models.generative.second_stage import SecondStage
from zsl.models.hparams import check_nonnegative, check_positive
from zsl.models.optim import adam

__all__ = ["ConditionalEncoder", "VAEGANBase"]


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


class VAEGANBase(GenerativeZSL):
    """The conditional VAE-GAN of f-VAEGAN-D2 (Xian et al., CVPR 2019) with its training
    iteration; the options are documented on :class:`~zsl.models.generative.vaegan.FVAEGAN`.
    """

    default_second_stage = SecondStage(n_synth=300, cls_epochs=25, cls_lr=1e-3, cls_batch_size=300)

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
        unit_norm_output: bool | str = False,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        check_positive(hidden=hidden, critic_hidden=critic_hidden, n_critic=n_critic)
        check_condition_norm(condition_norm)
        check_nonnegative(adv_weight=adv_weight, kl_weight=kl_weight)
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)
        self.automatic_optimization = False

    # -- networks -----------------------------------------------------------------------
    def noise_dim(self) -> int:
        return default_noise_dim(self.hp.noise_dim, self.n_attributes, self.feature_dim)

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
            unit_norm_setting(hp.get("unit_norm_output", False)),
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

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (float(self.hp.beta1), 0.999)
        lr = float(self.hp.lr)
        critics = [*self.critic.parameters()]
        if self.critic_d2 is not None:
            critics += [*self.critic_d2.parameters()]
        return [
            adam([*self.encoder.parameters(), *self.generator.parameters()], lr, betas),
            adam(critics, lr, betas),
        ]

    def feature_generator(self) -> GeneratorNet:
        """The generator G(z, a) (started at the mean training feature by the base)."""
        return self.generator

    # -- generation ---------------------------------------------------------------------
    def generate(self, noise: Tensor, semantics: Tensor, synthesis: bool = False) -> Tensor:
        """G(z, a) (tf-VAEGAN: with the decoder's latent fed back); ``synthesis``: with the
        weight average of :meth:`synthesis_net` (the networks being trained otherwise)."""
        generator = self.synthesis_net("generator") if synthesis else self.generator
        return generator(noise, semantics)  # type: ignore[no-any-return]

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` features per attribute vector, from prior noise, by :meth:`generate`."""
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
        finally:
            self.critic.requires_grad_(True)
        self.log_dict(
            {
                "train/critic_loss": losses[-1],
                **{f"train/{k}": v.detach() for k, v in terms.items() if not k.startswith("_")},
            },
            on_step=False,
            on_epoch=True,
            batch_size=int(batch.labels.numel()),  # not inferred by walking the batch
        )
        return loss.detach()

    def generator_optimizers(self) -> list[Any]:
        """The optimisers stepped with the generator (encoder + generator here)."""
        return [self.optimizers()[0]]  # type: ignore[index]
