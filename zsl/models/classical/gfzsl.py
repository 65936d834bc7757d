"""GFZSL: "A Simple Exponential Family Framework for Zero-Shot Learning" (Verma & Rai,
ECML-PKDD 2017, https://arxiv.org/abs/1707.08040).

Every class is a Gaussian over image features with a diagonal covariance. For a seen class
the mean and variances are the maximum-likelihood estimates from its training images; the
map from class attributes to these parameters (the mean, and the log of the variances) is a
ridge regression fitted on the seen classes, linear or with an RBF kernel, in closed form.
Every class is scored by the log-likelihood of the image under the Gaussian predicted from
its attributes, so ZSL and GZSL use the same likelihoods.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from zsl.models.base import ZSLModule
from zsl.models.classical.components import class_counts, class_sums, median_distance

Kernel = Literal["linear", "poly", "rbf"]

#: variances are floored at this fraction of the mean seen-class variance (a class with few,
#: near-identical images would otherwise get a near-zero variance and an unbounded likelihood)
VARIANCE_FLOOR = 1e-3


def class_gaussians(features: Tensor, local_labels: Tensor, n_seen: int) -> tuple[Tensor, Tensor]:
    """Per-class maximum-likelihood means [S, D] and diagonal variances [S, D] in float64,
    variances floored at :data:`VARIANCE_FLOOR` times their mean."""
    counts = class_counts(local_labels, n_seen).clamp_min(1.0)[:, None]
    means = class_sums(features, local_labels, n_seen) / counts
    second = class_sums(features.to(torch.float64) ** 2, local_labels, n_seen) / counts
    variances = (second - means**2).clamp_min(0.0)
    return means, variances.clamp_min(VARIANCE_FLOOR * float(variances.mean()))


def kernel_matrix(a: Tensor, b: Tensor, kernel: Kernel, bandwidth: float) -> Tensor:
    """``k(a_i, b_j)`` [len(a), len(b)]: the inner product (``linear``), ``(1 + a_i . b_j)^2``
    (``poly``, the official code's kernel) or ``exp(-|a_i - b_j|^2 / (2 bandwidth^2))``
    (``rbf``). The caller centres the inputs."""
    if kernel == "linear":
        return a @ b.T
    if kernel == "poly":
        return (1.0 + a @ b.T).square()
    return torch.exp(-torch.cdist(a, b).square() / (2.0 * bandwidth**2))


def ridge_dual(gram: Tensor, targets: Tensor, reg: float) -> Tensor:
    """Dual ridge coefficients ``(K + reg I)^-1 targets`` for a PSD ``gram`` [S, S]."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + reg * eye, targets)


def gaussian_log_likelihood(features: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``log N(x_b; mu_c, diag(var_c))`` up to the constant ``-D/2 log 2 pi``, [B, C], from
    three matrix products (no loop over classes or images)."""
    x = features.to(torch.float64)
    precision = 1.0 / variances
    quadratic = (
        (x * x) @ precision.T
        - 2.0 * x @ (means * precision).T
        + (means * means * precision).sum(1)[None, :]
    )
    return -0.5 * (quadratic + variances.log().sum(1)[None, :])


class GFZSL(ZSLModule):
    """Generative framework for ZSL (Verma & Rai, ECML 2017), diagonal Gaussians.

    ``reg_mean`` / ``reg_var`` are the ridge penalties of the regressions of the means and of
    the log-variances; ``kernel`` is ``linear`` (ridge on centred attributes) or ``rbf``, whose
    bandwidth is ``kernel_width`` times the median distance between seen-class attribute
    vectors. Both regressions are stored in dual form (coefficients per seen class), so one
    code path serves both kernels and the checkpoint holds everything scoring needs.
    """

    closed_form = True
    dual_mean: Tensor
    dual_logvar: Tensor
    centre_mean: Tensor
    centre_logvar: Tensor
    centre_attributes: Tensor
    bandwidth: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        reg_mean: float = 1.0,
        reg_var: float = 1.0,
        kernel: Kernel = "linear",
        kernel_width: float = 1.0,
    ) -> None:
        for name, value in (("reg_mean", reg_mean), ("reg_var", reg_var)):
            if not value > 0:
                raise ValueError(f"GFZSL: {name} must be positive, got {value}")
        if kernel not in ("linear", "poly", "rbf"):
            raise ValueError(f"GFZSL: kernel must be linear, poly or rbf, got {kernel!r}")
        if not kernel_width > 0:
            raise ValueError(f"GFZSL: kernel_width must be positive, got {kernel_width}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        d, a, c = self.feature_dim, self.n_attributes, self.n_classes
        f64 = torch.float64
        # dual coefficients per global class id (rows of non-seen classes stay zero)
        self.register_buffer("dual_mean", torch.zeros(c, d, dtype=f64))
        self.register_buffer("dual_logvar", torch.zeros(c, d, dtype=f64))
        self.register_buffer("centre_mean", torch.zeros(d, dtype=f64))
        self.register_buffer("centre_logvar", torch.zeros(d, dtype=f64))
        self.register_buffer("centre_attributes", torch.zeros(a, dtype=f64))
        self.register_buffer("bandwidth", torch.ones((), dtype=f64))

    def _kernel(self, class_semantics: Tensor) -> Tensor:
        """Kernel [C, S] between ``class_semantics`` and the seen classes' (both centred)."""
        centre = self.centre_attributes
        queries = class_semantics.to(torch.float64) - centre
        seen = self.semantics[self.seen_ids].to(torch.float64) - centre
        return kernel_matrix(queries, seen, self.hp.kernel, float(self.bandwidth))

    def class_parameters(self, class_semantics: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted means [C, D] and variances [C, D] of classes with these attributes."""
        k = self._kernel(class_semantics)
        means = self.centre_mean + k @ self.dual_mean[self.seen_ids]
        log_var = self.centre_logvar + k @ self.dual_logvar[self.seen_ids]
        return means, log_var.exp()

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        means, variances = self.class_parameters(class_semantics)
        return gaussian_log_likelihood(features, means, variances).to(features.dtype)

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        hp = self.hp
        means, variances = class_gaussians(features, local_labels, seen_semantics.shape[0])
        log_var = variances.log()
        attributes = seen_semantics.to(torch.float64)
        self.centre_attributes.copy_(attributes.mean(0))
        centred = attributes - self.centre_attributes
        if hp.kernel == "rbf":
            self.bandwidth.fill_(hp.kernel_width * median_distance(centred))
        gram = kernel_matrix(centred, centred, hp.kernel, float(self.bandwidth))
        self.centre_mean.copy_(means.mean(0))
        self.centre_logvar.copy_(log_var.mean(0))
        self.dual_mean.zero_()
        self.dual_logvar.zero_()
        self.dual_mean[self.seen_ids] = ridge_dual(gram, means - self.centre_mean, hp.reg_mean)
        self.dual_logvar[self.seen_ids] = ridge_dual(gram, log_var - self.centre_logvar, hp.reg_var)
