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

from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsl.models.hparams import UNIT_NORM_WORDS


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


UnitNorm = bool | Literal["auto", "signed"]


def feature_kind(features: Tensor) -> dict[str, Any]:
    """The sign and norm of training features [N, D]: ``features`` (``"non-negative"`` or
    ``"signed"``) and ``unit_norm_features`` (every L2 norm is 1 within 1e-3)."""
    norms = features.norm(dim=1)
    return {
        "features": "non-negative" if bool((features >= 0).all()) else "signed",
        "unit_norm_features": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)),
    }


def unit_norm_setting(value: object, owner: str = "unit_norm_output") -> UnitNorm:
    """``true``/``false``, ``"auto"`` (unit-norm outputs exactly when the training features are
    unit-norm) or ``"signed"`` (exactly when they are unit-norm and signed: the generator has a
    linear output); anything else is refused."""
    if isinstance(value, bool):
        return value
    if value in UNIT_NORM_WORDS:
        return cast(UnitNorm, value)
    raise ValueError(f"{owner} must be true, false, auto or signed, got {value!r}")


def default_noise_dim(noise_dim: int | None, n_attributes: int, feature_dim: int) -> int:
    """The generator's noise size: ``noise_dim`` if set, else the papers' choice (as many noise
    dimensions as attributes) capped at the feature size, so that low-dimensional features
    (PCA/whitened, 64-d) are not drawn from a noise space larger than themselves."""
    if noise_dim is not None:
        return int(noise_dim)
    return max(1, min(int(n_attributes), int(feature_dim)))


