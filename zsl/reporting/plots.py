"""Figures for runs: the seen--unseen accuracy curve and real-vs-synthetic feature projections.

Matplotlib with the non-interactive Agg backend; every function writes a PNG and returns its
path, so it works on headless machines and the file can be logged (e.g. to W&B).
:func:`plot_seen_unseen_curve` runs to about 65 lines: one figure drawn top to bottom (curve,
uncalibrated point, validation-chosen point, axes), kept in one function so it reads in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    ax.plot(star_s, star_u, "*", ms=12, color="tab:green", label=star)
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
    """Lay out ``fig``, write it to ``path`` (folders created) and, beside a PNG, the same
    figure as a PDF (vector, for a paper); close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    if path.suffix.lower() == ".png":
        fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


#: classes per panel up to which every class is named; above, the best and worst LABELLED
NAMED_CLASSES = 60
LABELLED = 5


def plot_per_class_accuracy(
    names: list[str],
    accuracy: list[float],
    seen: list[bool],
    path: str | Path,
    title: str = "",
    calibrated: list[float] | None = None,
) -> Path:
    """Per-class GZSL accuracy (percent) as sorted dot plots, one panel per split (unseen,
    seen): hollow dots uncalibrated, filled dots calibrated (with the validation-chosen
    gamma), joined per class; the dashed / solid lines are the split's mean (u or s). Up to
    :data:`NAMED_CLASSES` classes a panel names every class; above, only the
    :data:`LABELLED` best and worst (readable at 717 classes)."""
    panels = [("unseen", [i for i, f in enumerate(seen) if not f], "tab:orange")]
    panels.append(("seen", [i for i, f in enumerate(seen) if f], "tab:blue"))
    panels = [p for p in panels if p[1]]
    named_sizes = [len(ids) for _, ids, _ in panels if len(ids) <= NAMED_CLASSES]
    height = max(4.0, 0.17 * max(named_sizes) + 1.6) if named_sizes else 6.0
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), height), dpi=120, squeeze=False
    )
    key = calibrated if calibrated is not None else accuracy
    for ax, (split, ids, colour) in zip(axes[0], panels):
        order = sorted(ids, key=lambda i: (key[i], accuracy[i]))
        pos = np.arange(len(order))
        raw = np.array([accuracy[i] for i in order])
        shown = raw
        if calibrated is not None:
            shown = np.array([calibrated[i] for i in order])
            ax.hlines(pos, np.minimum(raw, shown), np.maximum(raw, shown), color=colour, lw=0.6)
            ax.plot(shown, pos, "o", color=colour, ms=3.5, label="calibrated")
            ax.axvline(shown.mean(), color=colour, lw=1, label=f"mean {shown.mean():.1f}")
        ax.plot(raw, pos, "o", mfc="none", color=colour, ms=3.5, label="uncalibrated")
        ax.axvline(raw.mean(), color=colour, lw=1, ls="--", label=f"mean {raw.mean():.1f}")
        if len(order) <= NAMED_CLASSES:
            ax.set_yticks(pos, [names[i] for i in order], fontsize=7)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(order)} classes, sorted by accuracy")
            _label_extremes(ax, [names[i] for i in order], shown)
        ax.set_ylim(-1, len(order))
        ax.set_xlim(0, 100)
        ax.set_xlabel("per-class top-1 accuracy, GZSL (%)")
        letter = "u" if split == "unseen" else "s"
        ax.set_title(f"{split} classes ({letter}, {len(order)})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")  # sorted ascending: that corner is empty
    heading = f"{title}: per-class accuracy" if title else "per-class accuracy"
    fig.suptitle(heading, fontsize=10)
    return save_figure(fig, path)


def _label_extremes(ax: Any, names: list[str], values: np.ndarray) -> None:
    """Name the :data:`LABELLED` worst and best classes of a sorted panel in two columns to
    the right of it, each joined to its dot (labels never overlap, whatever the count)."""
    n = len(names)
    worst = list(range(min(LABELLED, n)))
    best = list(range(max(n - LABELLED, len(worst)), n))
    for ranks, low in ((worst, 0.03), (best, 0.97 - 0.06 * (len(best) - 1))):
        for k, rank in enumerate(ranks):
            ax.annotate(
                f"{names[rank]} ({values[rank]:.0f})",
                xy=(values[rank], rank),
                xytext=(1.03, low + 0.06 * k),
                textcoords="axes fraction",
                fontsize=7,
                va="center",
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"},
            )
