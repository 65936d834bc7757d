"""One evaluation pass of a ZSL model: its metric states and the typed result they give.

:class:`ZSLEvaluator` accumulates scores of a validation or test pass (per-class accuracy and
the per-example seen/unseen summaries of :mod:`zsl.metrics`, exact under DDP) and turns them
into an :class:`Evaluation`: ZSL T1, GZSL u/s/H, AUSUC, the calibrated numbers, per-class
accuracy and the seen-unseen curve. The calibration gamma is either chosen on the evaluation
itself (validation only) or given (the test split, with the gamma chosen on validation);
a test evaluation without a validation-chosen gamma reports the uncalibrated numbers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zsl.metrics import PerClassAccuracy, SeenUnseenStats

#: the scalar keys of every evaluation (percent, except ``gamma``)
METRIC_KEYS = (
    "zsl_t1",
    "gzsl_u",
    "gzsl_s",
    "gzsl_h",
    "ausuc",
    "gzsl_u_cal",
    "gzsl_s_cal",
    "gzsl_h_cal",
    "gamma",
)


@dataclass(frozen=True)
class Evaluation:
    """The result of one validation or test pass."""

    metrics: dict[str, float]
    per_class: Tensor  # [C] accuracy per class in percent (NaN for classes without images)
    curve: tuple[Tensor, Tensor, Tensor] = field(repr=False)  # (gammas, u, s)
    #: how gamma was obtained: "chosen" (on this evaluation), "given" or "none"
    gamma_source: str = "given"
    #: [C] per-class accuracy with the given gamma (calibrated stacking); None without one
    per_class_cal: Tensor | None = None


class ZSLEvaluator:
    """The metric states of one evaluation pass over the classes of a protocol."""

    def __init__(
        self,
        seen_ids: Tensor,
        universe: Tensor,
        device: torch.device,
        gamma: float | None = None,
    ) -> None:
        n_classes = int(universe.numel())
        seen = torch.zeros(n_classes, dtype=torch.bool)
        seen[seen_ids.cpu()] = True
        self.stats = SeenUnseenStats(seen, universe_mask=universe.cpu()).to(device)
        self.per_class = PerClassAccuracy(n_classes).to(device)
        #: a gamma known before the pass (the test pass's, chosen on validation): per-class
        #: accuracy after calibrated stacking is counted too
        self.gamma = gamma if gamma is not None and math.isfinite(gamma) else None
        self.seen_ids = seen_ids.to(device)
        self.per_class_cal = (
            PerClassAccuracy(n_classes).to(device) if self.gamma is not None else None
        )
        #: the last :meth:`compute` result of this pass
        self.result: Evaluation | None = None

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Add a batch of scores [B, C] (``-inf`` outside the universe) with global labels."""
        finite = scores.masked_fill(torch.isinf(scores), -1e30)
        self.stats.update(finite, labels)
        self.per_class.update(scores.argmax(dim=1), labels)
        if self.per_class_cal is not None and self.gamma is not None:
            calibrated = scores.clone()
            calibrated[:, self.seen_ids] -= self.gamma
            self.per_class_cal.update(calibrated.argmax(dim=1), labels)

    def compute(self, gamma: float | None, choose_gamma: bool) -> Evaluation:
        """Metrics with the given ``gamma``; ``choose_gamma``: pick the H-maximising gamma on
        this evaluation (validation classes only). Without either, calibrated entries are NaN."""
        report = self.stats.report(gamma, choose_gamma)
        u, s, h = report.gzsl
        if math.isnan(u):
            raise ValueError("no sample has an unseen target class; u is undefined")
        if math.isnan(s):
            raise ValueError("no sample has a seen target class; s is undefined")
        out = {"zsl_t1": report.zsl, "gzsl_u": u, "gzsl_s": s, "gzsl_h": h}
        out["ausuc"] = report.ausuc
        source = "chosen" if choose_gamma else "given"
        if report.calibrated is None or report.gamma is None:
            nan = float("nan")
            out.update(gzsl_u_cal=nan, gzsl_s_cal=nan, gzsl_h_cal=nan, gamma=nan)
            source = "none"
        else:
            cu, cs, ch = report.calibrated
            out.update(gzsl_u_cal=cu, gzsl_s_cal=cs, gzsl_h_cal=ch, gamma=float(report.gamma))
        cal = self.per_class_cal.compute().cpu() if self.per_class_cal is not None else None
        self.result = Evaluation(out, self.per_class.compute().cpu(), report.curve, source, cal)
        return self.result
