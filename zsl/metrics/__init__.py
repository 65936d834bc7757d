"""Evaluation metrics of the standard zero-shot learning protocol.

Implements the metrics of the "good, bad and ugly" protocol (Xian et al., TPAMI 2018) as
:class:`torchmetrics.Metric` subclasses, so that they accumulate over batches and synchronise
correctly under DDP:

* :class:`PerClassAccuracy` -- per-class top-1 accuracy and its mean over a subset of classes.
* :class:`SeenUnseenStats` -- per-sample summaries (best seen / best unseen score and class)
  from which the ZSL accuracy, the GZSL accuracies ``u``, ``s`` and their harmonic mean ``H``
  at any calibrated-stacking ``gamma`` (Chao et al., ECCV 2016), the exact seen--unseen curve,
  AUSUC and the ``gamma`` that maximises ``H`` are computed exactly.
* :func:`harmonic_mean`.

All class ids are *global* ids: integers in ``[0, num_classes)``.

The package is the one place where the protocol's numbers are defined: the input checks both
metrics share (:mod:`.inputs`), per-class accuracy (:mod:`.per_class`) and the seen-unseen
summaries with the exact curve arithmetic every reported number goes through
(:mod:`.seen_unseen`); each is tested against a NumPy reference. The evaluation pass that
drives them is :mod:`zsl.evaluation`.
"""

from __future__ import annotations

from zsl.metrics.inputs import harmonic_mean
from zsl.metrics.per_class import PerClassAccuracy
from zsl.metrics.seen_unseen import SeenUnseenStats, StatsReport

__all__ = ["PerClassAccuracy", "SeenUnseenStats", "StatsReport", "harmonic_mean"]
