"""Per-example seen/unseen summaries and the exact ZSL / GZSL numbers computed from them
(:class:`SeenUnseenStats`): ZSL accuracy, u, s and H at any calibrated-stacking gamma (Chao
et al., ECCV 2016), the exact seen-unseen curve, AUSUC and the gamma that maximises H. The
arithmetic on the summaries is :mod:`zsl.metrics.curve`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from zsl.metrics.curve import (
    Curve,
    Summary,
    best_gamma,
    curve_area,
    exact_curve,
    gzsl_at,
    zsl_accuracy,
)
from zsl.metrics.inputs import as_class_ids, check_mask, check_range

__all__ = ["SeenUnseenStats", "StatsReport"]


class StatsReport(NamedTuple):
    """What :meth:`SeenUnseenStats.report` returns (accuracies in percent)."""

    zsl: float
    gzsl: tuple[float, float, float]  # (u, s, H) at gamma = 0
    ausuc: float
    gamma: float | None  # chosen or given; None/NaN: no calibration
    calibrated: tuple[float, float, float] | None  # (u, s, H) at ``gamma``
    curve: tuple[Tensor, Tensor, Tensor]  # (gammas, u, s)


class SeenUnseenStats(Metric):
    """Per-sample summaries for exact ZSL / GZSL evaluation with calibrated stacking.

    For each sample the metric stores its target, the best score among the seen classes of
    the evaluation universe and its global id, and the same for the unseen classes. Scores of
    classes outside the universe are ignored (such classes are never predicted).

    Under DDP the states are concatenated across processes. The helper methods
    (:meth:`zsl_accuracy`, :meth:`gzsl`, :meth:`curve`, :meth:`ausuc`, :meth:`best_gamma`)
    synchronise the states themselves, so they are collective calls: call them on every rank.

    Accuracies returned by the helpers are in percent (0--100). The decision rule of
    calibrated stacking, "predict the unseen class iff ``unseen_score > seen_score - gamma``",
    is evaluated as ``gamma > seen_score - unseen_score`` in float64 for all helpers, so
    :meth:`gzsl` and :meth:`curve` agree exactly. Scores are stored as float32.

    Args:
        seen_mask: bool ``[num_classes]``, True for seen classes.
        universe_mask: bool ``[num_classes]``, classes that take part in the evaluation
            (default: all). Within the universe, classes not in ``seen_mask`` are unseen.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    _STATE_DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "target": torch.long,
        "seen_score": torch.float32,
        "seen_pred": torch.long,
        "unseen_score": torch.float32,
        "unseen_pred": torch.long,
    }

    seen_mask: Tensor
    universe_mask: Tensor
    seen_ids: Tensor
    unseen_ids: Tensor
    # cat states: lists of per-batch tensors, a single tensor once synchronised
    target: list[Tensor] | Tensor
    seen_score: list[Tensor] | Tensor
    seen_pred: list[Tensor] | Tensor
    unseen_score: list[Tensor] | Tensor
    unseen_pred: list[Tensor] | Tensor

    def __init__(
        self, seen_mask: Tensor, universe_mask: Tensor | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        seen_mask = check_mask(seen_mask, "seen_mask")
        num_classes = seen_mask.numel()
        if universe_mask is None:
            universe_mask = torch.ones(num_classes, dtype=torch.bool, device=seen_mask.device)
        universe_mask = check_mask(universe_mask, "universe_mask", num_classes).to(seen_mask.device)
        seen_ids = (seen_mask & universe_mask).nonzero().flatten()
        unseen_ids = (~seen_mask & universe_mask).nonzero().flatten()
        if seen_ids.numel() == 0:
            raise ValueError("the evaluation universe contains no seen class")
        if unseen_ids.numel() == 0:
            raise ValueError("the evaluation universe contains no unseen class")
        self.num_classes = num_classes
        self.register_buffer("seen_mask", seen_mask.clone(), persistent=False)
        self.register_buffer("universe_mask", universe_mask.clone(), persistent=False)
        self.register_buffer("seen_ids", seen_ids, persistent=False)
        self.register_buffer("unseen_ids", unseen_ids, persistent=False)
        for name in self._STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    # ------------------------------------------------------------------ accumulation

    def update(self, scores: Tensor, target: Tensor) -> None:
        """Accumulate a batch: ``scores`` float ``[B, num_classes]``, ``target`` ids ``[B]``."""
        if not isinstance(scores, Tensor):
            raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores must have shape [B, {self.num_classes}], got {tuple(scores.shape)}"
            )
        if not scores.is_floating_point():
            raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}")
        target = as_class_ids(target, "target")
        if target.numel() != scores.shape[0]:
            raise ValueError(
                f"scores and target disagree on the batch size: {scores.shape[0]} rows of "
                f"scores but {target.numel()} targets"
            )
        check_range(target, self.num_classes, "target")
        scores = scores.detach()
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(scores).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise ValueError(
                f"scores must be finite: found {n_nan} NaN and {n_inf} infinite values"
            )
        universe = self.universe_mask.bool()
        target = target.to(universe.device)
        outside = ~universe[target]
        if bool(outside.any()):
            bad = torch.unique(target[outside]).tolist()
            raise ValueError(f"target class ids {bad} are outside the evaluation universe")

        scores = scores.to(device=universe.device, dtype=torch.float32)
        seen_ids = self.seen_ids.long()
        unseen_ids = self.unseen_ids.long()
        seen_score, seen_arg = scores[:, seen_ids].max(dim=1)
        unseen_score, unseen_arg = scores[:, unseen_ids].max(dim=1)
        batch = {
            "target": target,
            "seen_score": seen_score,
            "seen_pred": seen_ids[seen_arg],
            "unseen_score": unseen_score,
            "unseen_pred": unseen_ids[unseen_arg],
        }
        for name, value in batch.items():
            state = getattr(self, name)
            if isinstance(state, Tensor):  # synchronised without unsync: keep concatenating
                setattr(self, name, [state, value])
            else:
                state.append(value)

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        # A rank that never called ``update`` would otherwise contribute an empty tensor of the
        # metric's float dtype for *every* state, mismatching the long id states of other ranks.
        for name, dtype in self._STATE_DTYPES.items():
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    @contextmanager
    def _synced(self) -> Iterator[None]:
        """Synchronise states across processes for the duration of the block (if needed)."""
        if self._is_synced:
            yield
            return
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            yield

    def _summary(self) -> Summary:
        """The (already synchronised) states, concatenated and moved to CPU."""
        values = []
        for name, dtype in self._STATE_DTYPES.items():
            value = getattr(self, name)
            if isinstance(value, list):
                value = torch.cat(value) if value else torch.empty(0, dtype=dtype)
            value = value.detach().cpu().flatten()
            values.append(value.double() if dtype.is_floating_point else value.long())
        summary = Summary(*values)
        if summary.target.numel() == 0:
            raise ValueError("SeenUnseenStats has no samples: call update() first")
        return summary

    # ------------------------------------------------------------------ computations on a summary

    def _zsl(self, summary: Summary) -> float:
        return zsl_accuracy(summary, self.seen_mask, self.num_classes)

    def _gzsl(self, summary: Summary, gamma: float) -> tuple[float, float, float]:
        return gzsl_at(summary, self.seen_mask, self.num_classes, gamma)

    def _curve(self, summary: Summary) -> Curve:
        return exact_curve(summary, self.seen_mask, self.num_classes)

    @staticmethod
    def _area(curve: Curve) -> float:
        return curve_area(curve)

    # ------------------------------------------------------------------ public helpers

    def zsl_accuracy(self) -> float:
        """ZSL top-1 accuracy (percent): per-class mean over unseen classes on unseen-target
        samples, predicting among the unseen classes of the universe only."""
        with self._synced():
            acc = self._zsl(self._summary())
        if math.isnan(acc):
            raise ValueError("no sample has an unseen target class; ZSL accuracy is undefined")
        return acc

    def gzsl(self, gamma: float = 0.0) -> tuple[float, float, float]:
        """GZSL accuracies ``(u, s, H)`` in percent with calibrated stacking factor ``gamma``.

        ``gamma`` is subtracted from every seen-class score. ``u`` (``s``) is the per-class
        mean accuracy over unseen (seen) classes on unseen-target (seen-target) samples.
        Raises ValueError if there are no unseen-target or no seen-target samples.
        """
        gamma = float(gamma)
        if math.isnan(gamma):
            raise ValueError("gamma must not be NaN")
        with self._synced():
            u, s, h = self._gzsl(self._summary(), gamma)
        if math.isnan(u):
            raise ValueError("no sample has an unseen target class; u is undefined")
        if math.isnan(s):
            raise ValueError("no sample has a seen target class; s is undefined")
        return u, s, h

    def curve(self) -> tuple[Tensor, Tensor, Tensor]:
        """Exact seen--unseen curve ``(gammas, u, s)`` (float64 CPU tensors, u and s in %).

        One point per step of the piecewise-constant function ``gamma -> (u, s)``, ordered
        by increasing gamma (u non-decreasing, s non-increasing). ``gammas[k]`` lies strictly
        inside step ``k`` so that ``gzsl(gammas[k]) == (u[k], s[k])``; the ends are
        ``min(delta) - 1`` (``u == 0``) and ``max(delta) + 1`` (``s == 0``).
        """
        with self._synced():
            c = self._curve(self._summary())
        return c.gammas, 100.0 * c.u, 100.0 * c.s

    def ausuc(self) -> float:
        """Area under the seen--unseen curve (Chao et al., 2016), in percent (0--100).

        Computed with the trapezoid rule on ``x = u / 100``, ``y = s / 100`` over the exact
        curve, then multiplied by 100.
        """
        with self._synced():
            c = self._curve(self._summary())
        return 100.0 * self._area(c)

    def best_gamma(self, criterion: str = "h") -> float:
        """Calibration ``gamma`` maximising the harmonic mean H (``criterion="h"``).

        Candidates are the midpoints between consecutive distinct deltas, the two ends of the
        curve and 0.0; ties (up to a relative 1e-9) go to the smallest ``|gamma|``.
        """
        if criterion != "h":
            raise ValueError(f"unsupported criterion {criterion!r}; only 'h' is supported")
        with self._synced():
            c = self._curve(self._summary())
        return self._best_gamma(c)

    @staticmethod
    def _best_gamma(c: Curve) -> float:
        return best_gamma(c)

    def report(self, gamma: float | None, choose_gamma: bool) -> StatsReport:
        """Every number of one evaluation from a single synchronisation, summary and curve
        (the helpers above each rebuild them): ZSL accuracy, ``(u, s, H)`` at gamma 0, AUSUC,
        the H-maximising gamma when ``choose_gamma`` (else ``gamma``), ``(u, s, H)`` at that
        gamma (None without one) and the curve. The same values as the helpers, exactly."""
        with self._synced():
            summary = self._summary()
            curve = self._curve(summary)
        zsl = self._zsl(summary)
        if math.isnan(zsl):
            raise ValueError("no sample has an unseen target class; ZSL accuracy is undefined")
        if choose_gamma:
            gamma = self._best_gamma(curve)
        calibrated = None
        if gamma is not None and not math.isnan(gamma):
            calibrated = self._gzsl(summary, float(gamma))
        return StatsReport(
            zsl=zsl,
            gzsl=self._gzsl(summary, 0.0),
            ausuc=100.0 * self._area(curve),
            gamma=gamma,
            calibrated=calibrated,
            curve=(curve.gammas, 100.0 * curve.u, 100.0 * curve.s),
        )

    def compute(self) -> dict[str, Tensor]:
        """Summary dict ``{"zsl", "u", "s", "h", "ausuc"}`` (percent, gamma = 0).

        Entries that are undefined for the accumulated samples (e.g. ``u`` without unseen-target
        samples) are NaN instead of raising.
        """
        nan = float("nan")
        try:
            summary = self._summary()
        except ValueError:
            values = dict.fromkeys(("zsl", "u", "s", "h", "ausuc"), nan)
        else:
            u, s, h = self._gzsl(summary, 0.0)
            try:
                area = 100.0 * self._area(self._curve(summary))
            except ValueError:
                area = nan
            values = {"zsl": self._zsl(summary), "u": u, "s": s, "h": h, "ausuc": area}
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}
