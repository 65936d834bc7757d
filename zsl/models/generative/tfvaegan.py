"""tf-VAEGAN: f-VAEGAN with a semantic embedding decoder whose latent is fed back.

**tf-VAEGAN** (Narayan, Gupta, Khan, Snoek, Shao, "Latent Embedding Feedback and
Discriminative Features for Zero-Shot Classification", ECCV 2020,
https://arxiv.org/abs/2003.07833). f-VAEGAN plus a semantic embedding decoder Dec(x) -> (a,
h) trained to recover the class attributes from real and generated features, and a feedback
module F(h) whose output is added (times ``feedback_weight``) to the generator's hidden layer:
a feature is generated, decoded, and generated again with the decoder's latent fed back, in
training and in synthesis. The GZSL classifier sees ``[x, Dec(x), h(x)]``: the features
concatenated with the decoder's output and hidden layer, as in the paper.

The model is f-VAEGAN's (:class:`~zsl.models.generative.vaegan_base.VAEGANBase`) and training
follows :mod:`zsl.models.generative.vaegan` (manual optimisation, ``n_critic`` critic
steps per batch); the decoder also takes a step on each real critic batch, and the feedback
module and the decoder step with the encoder and generator. The semantic decoder's loss is the
squared error of its L2-normalised output against the (L2-normalised) attributes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.models.generative.losses import semantic_loss
from zsl.models.generative.nets import init_normal
from zsl.models.generative.vaegan_base import VAEGANBase
from zsl.models.hparams import check_nonnegative, check_positive
from zsl.models.optim import adam

__all__ = ["Feedback", "SemanticDecoder", "TFVAEGAN", "semantic_loss"]


class SemanticDecoder(nn.Module):
    """Dec(x): a feature [B, D] -> (L2-normalised attributes [B, A], hidden layer [B, H])."""

    def __init__(self, feature_dim: int, hidden: int, n_attributes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, n_attributes)
        init_normal(self)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(features)
        return F.normalize(self.head(h), dim=1), h


class Feedback(nn.Module):
    """F(h): the decoder's hidden layer [B, H_dec] -> a correction of the generator's hidden
    layer [B, H_gen] (two LeakyReLU layers, as in the paper)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, out_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(out_dim, out_dim),
            nn.LeakyReLU(0.2),
        )
        init_normal(self)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.net(hidden)


class TFVAEGAN(VAEGANBase):
    """tf-VAEGAN (Narayan et al., ECCV 2020): f-VAEGAN + semantic embedding decoder + feedback.

    Defaults are the authors' CUB script (decoder and feedback 4096 units, decoder lr 1e-4,
    feedback lr 1e-5, semantic reconstruction weight 0.01, feedback weight 1 in training and
    synthesis). ``feedback_weight`` (a1) scales the feedback in training, ``synth_feedback_weight``
    (a2) in synthesis; ``semantic_weight`` the decoder's loss on real and generated features.
    """

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        decoder_hidden: int = 4096,
        semantic_weight: float = 0.01,
        feedback_weight: float = 1.0,
        synth_feedback_weight: float = 1.0,
        decoder_lr: float = 1e-4,
        feedback_lr: float = 1e-5,
        **vaegan: Any,
    ) -> None:
        """The decoder and feedback settings; ``vaegan``: f-VAEGAN's arguments
        (:class:`~zsl.models.generative.vaegan.FVAEGAN`; the config check and the saved
        hyper-parameters read both)."""
        check_positive(
            decoder_hidden=decoder_hidden, decoder_lr=decoder_lr, feedback_lr=feedback_lr
        )
        check_nonnegative(
            semantic_weight=semantic_weight,
            feedback_weight=feedback_weight,
            synth_feedback_weight=synth_feedback_weight,
        )
        super().__init__(feature_dim, n_attributes, n_classes, **vaegan)

    def configure_models(self) -> None:
        hp = self.hp
        self.decoder = SemanticDecoder(self.feature_dim, hp.decoder_hidden, self.n_attributes)
        self.feedback_module = Feedback(hp.decoder_hidden, hp.hidden)
        super().configure_models()

    averaged = ("generator", "feedback_module")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (float(self.hp.beta1), 0.999)
        return [
            *super().configure_optimizers(),
            adam(self.decoder.parameters(), float(self.hp.decoder_lr), betas),
            adam(self.feedback_module.parameters(), float(self.hp.feedback_lr), betas),
        ]

    def generator_optimizers(self) -> list[Any]:
        opts = self.optimizers()
        return [opts[0], opts[2], opts[3]]  # type: ignore[index]

    def classifier_dim(self) -> int:
        """The classifier sees [x, Dec(x), hidden(x)]."""
        return self.feature_dim + self.n_attributes + int(self.hp.decoder_hidden)

    def embed(self, features: Tensor) -> Tensor:
        decoded, hidden = self.decoder(features)
        return torch.cat([features, decoded, hidden], dim=1)

    def generate(self, noise: Tensor, semantics: Tensor, synthesis: bool = False) -> Tensor:
        """Two passes: x0 = G(z, a); h = Dec's hidden layer of x0 (detached); x = G(z, a,
        w * F(h)), with w = a1 in training and a2 (and the ``gen_ema`` averages) in
        ``synthesis``."""
        if synthesis:
            generator, feedback = (
                self.synthesis_net("generator"),
                self.synthesis_net("feedback_module"),
            )
            weight = float(self.hp.synth_feedback_weight)
        else:
            generator, feedback = self.generator, self.feedback_module
            weight = float(self.hp.feedback_weight)
        first = generator(noise, semantics)
        _, hidden = self.decoder(first)
        return generator(noise, semantics, weight * feedback(hidden.detach()))  # type: ignore[no-any-return]

    def critic_step(self, real: Tensor, semantics: Tensor, opt_d: Any) -> Tensor:
        """A decoder step on the real chunk (semantic reconstruction), then the critic step."""
        opt_dec = self.optimizers()[2]  # type: ignore[index]
        decoded, _ = self.decoder(real)
        loss = float(self.hp.semantic_weight) * semantic_loss(decoded, semantics)
        opt_dec.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_dec.step()
        return super().critic_step(real, semantics, opt_d)

    def generator_terms(self, real: Tensor, semantics: Tensor) -> dict[str, Tensor]:
        terms = super().generator_terms(real, semantics)
        decoded, _ = self.decoder(terms["_fake"])
        terms["semantic"] = semantic_loss(decoded, semantics)
        return terms

    def generator_loss(self, terms: dict[str, Tensor]) -> Tensor:
        return super().generator_loss(terms) + float(self.hp.semantic_weight) * terms["semantic"]
