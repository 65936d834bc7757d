"""The exact arithmetic behind :class:`zsl.metrics.SeenUnseenStats`, on its per-sample
summaries: per-class mean accuracies, ZSL accuracy, GZSL ``(u, s, H)`` at a calibrated-stacking
gamma, the exact seen--unseen step curve, its area and the H-maximising gamma.

Pure functions on CPU tensors (float64 scores, long ids); the metric gathers the summaries.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from zsl.metrics.inputs import harmonic_mean

# Relative tolerance under which two H values are considered tied in ``best_gamma``.
TIE_TOL = 1e-9


class Summary(NamedTuple):
    """Concatenated per-sample states (on CPU): ids as long, scores as float64."""

    target: Tensor
    seen_score: Tensor
    seen_pred: Tensor
    unseen_score: Tensor
    unseen_pred: Tensor

    @property
    def delta(self) -> Tensor:
        """``seen_score - unseen_score``: a sample is predicted unseen iff ``gamma > delta``."""
        return self.seen_score - self.unseen_score


class Curve(NamedTuple):
    """Seen--unseen step function: point ``k`` holds on ``(values[k-1], values[k]]``."""

    gammas: Tensor  # float64 [m + 1], one representative gamma strictly inside each step
    u: Tensor  # float64 [m + 1], fraction in [0, 1]
    s: Tensor  # float64 [m + 1], fraction in [0, 1]
    values: Tensor  # float64 [m], sorted distinct deltas (the breakpoints)


def per_class_mean(correct: Tensor, target: Tensor, num_classes: int) -> float:
    """Mean over classes present in ``target`` of the per-class accuracy (fraction); NaN if none."""
    counts = torch.bincount(target, minlength=num_classes)
    hits = torch.bincount(target[correct], minlength=num_classes)
    present = counts > 0
    if not bool(present.any()):
        return float("nan")
    return float((hits[present].double() / counts[present].double()).mean())


def class_weights(correct: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Weight ``1 / (n_class * n_present_classes)`` for correct samples, 0 otherwise."""
    counts = torch.bincount(target, minlength=num_classes)
    n_present = int((counts > 0).sum())
    weights = torch.zeros(target.numel(), dtype=torch.float64)
    if n_present == 0:
        return weights
    per_sample = 1.0 / (counts[target].double() * n_present)
    return torch.where(correct, per_sample, weights)


def unseen_targets(summary: Summary, seen_mask: Tensor) -> Tensor:
    """Which samples have an unseen target class (bool, CPU)."""
    return ~seen_mask.bool().cpu()[summary.target]


def zsl_accuracy(summary: Summary, seen_mask: Tensor, num_classes: int) -> float:
    """ZSL accuracy (percent; NaN without unseen-target samples): per-class mean over the
    unseen-target samples of the best unseen class being right."""
    unseen = unseen_targets(summary, seen_mask)
    correct = summary.unseen_pred[unseen] == summary.target[unseen]
    return 100.0 * per_class_mean(correct, summary.target[unseen], num_classes)


def gzsl_at(
    summary: Summary, seen_mask: Tensor, num_classes: int, gamma: float
) -> tuple[float, float, float]:
    """GZSL ``(u, s, H)`` in percent with calibrated stacking factor ``gamma`` (NaN where a
    side has no samples)."""
    pred = torch.where(gamma > summary.delta, summary.unseen_pred, summary.seen_pred)
    correct = pred == summary.target
    unseen = unseen_targets(summary, seen_mask)
    u = 100.0 * per_class_mean(correct[unseen], summary.target[unseen], num_classes)
    s = 100.0 * per_class_mean(correct[~unseen], summary.target[~unseen], num_classes)
    return u, s, harmonic_mean(u, s)


def exact_curve(summary: Summary, seen_mask: Tensor, num_classes: int) -> Curve:
    """The exact seen--unseen step function of the summary (u and s as fractions)."""
    unseen = unseen_targets(summary, seen_mask)
    if not bool(unseen.any()):
        raise ValueError("no sample has an unseen target class; the GZSL curve is undefined")
    if bool(unseen.all()):
        raise ValueError("no sample has a seen target class; the GZSL curve is undefined")
    n = summary.target.numel()
    w_u = torch.zeros(n, dtype=torch.float64)
    w_s = torch.zeros(n, dtype=torch.float64)
    w_u[unseen] = class_weights(
        summary.unseen_pred[unseen] == summary.target[unseen],
        summary.target[unseen],
        num_classes,
    )
    w_s[~unseen] = class_weights(
        summary.seen_pred[~unseen] == summary.target[~unseen],
        summary.target[~unseen],
        num_classes,
    )
    values, inverse = torch.unique(summary.delta, sorted=True, return_inverse=True)
    m = values.numel()
    # Weight of each distinct delta: u gains it once gamma > value, s loses it then.
    bin_u = torch.zeros(m, dtype=torch.float64).index_add_(0, inverse, w_u)
    bin_s = torch.zeros(m, dtype=torch.float64).index_add_(0, inverse, w_s)
    zero = torch.zeros(1, dtype=torch.float64)
    u = torch.cat([zero, torch.cumsum(bin_u, 0)])
    s = torch.cat([torch.flip(torch.cumsum(torch.flip(bin_s, [0]), 0), [0]), zero])
    lo, hi = values[:-1], values[1:]
    mids = lo + (hi - lo) / 2
    mids = torch.where(mids > lo, mids, hi)  # guard against rounding onto ``lo``
    gammas = torch.cat([values[:1] - 1.0, mids, values[-1:] + 1.0])
    return Curve(gammas=gammas, u=u, s=s, values=values)


def curve_area(curve: Curve) -> float:
    """Area under the curve (trapezoid rule on the fractions u, s)."""
    du = curve.u[1:] - curve.u[:-1]
    return float((du * (curve.s[1:] + curve.s[:-1]) / 2).sum())


def best_gamma(c: Curve) -> float:
    """The gamma maximising H over the curve's steps and 0.0; ties (up to a relative
    :data:`TIE_TOL`) go to the smallest ``|gamma|``."""
    total = c.u + c.s
    h = torch.where(total > 0, 2 * c.u * c.s / total.clamp_min(1e-300), torch.zeros_like(total))
    # gamma = 0 falls in step k = number of distinct deltas strictly below 0.
    k_zero = int(torch.searchsorted(c.values, torch.zeros(1, dtype=torch.float64)))
    gammas = torch.cat([c.gammas, torch.zeros(1, dtype=torch.float64)])
    h = torch.cat([h, h[k_zero : k_zero + 1]])
    best = h.max()
    tied = h >= best - TIE_TOL * max(float(best), 1e-12)
    candidates = gammas[tied]
    return float(candidates[torch.argmin(candidates.abs())])
