"""CADA-VAE: Generalized Zero- and Few-Shot Learning via Aligned Variational Autoencoders
(Schönfeld, Ebrahimi, Sinha, Darrell, Akata, CVPR 2019, https://arxiv.org/abs/1812.01784).

Two VAEs -- one on image features, one on class attributes -- share a latent size. Besides
their own reconstruction + KL terms, the latents are aligned by cross-reconstruction (decode
each modality from the other's latent code) and by distribution alignment (the 2-Wasserstein
distance between the two diagonal Gaussian posteriors). The weights of KL, cross-reconstruction
and alignment are warmed up linearly over epochs, as in the paper. The GZSL classifier is a
softmax on latent codes: real seen features encoded by the feature encoder, and codes sampled
from the attribute encoder for the unseen classes; a test feature is scored through the mean
of its feature-encoder posterior.

Why CADA-VAE and not SE-GZSL (Kumar Verma et al., CVPR 2018) as the second generative model:
SE-GZSL needs a feedback regressor, a discriminator-free VAE with per-attribute constraints and
an unlabelled-unseen-data variant, and its published training recipe is incompletely specified;
CADA-VAE is a self-contained, widely reproduced recipe (public configuration per dataset),
complements f-CLSWGAN with a different family (aligned VAEs, no adversarial training, no
gradient penalty) and classifies in a 64-d latent space, which keeps the per-epoch evaluation
classifier cheap on CPUs.

One documented addition to the paper (``unseen_spread``, 0 = the paper's recipe): a latent
sampled from the attribute encoder only varies by that encoder's posterior noise, while the
latents of real images of one class also vary from image to image. The unseen training
examples of the classifier are therefore tighter clusters than the real unseen test latents,
and a classifier trained on them draws small unseen regions (real unseen images fall into
seen classes). With ``unseen_spread = s`` every synthetic unseen latent gets extra Gaussian
noise of ``s`` times the per-dimension within-class standard deviation of the seen classes'
posterior means (measured on the real seen training features at every classifier fit). On CUB
VGG validation classes (best epoch of each fit of the default config's grid) GZSL H was
44.3 / 45.3 / 42.8 with s = 0 / 1 / 1.5 and a 2-epoch latent classifier, and 38.5 / 45.5 / 46.6
with a 3-epoch one: a wider unseen spread lets the classifier train longer before it drifts
to the seen classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.losses import linear_warmup
from zsl.models.generative.nets import (
    Decoder,
    GaussianEncoder,
    GeneratorNet,
    randn,
    reparameterize,
)
from zsl.models.generative.second_stage import SecondStage
from zsl.models.hparams import check_positive
from zsl.models.optim import adam


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per row [B]."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def gaussian_w2(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """2-Wasserstein distance between diagonal Gaussians per row [B]:
    ``sqrt(||mu1 - mu2||^2 + ||sigma1 - sigma2||^2)``."""
    sq = (mean1 - mean2).pow(2).sum(dim=1)
    sq = sq + (torch.exp(0.5 * logvar1) - torch.exp(0.5 * logvar2)).pow(2).sum(dim=1)
    return torch.sqrt(sq + 1e-12)


def within_class_std(x: Tensor, labels: Tensor) -> Tensor:
    """Per-dimension pooled within-class standard deviation of rows ``x`` [N, E] -> [E]."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype, device=x.device)
    means = sums.index_add_(0, inverse, x) / counts[:, None].to(x.dtype)
    return (x - means[inverse]).pow(2).mean(dim=0).sqrt()


def l1_rows(pred: Tensor, target: Tensor) -> Tensor:
    """Summed absolute error per row [B] (the paper's L1 reconstruction loss)."""
    return (pred - target).abs().sum(dim=1)


