"""SE-GZSL: Generalized Zero-Shot Learning via Synthesized Examples (Verma, Arora, Mishra, Rai,
CVPR 2018, https://arxiv.org/abs/1712.03878).

A conditional VAE generates features from class attributes: the encoder E(x) gives a Gaussian
posterior over z from the feature alone, the decoder G(z, a) reconstructs the feature from z and
the class attributes. An attribute regressor R(x) -> a (the paper's "discriminator") is trained
on real seen features and, with weight ``regressor_synth_weight``, on generated ones, and is fed
back into the generator: features generated from prior noise for seen *and unseen* class
attributes must regress back to their attributes (``feedback_weight``), and the encoder must
recover the noise they were generated from (``latent_weight``; this keeps z independent of the
attributes). Updates alternate: one regressor step, then one encoder + generator step on the
same batch. Unseen classes enter through their attributes only, never their features.

The reconstruction is the squared error summed over feature dimensions (a Gaussian decoder);
the regressor's losses are squared errors against the L2-normalised attributes. The loss
weights and network sizes are this implementation's defaults (the paper does not fix them for
every dataset), chosen on validation classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.losses import semantic_loss, vae_loss
from zsl.models.generative.nets import (
    FeedbackGenerator,
    GeneratorNet,
    check_condition_norm,
    init_normal,
    randn,
    reparameterize,
    unit_norm_setting,
)
from zsl.models.generative.second_stage import SecondStage
from zsl.models.hparams import check_nonnegative, check_positive
from zsl.models.optim import adam


class FeatureEncoder(nn.Module):
    """E(x): a feature [B, D] -> (mean, log-variance) [B, Z] (one LeakyReLU hidden layer)."""

    def __init__(self, feature_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2))
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_normal(self)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(features)
        return self.mean(h), self.logvar(h)


class AttributeRegressor(nn.Module):
    """R(x): a feature [B, D] -> L2-normalised attributes [B, A]."""

    def __init__(self, feature_dim: int, hidden: int, n_attributes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, n_attributes)
        )
        init_normal(self)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)


class SEGZSL(GenerativeZSL):
    """SE-GZSL (Verma et al., CVPR 2018): conditional VAE + attribute-regressor feedback.

    ``recon_weight`` scales the reconstruction against the KL term (1 collapses the posterior
    on unit-norm features; the CPU config uses 100), ``feedback_weight`` and ``latent_weight``
    the regressor's and the encoder's feedback, ``regressor_synth_weight`` the regressor's
    loss on generated features. ``condition_norm``, ``gen_ema`` and ``unit_norm_output``: as
    in :class:`~zsl.models.generative.vaegan.FVAEGAN` (null / false = the paper)."""

    default_second_stage = SecondStage(n_synth=300, cls_epochs=25, cls_lr=1e-3, cls_batch_size=64)

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        hidden: int = 512,
        latent_dim: int = 64,
        regressor_hidden: int = 512,
        lr: float = 1e-3,
        kl_weight: float = 1.0,
        recon_weight: float = 1.0,
        feedback_weight: float = 0.1,
        latent_weight: float = 0.1,
        regressor_synth_weight: float = 0.1,
        condition_norm: float | None = None,
        gen_ema: float | None = None,
        unit_norm_output: bool | str = False,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        check_positive(hidden=hidden, latent_dim=latent_dim, regressor_hidden=regressor_hidden)
        check_condition_norm(condition_norm)
        check_nonnegative(
            kl_weight=kl_weight,
            recon_weight=recon_weight,
            feedback_weight=feedback_weight,
            latent_weight=latent_weight,
            regressor_synth_weight=regressor_synth_weight,
        )
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)
        self.automatic_optimization = False

    def configure_models(self) -> None:
        hp = self.hp
        self.encoder = FeatureEncoder(self.feature_dim, hp.hidden, hp.latent_dim)
        self.generator = FeedbackGenerator(
            self.n_attributes,
            hp.latent_dim,
            hp.hidden,
            self.feature_dim,
            hp.get("condition_norm"),
            unit_norm_setting(hp.get("unit_norm_output", False)),
        )
        self.regressor = AttributeRegressor(
            self.feature_dim, hp.regressor_hidden, self.n_attributes
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = float(self.hp.lr)
        return [
            adam([*self.encoder.parameters(), *self.generator.parameters()], lr),
            adam(self.regressor.parameters(), lr),
        ]

    def feature_generator(self) -> GeneratorNet:
        """The decoder G(z, a) (started at the mean training feature by the base)."""
        return self.generator

    # -- generation ---------------------------------------------------------------------
    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` features per attribute vector, decoded from prior noise (with ``gen_ema``:
        by the decoder's weight average)."""
        net = self.synthesis_net("generator")
        assert isinstance(net, FeedbackGenerator)
        return net.sample(attributes, n, generator)

    # -- training -----------------------------------------------------------------------
    def sampled_semantics(self, n: int, like: Tensor) -> Tensor:
        """Attributes of ``n`` classes drawn uniformly from the seen and unseen classes."""
        classes = torch.cat([self.seen_semantics(), self.unseen_semantics()])
        pick = torch.randint(0, classes.shape[0], (n,), device=like.device)
        return classes[pick]

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        hp = self.hp
        opt_g, opt_r = self.optimizers()  # type: ignore[misc, attr-defined]
        real, semantics = batch.features, seen_semantics[local_labels]
        n = real.shape[0]
        drawn = self.sampled_semantics(n, real)
        noise = randn((n, int(hp.latent_dim)), None, real)

        # the regressor: real seen features, and generated ones of seen and unseen classes
        with torch.no_grad():
            generated = self.generator(noise, drawn)
        loss_r = semantic_loss(self.regressor(real), semantics)
        loss_r = loss_r + float(hp.regressor_synth_weight) * semantic_loss(
            self.regressor(generated), drawn
        )
        self.check_finite(loss_r, "regressor loss")
        opt_r.zero_grad(set_to_none=True)
        self.manual_backward(loss_r)
        opt_r.step()

        # the encoder and generator: the VAE terms plus the regressor's and encoder's feedback
        self.regressor.requires_grad_(False)
        try:
            mean, logvar = self.encoder(real)
            recon = self.generator(reparameterize(mean, logvar), semantics)
            reconstruction, kl = vae_loss(recon, real, mean, logvar)
            fake = self.generator(noise, drawn)
            feedback = semantic_loss(self.regressor(fake), drawn)
            latent = (self.encoder(fake)[0] - noise).pow(2).sum(dim=1).mean()
            loss = float(hp.get("recon_weight", 1.0)) * reconstruction + float(hp.kl_weight) * kl
            loss = loss + float(hp.feedback_weight) * feedback
            loss = loss + float(hp.latent_weight) * latent
            self.check_finite(loss, "loss")
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
        finally:
            self.regressor.requires_grad_(True)
        self.log_dict(
            {
                "train/regressor_loss": loss_r.detach(),
                "train/reconstruction": reconstruction.detach(),
                "train/kl": kl.detach(),
                "train/feedback": feedback.detach(),
                "train/latent": latent.detach(),
            },
            on_step=False,
            on_epoch=True,
            batch_size=int(batch.labels.numel()),  # not inferred by walking the batch
        )
        return loss.detach()
