"""The logger settings of a run (the ``logger`` config group), typed.

:func:`zsl.reporting.tracking.make_logger` reads them; :class:`zsl.run.spec.RunSpec` holds
them with the rest of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LoggerSpec"]


@dataclass(frozen=True)
class LoggerSpec:
    """``logger``: where a run's curves, tables and files also go (csv, tensorboard, mlflow,
    wandb) and that logger's own settings (unused ones keep their defaults)."""

    name: str = "csv"
    #: W&B project (and the csv logger's folder name)
    project: str = "zsl"
    entity: str | None = None
    group: str | None = None
    #: W&B: a list of tags; MLflow: a mapping of tags
    tags: Any = None
    #: W&B: auto, online, offline or disabled
    mode: str = "offline"
    #: seconds W&B online may take to start before the run logs offline
    init_timeout: float | None = None
    #: MLflow: the tracking server (None: a file store in the run directory)
    tracking_uri: str | None = None
    experiment_name: str | None = None
