"""The multirun summary's aggregation: jobs grouped by dataset × model × swept setting, mean
and sample std over seeds of every metric of :data:`METRICS` (:func:`aggregate`).

Pure functions on :class:`Job` records; Hydra's override parser is imported where it is used.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: (metrics.json key, column title), in table order
METRICS: tuple[tuple[str, str], ...] = (
    ("zsl_t1", "ZSL T1"),
    ("gzsl_u", "u"),
    ("gzsl_s", "s"),
    ("gzsl_h", "H"),
    ("gzsl_h_cal", "H cal"),
)
#: the override averaged over (never a row key)
SEED_KEY = "seed"
#: group overrides whose option already names the row (dataset, model): a column of their own
#: only where two options share a name (``model=cadavae,cadavae_paper``)
NAMED_BY_ROW = ("data", "model")

Status = Literal["finished", "failed", "not run"]


@dataclass(frozen=True)
class Job:
    """One job of a multirun: its folder name (or ``job <number>`` when it has none), its
    command-line overrides and its ``metrics.json`` (None: it did not finish)."""

    name: str
    overrides: tuple[str, ...] = ()
    metrics: Mapping[str, Any] | None = None
    status: Status = "finished"
    num: int | None = None


@dataclass(frozen=True)
class Row:
    """One row of the summary: the finished runs of one dataset × model × setting."""

    dataset: str
    model: str
    settings: tuple[str, ...]
    seeds: tuple[Any, ...]
    mean: dict[str, float]
    std: dict[str, float | None]  # None: a single run (no std)

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass
class Summary:
    """What :func:`aggregate` makes of a multirun's jobs."""

    settings: tuple[str, ...]  # the swept settings (override keys) shown as columns
    rows: list[Row]
    failed: list[Job]
    not_run: list[Job]
    n_jobs: int
    protocols: tuple[str, ...]
    swept: tuple[str, ...] = ()  # every swept override key, the seed included
    notes: list[str] = field(default_factory=list)


def _override_key(override: Any) -> str:
    """An override's key without its ``+``/``~`` prefix (``a.b``, ``group@package``)."""
    key = str(override.key_or_group)
    return f"{key}@{override.package}" if override.package else key


@functools.lru_cache(maxsize=4096)
def _parse_one(text: str) -> tuple[str, str] | None:
    """``key, value`` of one override (None: a ``hydra.*`` key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([text])
    except Exception:  # noqa: BLE001 - a text Hydra would not take: keep it as it is
        key, _, value = text.partition("=")
        return key.lstrip("+~"), value
    if override.is_hydra_override():
        return None
    if override.is_sweep_override():
        return _override_key(override), text.partition("=")[2]
    return _override_key(override), override.get_value_element_as_str()


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["model=ale", "+a.b=1"]`` -> ``{"model": "ale", "a.b": "1"}`` (Hydra's grammar; a
    sweep keeps its text, e.g. ``0,1``; ``hydra.*`` keys are left out)."""
    items: dict[str, str] = {}
    for text in overrides:
        parsed = _parse_one(str(text))
        if parsed is not None:
            items[parsed[0]] = parsed[1]
    return items


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value differs between jobs (a key some jobs lack counts):
    what the multirun swept, whatever the sweeper."""
    parsed = [parse_overrides(job.overrides) for job in jobs if job.overrides]
    order: list[str] = []
    for items in parsed:
        order += [key for key in items if key not in order]
    return [key for key in order if len({items.get(key) for items in parsed}) > 1]


def _stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (n - 1; None for one value); NaN when a value is NaN."""
    if any(math.isnan(v) for v in values):
        return math.nan, (math.nan if len(values) > 1 else None)
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _value(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate(jobs: Sequence[Job], swept: Sequence[str] | None = None) -> Summary:
    """Group the finished jobs by dataset × model × swept setting (``swept``: override keys;
    default :func:`varying_keys`; the seed is averaged over, never a key) and compute the mean
    and sample std of every metric of :data:`METRICS`. Rows keep the jobs' order; jobs that
    did not finish are returned as ``failed`` and ``not_run``."""
    every = list(varying_keys(jobs) if swept is None else swept)
    keys = [k for k in every if k != SEED_KEY]
    finished = [job for job in jobs if job.status == "finished" and job.metrics is not None]
    values = {id(job): parse_overrides(job.overrides) for job in finished}

    def row_of(job: Job) -> tuple[str, str]:
        assert job.metrics is not None
        return str(job.metrics.get("dataset", "?")), str(job.metrics.get("model", "?"))

    shown = []
    for key in keys:
        if key in NAMED_BY_ROW:  # model=ale,eszsl: the model column already tells them apart
            options: dict[tuple[str, str], set[str | None]] = {}
            for job in finished:
                options.setdefault(row_of(job), set()).add(values[id(job)].get(key))
            if all(len(found) <= 1 for found in options.values()):
                continue
        shown.append(key)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in finished:
        setting = tuple(values[id(job)].get(key, "") for key in shown)
        groups.setdefault((*row_of(job), *setting), []).append(job)
    rows = []
    for group_key, members in groups.items():
        mean: dict[str, float] = {}
        std: dict[str, float | None] = {}
        for key, _ in METRICS:
            mean[key], std[key] = _stats([_value(job.metrics or {}, key) for job in members])
        seeds = tuple((job.metrics or {}).get(SEED_KEY) for job in members)
        rows.append(Row(group_key[0], group_key[1], group_key[2:], seeds, mean, std))
    protocols = sorted({str((job.metrics or {}).get("protocol", "?")) for job in finished})
    return Summary(
        settings=tuple(shown),
        rows=rows,
        failed=[job for job in jobs if job.status == "failed"],
        not_run=[job for job in jobs if job.status == "not run"],
        n_jobs=len(jobs),
        protocols=tuple(protocols),
        swept=tuple(every),
    )