class GeneratorNet(nn.Module):
    """Base of a feature generator whose last layer ``output`` (an ``nn.Linear`` to the
    feature size) is adapted, on the first fit, to the features it must produce
    (:meth:`adapt`):

    * non-negative features (post-ReLU CNN features, as in the papers): a ReLU output whose bias
      starts at the mean training feature;
    * signed features (CLIP/ViT/DINO embeddings, PCA-whitened features): a linear output with
      standardised targets, ``output(h) * std + mean`` (per dimension, from the training
      features), so the layer predicts unit-scale values around zero;
    * ``unit_norm`` (``True``, ``False``, ``"auto"``: exactly when the training features are
      unit-norm, or ``"signed"``: exactly when they are unit-norm and signed, so the output is
      linear): every output is L2-normalised.

    :meth:`GenerativeZSL.on_fit_start <zsl.models.generative.base.GenerativeZSL.on_fit_start>`
    calls :meth:`adapt` with the real training features; the choice is saved in checkpoints
    (the ``output_*`` buffers). A subclass
    builds ``output`` (and ``noise_dim``, the size of the noise it takes) in its ``__init__``
    after calling ``super().__init__(feature_dim, unit_norm)``, and ends its ``forward`` with
    :meth:`finish`.
    """

    #: the size of the Gaussian noise the generator takes
    noise_dim: int
    #: the last linear layer
    output: nn.Linear
    output_shift: Tensor
    output_scale: Tensor
    output_linear: Tensor
    output_unit_norm: Tensor

    def __init__(self, feature_dim: int, unit_norm: UnitNorm = False) -> None:
        super().__init__()
        self.unit_norm_setting: UnitNorm = unit_norm_setting(unit_norm)
        #: whether every generated feature is L2-normalised (decided by :meth:`adapt` for auto)
        self.unit_norm = unit_norm is True
        #: "relu" (non-negative features) or "linear" (signed, standardised targets)
        self.activation: Literal["relu", "linear"] = "relu"
        self.register_buffer("output_shift", torch.zeros(feature_dim))
        self.register_buffer("output_scale", torch.ones(feature_dim))
        # the choice, saved in checkpoints (read through the plain attributes above)
        self.register_buffer("output_linear", torch.tensor(False))
        self.register_buffer("output_unit_norm", torch.tensor(self.unit_norm))

    def finish(self, pre: Tensor) -> Tensor:
        """The output layer's result [B, D] -> generated features: a ReLU, or the standardised
        targets mapped back; then the L2 normalisation with :attr:`unit_norm`."""
        if self.activation == "relu":
            out = torch.relu(pre)
        else:
            out = torch.addcmul(self.output_shift, pre, self.output_scale)
        return F.normalize(out, dim=1) if self.unit_norm else out

    @torch.no_grad()
    def init_output_bias(self, feature_mean: Tensor) -> None:
        """Start the outputs at the mean training feature (data-dependent init): with the
        N(0, 0.02) init the ReLU outputs start around 0 and output units whose pre-activation
        turns negative for every input never recover (dead features)."""
        self.output.bias.copy_(feature_mean)

    @torch.no_grad()
    def adapt(
        self,
        features: Tensor,
        owner: str,
        first: bool = True,
        kind: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Fit the output to the real training ``features`` [N, D] and return the choice.

        On the ``first`` fit: ReLU with its bias at the mean feature when every feature is
        non-negative, else a linear output with standardised targets (shift = mean, scale = the
        per-dimension standard deviation); with ``unit_norm`` auto, unit-norm outputs exactly
        when every training feature has norm 1 (within 1e-3), with ``signed`` when they do and
        some are negative. Later fits (a resumed run) keep the
        saved choice and check it still fits. ``unit_norm`` true with features that are not
        unit-norm, and a ReLU output with negative features, are refused. ``owner`` names the
        model in the messages; ``kind`` is :func:`feature_kind` of ``features`` when the caller
        has it already."""
        kind = feature_kind(features) if kind is None else kind
        is_unit, nonnegative = kind["unit_norm_features"], kind["features"] == "non-negative"
        if self.unit_norm_setting is True and not is_unit:
            raise ValueError(
                f"{owner}: unit_norm_output generates unit-norm features, but the training "
                f"features' L2 norms range from {float(features.norm(dim=1).min()):.4g} to "
                f"{float(features.norm(dim=1).max()):.4g}; use L2-normalised features "
                "(data.preprocess=l2) or unit_norm_output=auto"
            )
        if first:
            if self.unit_norm_setting == "auto":
                self.unit_norm = is_unit
            elif self.unit_norm_setting == "signed":
                self.unit_norm = is_unit and not nonnegative
            if nonnegative:
                self.activation = "relu"
                self.init_output_bias(features.mean(dim=0))
            else:
                self.activation = "linear"
                self.output.bias.zero_()
                self.output_shift.copy_(features.mean(dim=0))
                self.output_scale.copy_(features.std(dim=0).clamp_min(1e-6))
            self.output_linear.fill_(self.activation == "linear")
            self.output_unit_norm.fill_(self.unit_norm)
        elif self.activation == "relu" and not nonnegative:
            raise ValueError(
                f"{owner}: the generator was trained with a ReLU output on non-negative "
                "features, but these training features have negative values"
            )
        return {
            **kind,
            "output": "relu" if self.activation == "relu" else "linear, standardised targets",
            "unit_norm_output": self.unit_norm,
        }

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # checkpoints written before the output adapted hold a ReLU generator: its defaults
        defaults = {
            "output_shift": torch.zeros_like(self.output_shift),
            "output_scale": torch.ones_like(self.output_scale),
            "output_linear": torch.tensor(False),
            "output_unit_norm": torch.tensor(self.unit_norm_setting is True),
        }
        for key, value in defaults.items():
            state_dict.setdefault(prefix + key, value)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._sync_choice()

    def _sync_choice(self) -> None:
        """The plain attributes :meth:`finish` reads, from the saved buffers."""
        self.activation = "linear" if bool(self.output_linear) else "relu"
        self.unit_norm = bool(self.output_unit_norm)


class FeedbackGenerator(GeneratorNet):
    """G(z, a) with one LeakyReLU hidden layer h and the output of :class:`GeneratorNet` (a
    ReLU for non-negative CNN features, as in the papers); ``feedback`` [B, H], if given, is
    added to h first (tf-VAEGAN). The generator of f-VAEGAN, tf-VAEGAN and SE-GZSL.

    ``condition_norm`` (None = the papers): rescale the L2-normalised attributes to that
    multiple of the noise's expected norm sqrt(Z) before they enter the network. With Z = 312
    noise dimensions the unit-norm attributes are 1/18 of the input's norm, and a small network
    trained briefly hardly conditions on them (see :class:`~zsl.models.generative.vaegan.
    FVAEGAN`).

    ``unit_norm`` (False = the papers; ``"auto"``: when the training features are unit-norm):
    L2-normalise every output, so that generated features lie
    on the unit sphere as L2-normalised real features do (the papers' features are min-max
    scaled into a box instead, and their generators end in a sigmoid that keeps them there)."""

    def __init__(
        self,
        n_attributes: int,
        noise_dim: int,
        hidden: int,
        feature_dim: int,
        condition_norm: float | None = None,
        unit_norm: UnitNorm = False,
    ) -> None:
        super().__init__(feature_dim, unit_norm)
        self.noise_dim, self.hidden_dim = noise_dim, hidden
        self.attribute_gain = 1.0 if condition_norm is None else condition_norm * noise_dim**0.5
        self.hidden = nn.Sequential(nn.Linear(n_attributes + noise_dim, hidden), nn.LeakyReLU(0.2))
        self.output = nn.Linear(hidden, feature_dim)
        init_normal(self)

    def forward(self, noise: Tensor, semantics: Tensor, feedback: Tensor | None = None) -> Tensor:
        h = self.hidden(torch.cat([noise, self.attribute_gain * semantics], dim=1))
        if feedback is not None:
            h = h + feedback
        return self.finish(self.output(h))

    def sample(self, semantics: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` features per row of ``semantics`` [K, A] -> [K*n, D], grouped by row."""
        noise, rows = class_noise(semantics, n, self.noise_dim, generator)
        return self(noise, semantics[rows])  # type: ignore[no-any-return]


class FeatureGenerator(FeedbackGenerator):
    """G(z, a): Gaussian noise [B, Z] and class semantics [B, A] -> features [B, D]
    (f-CLSWGAN's generator: :class:`FeedbackGenerator` without feedback, one LeakyReLU
    hidden layer; a ReLU output for non-negative features as in the paper);
    ``condition_norm`` and ``unit_norm`` as there. :meth:`sample_rows` also returns each
    feature's row."""

    def sample_rows(
        self, semantics: Tensor, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` features per row of ``semantics`` [K, A] -> (features [K*n, D], rows [K*n])."""
        noise, rows = class_noise(semantics, n, self.noise_dim, generator)
        return self(noise, semantics[rows]), rows


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
