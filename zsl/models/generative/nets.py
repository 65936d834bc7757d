"""Networks shared by the feature-generating models (plain ``nn.Module``s, no training logic).

* :class:`GeneratorNet`: the base of every feature generator that
  :class:`~zsl.models.generative.base.GenerativeZSL` starts itself (output bias at the mean
  training feature; unit-norm outputs checked against the data).
* f-CLSWGAN (Xian et al., CVPR 2018): :class:`FeatureGenerator` G(z, a) and
  :class:`FeatureCritic` D(x, a), one hidden LeakyReLU layer each.
* f-VAEGAN, tf-VAEGAN and SE-GZSL: :class:`FeedbackGenerator` G(z, a[, feedback]).
* CADA-VAE (Schönfeld et al., CVPR 2019): :class:`GaussianEncoder` (x -> mean, log-variance)
  and :class:`Decoder` (z -> x), one hidden ReLU layer each.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) weights and zero biases for every ``nn.Linear`` (the f-CLSWGAN init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """Exponential moving average of weights, in place:
    ``average <- decay * average + (1 - decay) * model`` for every parameter and floating-point
    buffer (the two modules must have the same architecture)."""
    pairs: list[tuple[Tensor, Tensor]] = [
        *zip(average.parameters(), model.parameters(), strict=True)
    ]
    pairs += [
        (a, m)
        for a, m in zip(average.buffers(), model.buffers(), strict=True)
        if a.is_floating_point()
    ]
    for avg, cur in pairs:
        if avg.shape != cur.shape:
            raise ValueError(
                f"ema_update: averaged tensor {tuple(avg.shape)} vs model {tuple(cur.shape)}"
            )
        avg.lerp_(cur, 1.0 - decay)


def init_xavier(module: nn.Module, gain: float = 0.5) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` (the CADA-VAE init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)


class GeneratorNet(nn.Module):
    """Base of a feature generator whose last layer ``output`` (an ``nn.Linear`` to the
    feature size) feeds a ReLU, as CNN (post-ReLU) features are non-negative.

    :meth:`GenerativeZSL.on_fit_start <zsl.models.generative.base.GenerativeZSL.on_fit_start>`
    calls :meth:`init_output_bias` once, on the first fit, and refuses training features that
    are not unit-norm when :attr:`unit_norm` is set. A subclass builds ``output`` (and
    ``noise_dim``, the size of the noise it takes) in its ``__init__``.
    """

    #: the size of the Gaussian noise the generator takes
    noise_dim: int
    #: the last linear layer (its bias starts at the mean training feature)
    output: nn.Linear
    #: whether every generated feature is L2-normalised (then the real ones must be too)
    unit_norm: bool = False

    @torch.no_grad()
    def init_output_bias(self, feature_mean: Tensor) -> None:
        """Start the outputs at the mean training feature (data-dependent init): with the
        N(0, 0.02) init the ReLU outputs start around 0 and output units whose pre-activation
        turns negative for every input never recover (dead features)."""
        self.output.bias.copy_(feature_mean)

    def check_training_features(self, features: Tensor, owner: str) -> None:
        """Warn if the real training ``features`` [N, D] have negative values (the ReLU output
        cannot produce them); with :attr:`unit_norm`, refuse features that are not unit-norm.
        ``owner`` names the model in the messages."""
        if bool((features < 0).any()):
            warnings.warn(
                f"{owner}: training features have negative values, but the generator ends in "
                "a ReLU (CNN features are non-negative); use non-negative preprocessing (l2 / "
                "minmax of ReLU features)",
                stacklevel=3,
            )
        if self.unit_norm:
            norms = features.norm(dim=1)
            if not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)):
                raise ValueError(
                    f"{owner}: unit_norm_output generates unit-norm features, but the training "
                    f"features' L2 norms range from {float(norms.min()):.4g} to "
                    f"{float(norms.max()):.4g}; use L2-normalised features "
                    "(data.preprocess=l2) or unit_norm_output=false"
                )


class FeatureGenerator(GeneratorNet):
    """G(z, a): Gaussian noise [B, Z] and class semantics [B, A] -> features [B, D]
    (f-CLSWGAN's generator, one LeakyReLU hidden layer, a ReLU output)."""

    def __init__(self, n_attributes: int, noise_dim: int, hidden: int, feature_dim: int) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.hidden = nn.Sequential(nn.Linear(n_attributes + noise_dim, hidden), nn.LeakyReLU(0.2))
        self.output = nn.Linear(hidden, feature_dim)
        init_normal(self)

    def forward(self, noise: Tensor, semantics: Tensor) -> Tensor:
        return torch.relu(self.output(self.hidden(torch.cat([noise, semantics], dim=1))))

    def sample(
        self, semantics: Tensor, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` features per row of ``semantics`` [K, A] -> (features [K*n, D], rows [K*n])."""
        noise, rows = class_noise(semantics, n, self.noise_dim, generator)
        return self(noise, semantics[rows]), rows


class FeedbackGenerator(GeneratorNet):
    """G(z, a) with one LeakyReLU hidden layer h and a ReLU output (CNN features are
    non-negative); ``feedback`` [B, H], if given, is added to h first (tf-VAEGAN). The generator
    of f-VAEGAN, tf-VAEGAN and SE-GZSL.

    ``condition_norm`` (None = the papers): rescale the L2-normalised attributes to that
    multiple of the noise's expected norm sqrt(Z) before they enter the network. With Z = 312
    noise dimensions the unit-norm attributes are 1/18 of the input's norm, and a small network
    trained briefly hardly conditions on them (see :class:`~zsl.models.generative.vaegan.
    FVAEGAN`).

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

    def sample(self, semantics: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` features per row of ``semantics`` [K, A] -> [K*n, D], grouped by row."""
        noise, rows = class_noise(semantics, n, self.noise_dim, generator)
        return self(noise, semantics[rows])  # type: ignore[no-any-return]


def check_condition_norm(condition_norm: float | None) -> None:
    """Refuse a non-positive :class:`FeedbackGenerator` ``condition_norm`` (null is fine)."""
    if condition_norm is not None and not condition_norm > 0:
        raise ValueError(f"condition_norm must be positive or null, got {condition_norm}")


class FeatureCritic(nn.Module):
    """D(x, a): a feature [B, D] and its class semantics [B, A] -> an unbounded score [B]."""

    def __init__(self, feature_dim: int, n_attributes: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim + n_attributes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )
        init_normal(self)

    def forward(self, features: Tensor, semantics: Tensor) -> Tensor:
        return self.net(torch.cat([features, semantics], dim=1)).squeeze(1)


class GaussianEncoder(nn.Module):
    """x [B, I] -> (mean [B, L], log-variance [B, L]) of a diagonal Gaussian posterior."""

    def __init__(self, in_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_xavier(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mean(h), self.logvar(h)


class Decoder(nn.Module):
    """z [B, L] -> reconstruction [B, O] (one hidden ReLU layer, linear output)."""

    def __init__(self, latent_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )
        init_xavier(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device, returned on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like.device, like.dtype)


def class_noise(
    semantics: Tensor, n: int, noise_dim: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Noise [K*n, noise_dim] for ``n`` samples of each row of ``semantics`` [K, A], and the row
    each sample belongs to [K*n] (grouped: row ``k`` owns ``k*n .. k*n + n - 1``)."""
    rows = torch.arange(semantics.shape[0], device=semantics.device).repeat_interleave(n)
    return randn((rows.numel(), noise_dim), generator, semantics), rows


def reparameterize(
    mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A sample mean + sigma * eps of N(mean, diag(exp(logvar)))."""
    return mean + torch.exp(0.5 * logvar) * randn(tuple(mean.shape), generator, mean)