class CADAVAE(GenerativeZSL):
    """CADA-VAE (Schönfeld et al., CVPR 2019): cross- and distribution-aligned VAEs.

    Defaults follow the authors' CUB configuration (latent 64; feature VAE 1560/1660 hidden,
    attribute VAE 1450/665; Adam 1.5e-4 with AMSGrad; 100 epochs; warm-ups: KL 0.25 over
    epochs 0-93, cross-reconstruction 2.37 over 21-75, alignment 8.13 over 6-22; classifier on
    200 latents per seen and 400 per unseen class, 23 epochs, lr 1e-3, batch 32).
    ``warmup_scale`` multiplies every warm-up epoch, for shorter schedules.
    """

    default_second_stage = SecondStage(n_synth=400, cls_epochs=23, cls_lr=1e-3, cls_batch_size=32)

    example_space = "latent codes"
    feature_scale: Tensor
    semantic_scale: Tensor
    latent_within_std: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        latent_dim: int = 64,
        feature_hidden: Sequence[int] = (1560, 1660),
        attribute_hidden: Sequence[int] = (1450, 665),
        lr: float = 1.5e-4,
        beta_factor: float = 0.25,
        beta_warmup: Sequence[float] = (0, 93),
        cross_factor: float = 2.37,
        cross_warmup: Sequence[float] = (21, 75),
        distance_factor: float = 8.13,
        distance_warmup: Sequence[float] = (6, 22),
        warmup_scale: float = 1.0,
        n_seen_per_class: int = 200,
        unseen_spread: float = 0.0,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        if not unseen_spread >= 0:
            raise ValueError(f"unseen_spread must be >= 0, got {unseen_spread}")
        check_positive(
            latent_dim=latent_dim,
            warmup_scale=warmup_scale,
            n_seen_per_class=n_seen_per_class,
        )
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)

    #: widens the synthetic unseen latents only: points over it share one VAE fit
    synthesis_params = ("unseen_spread",)

    @classmethod
    def steps_transfer_params(cls, params: Mapping[str, Any], epoch_ratio: float) -> dict[str, Any]:
        """The warm-ups keep their length in updates: ``warmup_scale`` times ``epoch_ratio``."""
        out = dict(params)
        out["warmup_scale"] = float(out.get("warmup_scale", 1.0)) * float(epoch_ratio)
        return out

    def classifier_dim(self) -> int:
        """The classifier sees latent codes."""
        return int(self.hp.latent_dim)

    def configure_models(self) -> None:
        hp = self.hp
        fenc, fdec = (int(h) for h in hp.feature_hidden)
        aenc, adec = (int(h) for h in hp.attribute_hidden)
        latent = int(hp.latent_dim)
        self.feature_encoder = GaussianEncoder(self.feature_dim, fenc, latent)
        self.feature_decoder = Decoder(latent, fdec, self.feature_dim)
        self.attribute_encoder = GaussianEncoder(self.n_attributes, aenc, latent)
        self.attribute_decoder = Decoder(latent, adec, self.n_attributes)
        # features and semantics are multiplied by these scalars (fitted in on_fit_start on
        # seen-class data) so that their mean absolute entry is 1: the paper's summed L1
        # reconstruction on raw CNN features outweighs the KL term by orders of magnitude; on
        # L2-normalised features and attributes (entries ~1e-2) it would not, and the
        # posteriors collapse onto the prior. Both are saved with the checkpoint.
        self.register_buffer("feature_scale", torch.ones(()))
        self.register_buffer("semantic_scale", torch.ones(()))
        # within-class std of seen posterior means, per latent dimension (see unseen_spread)
        self.register_buffer("latent_within_std", torch.zeros(latent))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), float(self.hp.lr), (0.9, 0.999), amsgrad=True)

    def feature_generator(self) -> GeneratorNet | None:
        """None: the feature decoder ends in a linear layer and needs no start."""
        return None

    # -- training -----------------------------------------------------------------------
    def prepare_training(self, features: Tensor, labels: Tensor) -> None:
        """Fit the input scales on the seen training features and semantics."""
        self.feature_scale.fill_(1.0 / float(features.abs().mean().clamp_min(1e-12)))
        seen = self.seen_semantics()
        self.semantic_scale.fill_(1.0 / float(seen.abs().mean().clamp_min(1e-12)))

    def loss_weights(self, epoch: int) -> dict[str, float]:
        """KL (beta), cross-reconstruction and distribution-alignment weights at ``epoch``."""
        hp = self.hp
        scale = float(hp.warmup_scale)

        def ramp(factor: float, window: Sequence[float]) -> float:
            start, end = (float(e) * scale for e in window)
            return float(factor) * linear_warmup(epoch, start, end)

        return {
            "beta": ramp(hp.beta_factor, hp.beta_warmup),
            "cross": ramp(hp.cross_factor, hp.cross_warmup),
            "distance": ramp(hp.distance_factor, hp.distance_warmup),
        }

    def vae_losses(
        self, features: Tensor, semantics: Tensor, with_cross: bool = True
    ) -> dict[str, Tensor]:
        """The batch means of every CADA-VAE term (unweighted); inputs already scaled.
        ``with_cross=False`` leaves out the cross-reconstruction (``cross``), which costs a
        second pass through the feature decoder."""
        mu_x, logvar_x = self.feature_encoder(features)
        mu_a, logvar_a = self.attribute_encoder(semantics)
        z_x, z_a = reparameterize(mu_x, logvar_x), reparameterize(mu_a, logvar_a)
        recon = l1_rows(self.feature_decoder(z_x), features) + l1_rows(
            self.attribute_decoder(z_a), semantics
        )
        kl = gaussian_kl(mu_x, logvar_x) + gaussian_kl(mu_a, logvar_a)
        distance = gaussian_w2(mu_x, logvar_x, mu_a, logvar_a)
        terms = {"recon": recon.mean(), "kl": kl.mean(), "distance": distance.mean()}
        if with_cross:
            cross = l1_rows(self.feature_decoder(z_a), features) + l1_rows(
                self.attribute_decoder(z_x), semantics
            )
            terms["cross"] = cross.mean()
        return terms

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        """The weighted sum of :meth:`vae_losses` at the epoch's warm-up weights. While the
        cross-reconstruction weight is still 0 (the first ``cross_warmup[0] * warmup_scale``
        epochs) the term is not computed: it would add exact zeros to the loss and gradients."""
        w = self.loss_weights(self.current_epoch)
        terms = self.vae_losses(
            batch.features * self.feature_scale,
            seen_semantics[local_labels] * self.semantic_scale,
            with_cross=w["cross"] != 0.0,
        )
        loss = terms["recon"] + w["beta"] * terms["kl"]
        if "cross" in terms:
            loss = loss + w["cross"] * terms["cross"]
        loss = loss + w["distance"] * terms["distance"]
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()},
            on_step=False,
            on_epoch=True,
            batch_size=int(batch.labels.numel()),  # not inferred by walking the batch
        )
        return loss

    # -- classifier space ---------------------------------------------------------------
    def embed(self, features: Tensor) -> Tensor:
        return self.feature_encoder(features * self.feature_scale)[0]

    def embed_seen(
        self, features: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``n_seen_per_class`` latent samples per seen class, each from the posterior of a real
        feature of the class drawn with replacement (the reference implementation's sampling;
        every feature is encoded once)."""
        n = int(self.hp.n_seen_per_class)
        mean, logvar = self.feature_encoder(features * self.feature_scale)
        order = torch.argsort(labels, stable=True)
        classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        self.latent_within_std.copy_(within_class_std(mean, labels))
        u = torch.rand(classes.numel(), n, generator=generator).to(features.device)
        offset = (u * counts[:, None]).long().clamp(max=counts[:, None] - 1)
        pick = order[starts[:, None] + offset].flatten()
        return reparameterize(mean[pick], logvar[pick], generator), classes.repeat_interleave(n)

    def attribute_latents(
        self, semantics: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` samples of the attribute encoder's posterior per row of ``semantics`` [K, A]
        -> [K * n, L], grouped by row."""
        mean, logvar = self.attribute_encoder(semantics * self.semantic_scale)
        return reparameterize(
            mean.repeat_interleave(n, 0), logvar.repeat_interleave(n, 0), generator
        )

    def synthesize(self, class_semantics: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """Attribute-encoder latents, widened by ``unseen_spread`` x the seen classes'
        within-class std (measured by the last :meth:`embed_seen`)."""
        z = self.attribute_latents(class_semantics, n, generator)
        spread = float(self.hp.unseen_spread)
        if spread > 0:
            z = z + spread * self.latent_within_std * randn(tuple(z.shape), generator, z)
        return z

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Features decoded from attribute-encoder latents (cross-modal generation)."""
        return (
            self.feature_decoder(self.attribute_latents(attributes, n, generator))
            / self.feature_scale
        )
