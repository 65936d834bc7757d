"""f-CLSWGAN: Feature Generating Networks for Zero-Shot Learning (Xian, Lorenz, Schiele, Akata,
CVPR 2018, https://arxiv.org/abs/1712.00981).

A conditional Wasserstein GAN with gradient penalty (Gulrajani et al., NeurIPS 2017) generates
image features from class semantics, G(z, a); the generator also minimises the cross-entropy of
a softmax classifier pre-trained (and frozen) on the seen classes, weighted by ``cls_weight``
(beta in the paper). The GZSL classifier of :class:`~zsl.models.generative.base.GenerativeZSL` is
then trained on real seen + generated unseen features.

Training uses Lightning's manual optimisation: every batch of real seen features is split into
``n_critic`` critic mini-batches (one critic step each, as the reference code draws ``n_critic``
fresh mini-batches per generator step), followed by one generator step on the whole batch's
classes. With ``data.batch_size=320`` the critic batch is the paper's 64.

``gen_ema`` (an addition, null = the paper) keeps an exponential moving average of the
generator's weights, updated after every generator step, and synthesises from the average
instead of the last iterate (weight averaging of GAN generators: Yazici et al., "The Unusual
Effectiveness of Averaging in GAN Training", ICLR 2019). With the high learning rate a CPU
budget needs, the last iterate jitters from step to step; the average is a smoother
generator. Measured on CUB VGG validation classes (256 hidden units, lr 1e-3, 37 generator
steps per epoch; one generator run, the last iterate and the averages of the same run
compared at the same epochs): GZSL H at epochs 19/22/25/30/35 was 45.3/45.4/45.4/44.3/44.5
for the last iterate, 46.4/47.2/47.1/46.2/44.9 with decay 0.995 and 44.9/45.7/47.1/47.3/46.8
with 0.998 (ZSL top-1 about 54 instead of 50).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.data.types import ZSLBatch
from zsl.models.generative.base import GenerativeZSL
from zsl.models.generative.losses import critic_loss, gradient_penalty
from zsl.models.generative.nets import (
    FeatureCritic,
    FeatureGenerator,
    GeneratorNet,
    check_condition_norm,
    default_noise_dim,
    randn,
    unit_norm_setting,
)
from zsl.models.generative.second_stage import SecondStage, fit_softmax_classifier
from zsl.models.hparams import check_positive
from zsl.models.optim import adam

__all__ = ["CLSWGAN", "clswgan_iteration", "critic_loss", "gradient_penalty"]


def clswgan_iteration(
    generator: FeatureGenerator,
    critic: FeatureCritic,
    opt_g: Any,
    opt_d: Any,
    seen_logits: Callable[[Tensor], Tensor],
    real: Tensor,
    semantics: Tensor,
    local_labels: Tensor,
    n_critic: int,
    gp_weight: float,
    cls_weight: float,
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> dict[str, Tensor]:
    """One f-CLSWGAN iteration on a batch of real seen features [B, D] with their class
    semantics [B, A] and local labels [B]: ``n_critic`` critic steps, each on one of
    ``n_critic`` chunks of the batch, then one generator step on the whole batch's classes
    minimising ``-D(G(z, a), a) + cls_weight * CE(seen_logits(G(z, a)), y)``.
    Returns the detached losses."""
    noise_dim = generator.noise_dim
    critic.requires_grad_(True)
    for real_k, sem_k in zip(real.chunk(n_critic), semantics.chunk(n_critic)):
        with torch.no_grad():
            fake_k = generator(randn((real_k.shape[0], noise_dim), None, real_k), sem_k)
        loss_d, wasserstein = critic_loss(critic, real_k, fake_k, sem_k, gp_weight)
        opt_d.zero_grad(set_to_none=True)
        backward(loss_d)
        opt_d.step()

    critic.requires_grad_(False)  # generator step: no critic weight gradients
    try:
        fake = generator(randn((real.shape[0], noise_dim), None, real), semantics)
        loss_adv = -critic(fake, semantics).mean()
        loss_cls = F.cross_entropy(seen_logits(fake), local_labels)
        loss_g = loss_adv + cls_weight * loss_cls
        opt_g.zero_grad(set_to_none=True)
        backward(loss_g)
        opt_g.step()
    finally:
        critic.requires_grad_(True)
    return {
        "critic_loss": loss_d.detach(),
        "wasserstein": wasserstein,
        "generator_loss": loss_g.detach(),
        "cls_loss": loss_cls.detach(),
    }


class CLSWGAN(GenerativeZSL):
    """f-CLSWGAN (Xian et al., CVPR 2018): WGAN-GP feature generator + classification loss.

    Defaults are the paper's (4096 hidden units, Adam 1e-4 / betas (0.5, 0.999), 5 critic
    steps, lambda 10, beta 0.01, noise size = number of attributes, 300 synthetic features per
    unseen class, final classifier 25 epochs at 1e-3, no weight averaging);
    ``zsl/conf/model/clswgan.yaml`` shrinks the networks for CPU budgets.

    ``gen_ema`` in [0, 1): per-step decay of the generator's weight average that synthesises
    features (``generator_ema``; null = synthesise from the trained generator itself).
    ``condition_norm`` (null = the paper): the attributes enter the generator at that multiple
    of the noise's norm (see :class:`~zsl.models.generative.nets.FeedbackGenerator`).
    ``unit_norm_output`` (false = the paper; ``"auto"``: when the training features are
    unit-norm): every generated feature is L2-normalised, as the real ones are.
    """

    default_second_stage = SecondStage(n_synth=300, cls_epochs=25, cls_lr=1e-3, cls_batch_size=64)

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        gen_hidden: int = 4096,
        critic_hidden: int = 4096,
        noise_dim: int | None = None,
        lr: float = 1e-4,
        beta1: float = 0.5,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        cls_weight: float = 0.01,
        gen_ema: float | None = None,
        condition_norm: float | None = None,
        unit_norm_output: bool | str = False,
        pretrain_epochs: int = 50,
        pretrain_lr: float = 1e-3,
        second_stage: SecondStage | Mapping[str, Any] | None = None,
    ) -> None:
        check_positive(
            gen_hidden=gen_hidden,
            critic_hidden=critic_hidden,
            n_critic=n_critic,
        )
        check_condition_norm(condition_norm)
        super().__init__(feature_dim, n_attributes, n_classes, second_stage)
        self.automatic_optimization = False

    def configure_models(self) -> None:
        hp = self.hp
        noise_dim = default_noise_dim(hp.noise_dim, self.n_attributes, self.feature_dim)
        self.generator = FeatureGenerator(
            self.n_attributes,
            noise_dim,
            hp.gen_hidden,
            self.feature_dim,
            hp.get("condition_norm"),
            unit_norm_setting(hp.get("unit_norm_output", False)),
        )
        self.critic = FeatureCritic(self.feature_dim, self.n_attributes, hp.critic_hidden)
        # softmax classifier over global ids, used on the seen columns only; pre-trained in
        # on_fit_start and frozen (not in any optimizer)
        self.seen_classifier = nn.Linear(self.feature_dim, self.n_classes)
        nn.init.zeros_(self.seen_classifier.weight)
        nn.init.zeros_(self.seen_classifier.bias)
        self.seen_classifier.requires_grad_(False)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (float(self.hp.beta1), 0.999)
        lr = float(self.hp.lr)
        return [
            adam(self.generator.parameters(), lr, betas),
            adam(self.critic.parameters(), lr, betas),
        ]

    def feature_generator(self) -> GeneratorNet:
        """The generator G(z, a) (started at the mean training feature by the base)."""
        return self.generator

    # -- training -----------------------------------------------------------------------
    def prepare_training(self, features: Tensor, labels: Tensor) -> None:
        """Pre-train the frozen seen-class classifier of the classification loss."""
        gen = torch.Generator().manual_seed(self.second_stage.eval_seed)
        weight, bias = fit_softmax_classifier(
            features,
            self.to_local(labels),
            self.seen_ids.numel(),
            int(self.hp.pretrain_epochs),
            float(self.hp.pretrain_lr),
            512,
            0.0,
            gen,
        )
        with torch.no_grad():
            self.seen_classifier.weight.zero_()
            self.seen_classifier.bias.zero_()
            self.seen_classifier.weight[self.seen_ids] = weight.T
            self.seen_classifier.bias[self.seen_ids] = bias

    def seen_logits(self, features: Tensor) -> Tensor:
        """Logits of the pre-trained classifier over the seen classes (local order)."""
        return self.seen_classifier(features)[:, self.seen_ids]

    def training_loss(
        self, batch: ZSLBatch, local_labels: Tensor, seen_semantics: Tensor
    ) -> Tensor:
        """One f-CLSWGAN iteration with Lightning's manual optimisation (see
        :func:`clswgan_iteration`). Returns the generator loss for logging."""
        hp = self.hp
        opt_g, opt_d = self.optimizers()  # type: ignore[misc, attr-defined]
        losses = clswgan_iteration(
            self.generator,
            self.critic,
            opt_g,
            opt_d,
            self.seen_logits,
            batch.features,
            seen_semantics[local_labels],
            local_labels,
            int(hp.n_critic),
            float(hp.gp_weight),
            float(hp.cls_weight),
            backward=self.manual_backward,
        )
        self.check_finite(losses["critic_loss"], "critic loss")
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if k != "generator_loss"},
            on_step=False,
            on_epoch=True,
            batch_size=int(batch.labels.numel()),  # not inferred by walking the batch
        )
        return losses["generator_loss"]

    # -- generation ---------------------------------------------------------------------
    def sampler(self) -> FeatureGenerator:
        """The network that synthesises features: the weight average with ``gen_ema``, else
        the trained generator."""
        net = self.synthesis_net("generator")
        assert isinstance(net, FeatureGenerator)
        return net

    def generate_features(
        self, attributes: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` features per attribute vector from :meth:`sampler`."""
        return self.sampler().sample(attributes, n, generator)
