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

from zsl.models.generative.losses import vae_loss
from zsl.models.generative.vaegan_base import VAEGANBase

__all__ = ["FVAEGAN", "vae_loss"]


class FVAEGAN(VAEGANBase):
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
    noise's norm (:class:`~zsl.models.generative.nets.FeedbackGenerator`), and ``gen_ema``
    synthesises from a moving average of the generator's weights (tf-VAEGAN: also of the
    feedback module; see :attr:`~zsl.models.generative.base.GenerativeZSL.averaged`). With
    ``recon_weight`` 1 the summed squared error of unit-norm features can fall by at most about
    1 against the KL term and the posterior collapses; the CPU configs weight it 100
    (docs/generative.md has the CUB measurements).

    ``encoded_noise`` (the authors' image scripts, ``--encoded_noise``): the WGAN's fakes are
    generated from the encoder's posterior sample of the real batch instead of prior noise, so
    the critic and the generator's adversarial term (and tf-VAEGAN's semantic term) see the
    VAE's reconstructions, and the adversarial gradient also reaches the encoder. Synthesis
    always draws prior noise.

    ``unit_norm_output`` (False = the paper): the generator's outputs are L2-normalised, so
    generated features lie on the unit sphere with the L2-normalised real ones
    (:class:`~zsl.models.generative.nets.FeedbackGenerator`; a fit on features that are not
    unit-norm is refused).
    """
