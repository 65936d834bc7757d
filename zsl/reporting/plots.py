"""Figures for runs: the seen--unseen accuracy curve and real-vs-synthetic feature projections.

Matplotlib with the non-interactive Agg backend; every function writes a PNG and returns its
path, so it works on headless machines and the file can be logged (e.g. to W&B).
:func:`plot_seen_unseen_curve` runs to about 65 lines: one figure drawn top to bottom (curve,
uncalibrated point, validation-chosen point, axes), kept in one function so it reads in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _np(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def plot_seen_unseen_curve(
    gammas: ArrayLike,
    u: ArrayLike,
    s: ArrayLike,
    path: str | Path,
    title: str = "",
    chosen: tuple[float, float, float] | None = None,
) -> Path:
    """The seen--unseen accuracy curve of calibrated stacking (Chao et al., ECCV 2016).

    ``gammas``, ``u``, ``s`` are the points of the curve (e.g. ``SeenUnseenStats.curve()``;
    accuracies in percent). Plots unseen accuracy against seen accuracy, the area under the
    curve (AUSUC, trapezoid rule as in ``zsl.metrics``) in the legend, and marks the
    uncalibrated point (``gamma = 0``) and, with ``chosen = (gamma, u, s)`` (the gamma selected
    on validation classes and the accuracies it gives here), that point; without it, the point
    of highest harmonic mean H of this curve (only meaningful for a validation curve: on the
    test split it would be a test-selected number).
    """
    g, uu, ss = _np(gammas), _np(u), _np(s)
    if not (g.shape == uu.shape == ss.shape) or g.ndim != 1 or g.size == 0:
        raise ValueError(
            f"gammas, u and s must be 1-D of equal non-zero length, got {g.shape}, {uu.shape}, "
            f"{ss.shape}"
        )
    order = np.argsort(g)
    g, uu, ss = g[order], uu[order], ss[order]
    ausuc = float(np.sum(np.diff(uu / 100) * (ss[1:] + ss[:-1]) / 200) * 100)
    total = uu + ss
    h = np.where(total > 0, 2 * uu * ss / np.where(total > 0, total, 1), 0.0)
    if chosen is None or not np.isfinite(chosen[0]):
        best = int(np.argmax(h))
        star_s, star_u = ss[best], uu[best]
        star = f"best H {h[best]:.1f} (gamma={g[best]:.3g})"
    else:
        star_s, star_u = chosen[2], chosen[1]
        chosen_h = 2 * star_u * star_s / (star_u + star_s) if star_u + star_s > 0 else 0.0
        star = f"validation-chosen gamma={chosen[0]:.3g}: H {chosen_h:.1f}"
    zero = int(np.argmin(np.abs(g)))  # the curve point nearest the uncalibrated gamma = 0

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot(ss, uu, "-", color="tab:blue", lw=1.5, label=f"seen-unseen curve (AUSUC {ausuc:.1f})")
    ax.plot(
        ss[zero],
        uu[zero],
        "o",
        color="tab:red",
        label=f"gamma=0: u {uu[zero]:.1f}, s {ss[zero]:.1f}, H {h[zero]:.1f}",
    )
    ax.plot(
        star_s,
        star_u,
        "*",
        ms=12,
        color="tab:green",
        label=star,
    )
    ax.set_xlabel("seen-class accuracy s (%)")
    ax.set_ylabel("unseen-class accuracy u (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def pca_2d(x: Tensor) -> Tensor:
    """Rows of ``x`` [N, D] projected on their first two principal components (via SVD)."""
    x = x.double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:2].T
    if proj.shape[1] < 2:  # degenerate (a single feature): pad with zeros
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 2 - proj.shape[1])], dim=1)
    return proj.float()


def plot_feature_projection(
    real: Tensor,
    real_labels: Tensor,
    synth: Tensor,
    synth_labels: Tensor,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str = "real vs synthetic features (PCA)",
) -> Path:
    """2-D PCA (fitted on real and synthetic rows together) of real (dots) and synthetic
    (crosses) examples, one colour per class; labels are global class ids, named through
    ``class_names`` when given."""
    if real.shape[1] != synth.shape[1]:
        raise ValueError(f"real and synthetic dims differ: {real.shape[1]} vs {synth.shape[1]}")
    if real.shape[0] != real_labels.shape[0] or synth.shape[0] != synth_labels.shape[0]:
        raise ValueError("every row needs exactly one label")
    proj = pca_2d(torch.cat([real.detach().cpu(), synth.detach().cpu()]))
    p_real, p_synth = proj[: real.shape[0]].numpy(), proj[real.shape[0] :].numpy()
    r_lab, s_lab = real_labels.cpu().numpy(), synth_labels.cpu().numpy()
    classes = sorted(set(r_lab.tolist()) | set(s_lab.tolist()))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")

    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for i, c in enumerate(classes):
        color = cmap(i % cmap.N)
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        for points, labels, size, marker, kind in (
            (p_real, r_lab, 10, "o", "real"),
            (p_synth, s_lab, 14, "x", "synthetic"),
        ):
            mine = points[labels == c]
            ax.scatter(
                mine[:, 0],
                mine[:, 1],
                s=size,
                alpha=0.6,
                color=color,
                marker=marker,
                label=f"{name} ({kind})",
            )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, ncol=2, loc="best", markerscale=1.5)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
