"""SAE: Semantic Autoencoder for Zero-Shot Learning (Kodirov, Xiang & Gong, CVPR 2017,
https://arxiv.org/abs/1704.08345). A linear encoder W (features -> attributes) whose transpose
decodes attributes back to features; min ||X - W^T S||^2 + lambda ||W X - S||^2 is the
Sylvester equation S S^T W + W (lambda X X^T) = (1 + lambda) S X^T."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zsl.models.base import ZSLModule
from zsl.models.classical.components import FIT_CACHE, class_counts, class_sums, fingerprint, gram

Direction = Literal["f2s", "s2f"]


def solve_sylvester_psd(
    a: Tensor, b: Tensor, c: Tensor, tol: float = 1e-8, max_iter: int = 500, ratio: float = 30.0
) -> Tensor:
    """Solve ``a W + W b = c`` for symmetric positive semi-definite ``a`` [k, k] (small) and
    ``b`` [d, d] (large), in float64.

    ``scipy.linalg.solve_sylvester`` needs the Schur form of the d x d matrix: for CNN
    features (d = 2048-4096) that alone takes longer than a whole SAE run should. Here only
    ``a`` is diagonalised, a = U diag(s) U^T, which splits the equation into independent
    shifted systems w_i (b + s_i I) = (U^T c)_i, solved together by conjugate gradients.
    Rows are preconditioned with the Cholesky factor of ``b + mu I`` for the nearest of a few
    shifts ``mu`` (spaced by ``ratio``), or not at all when ``s_i`` dominates ``b``; then every
    system has a condition number of at most ~sqrt(ratio) and a few dozen iterations reach
    ``tol`` (relative Frobenius residual). Rows in the null space of ``a`` (where ``c`` must
    have no component) are zero: the minimum-norm solution.
    """
    a, b, c = (m.to(torch.float64) for m in (a, b, c))
    shifts, basis = torch.linalg.eigh(a)
    rhs = basis.T @ c
    keep = shifts > shifts.max().clamp(min=0) * 1e-12
    dropped = rhs[~keep].norm()
    if dropped > 1e-8 * c.norm():
        raise ValueError(
            f"a W + W b = c: c has a component ({float(dropped):.3g}) in the null "
            "space of a; this solver needs it to lie in the range of a"
        )
    shifts, basis, rhs = shifts[keep], basis[:, keep], rhs[keep]
    if shifts.numel() == 0:
        return c.new_zeros(c.shape)

    precondition = _shift_preconditioner(b, shifts, ratio)

    def apply(w: Tensor) -> Tensor:
        return shifts[:, None] * w + w @ b

    return basis @ _block_cg(apply, precondition, rhs, tol, max_iter)


def _shift_preconditioner(b: Tensor, shifts: Tensor, ratio: float) -> Callable[[Tensor], Tensor]:
    """Row-wise preconditioner of ``w_i (b + s_i I)``: the Cholesky factor of ``b + mu I`` for
    the lattice shift ``mu`` nearest each ``s_i`` (or none when ``s_i`` dominates ``b``)."""
    # float32 is plenty for choosing and building preconditioners, and twice as fast
    b32 = b.float()
    # largest eigenvalue of b (power iteration; the top of a Gram spectrum is well separated)
    v = torch.rand(b.shape[0], generator=torch.Generator().manual_seed(0)).to(b32)
    for _ in range(15):
        v = b32 @ v
        v = v / v.norm().clamp(min=1e-30)
    top = float(v @ (b32 @ v))

    def condition(mu: Tensor) -> Tensor:  # of (b + s I)(b + mu I)^-1 over spec(b) in [0, top]
        lo, hi = shifts / mu, (top + shifts) / (top + mu)
        return torch.maximum(lo, hi) / torch.minimum(lo, hi)

    # candidate shifts mu: a geometric lattice over [min shift, top]; inf = no preconditioner
    n_mu = max(1, math.ceil(math.log(max(top, 1e-300) / shifts.min().item()) / math.log(ratio)))
    lattice = shifts.min() * ratio ** torch.arange(n_mu, dtype=torch.float64, device=b.device)
    conds = torch.stack([(top + shifts) / shifts, *(condition(mu) for mu in lattice)])
    group = conds.argmin(0)  # 0: plain, j: factor of lattice[j - 1]
    factors = {}
    eye = torch.eye(b.shape[0], dtype=torch.float32, device=b.device)
    for j in group.unique().tolist():
        if j > 0:
            factors[j] = torch.linalg.cholesky(b32 + lattice[j - 1].float() * eye)

    def precondition(r: Tensor) -> Tensor:
        z = r.clone()
        for j, factor in factors.items():
            rows = group == j
            z[rows] = torch.cholesky_solve(r[rows].T.float(), factor).T.double()
        return z

    return precondition


def _block_cg(
    apply: Callable[[Tensor], Tensor],
    precondition: Callable[[Tensor], Tensor],
    rhs: Tensor,
    tol: float,
    max_iter: int,
) -> Tensor:
    """One preconditioned conjugate-gradient recursion per row of ``rhs``, all rows in matrix
    form, until the relative Frobenius residual is at most ``tol``."""
    w = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(1)
    target = tol * rhs.norm()
    for _ in range(max_iter):
        q = apply(p)
        pq = (p * q).sum(1)
        alpha = torch.where(pq > 0, rz / pq, torch.zeros_like(rz))
        w += alpha[:, None] * p
        r -= alpha[:, None] * q
        if r.norm() <= target:
            break
        z_new = precondition(r)
        # Polak-Ribiere form: robust to the float32 rounding of the preconditioner
        rz_new = (r * z_new).sum(1)
        beta = torch.where(rz > 0, (rz_new - (r * z).sum(1)) / rz, torch.zeros_like(rz))
        p = z_new + beta.clamp(min=0)[:, None] * p
        z, rz = z_new, rz_new
    else:
        warnings.warn(
            f"Sylvester solver stopped after {max_iter} iterations at relative residual "
            f"{float(r.norm() / rhs.norm()):.2e} (tol {tol:.0e})",
            RuntimeWarning,
            stacklevel=3,
        )
    return w


def sae_weights(
    features: Tensor, local_labels: Tensor, seen_semantics: Tensor, lambda_: float
) -> Tensor:
    """The SAE encoder W [A, D] (float64) for features [N, D] of the seen classes.

    With X = features^T and S the per-image class semantics (A x N): S S^T and S X^T are
    formed from class counts and class sums, X X^T comes from the shared memo.
    """
    n_seen = seen_semantics.shape[0]

    def solve() -> Tensor:
        s = seen_semantics.to(torch.float64)  # [C, A]
        counts = class_counts(local_labels, n_seen)
        sst = s.T @ (counts[:, None] * s)
        sxt = s.T @ class_sums(features, local_labels, n_seen)
        return solve_sylvester_psd(sst, lambda_ * gram(features), (1.0 + lambda_) * sxt)

    key = ("sae", fingerprint(features, local_labels, seen_semantics), lambda_)
    return FIT_CACHE.get(key, solve).to(features.device)


class SAE(ZSLModule):
    """Semantic Autoencoder (Kodirov et al., CVPR 2017).

    ``lambda_`` weighs the encoder term ||W X - S||^2 against the decoder term
    ||X - W^T S||^2. ``direction`` only changes test-time scoring of the same W: ``f2s``
    encodes images (W x) and compares them with class semantics by cosine; ``s2f`` decodes
    class semantics (W^T s) and compares them with the images by cosine.
    """

    closed_form = True
    weight: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        lambda_: float = 0.1,
        direction: Direction = "s2f",
    ) -> None:
        if direction not in ("f2s", "s2f"):
            raise ValueError(f"SAE direction must be 'f2s' or 's2f', got {direction!r}")
        super().__init__(feature_dim, n_attributes, n_classes)

    def configure_models(self) -> None:
        self.register_buffer("weight", torch.zeros(self.n_attributes, self.feature_dim))

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        if self.hp.direction == "f2s":
            encoded = F.normalize(features @ self.weight.T, dim=1)
            return encoded @ F.normalize(class_semantics, dim=1).T
        decoded = F.normalize(class_semantics @ self.weight, dim=1)
        return F.normalize(features, dim=1) @ decoded.T

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        weights = sae_weights(features, local_labels, seen_semantics, self.hp.lambda_)
        self.weight.copy_(weights.to(self.weight))
