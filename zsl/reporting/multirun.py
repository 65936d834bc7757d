"""The summary of a multirun: mean ± std over seeds of its jobs' ``metrics.json``.

``python train.py -m model=ale,eszsl seed=0,1`` ends with a table, one row per dataset ×
model × any other swept setting that is not the seed, columns ZSL T1, GZSL u, s, H,
calibrated H and the number of runs; it is printed and written as ``summary.md`` and
``summary.csv`` into the sweep folder (``hydra.sweep.dir``). The std is the sample std
(n - 1); a row of one run shows its value alone. Jobs without a ``metrics.json`` are listed
as failed, and a multirun that stops early (a failed job ends Hydra's multirun, as does
Ctrl-C) is still summarised at exit, its remaining jobs listed as not run. With Hydra's
Optuna sweeper the best point and value (``optimization_results.yaml``) are printed last.

:class:`MultirunSummary` is the Hydra callback (``hydra.callbacks`` in ``zsl/conf/train.yaml``).
Each job records its overrides in ``<sweep dir>/.jobs/<job number>.json`` when it starts (from
the job's own process, so any launcher works); at the multirun's end the records and the job
folders are aggregated by the pure functions :func:`aggregate`
(:mod:`zsl.reporting.multirun_aggregate`), :func:`to_markdown` and :func:`to_csv`
(:mod:`zsl.reporting.multirun_render`). ``python -m zsl.reporting.multirun <sweep dir>``
writes the summary of a sweep folder again (e.g. after some jobs were rerun with
``resume=``).

Nothing here imports torch or Lightning; Hydra's parser is imported where it is used.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from zsl.reporting.multirun_aggregate import (
    METRICS,
    NAMED_BY_ROW,
    SEED_KEY,
    Job,
    Row,
    Status,
    Summary,
    _override_key,
    aggregate,
    parse_overrides,
    varying_keys,
)
from zsl.reporting.multirun_render import describe, optuna_best, to_csv, to_markdown

__all__ = [
    "BASIC_SWEEPER",
    "JOBS_DIR",
    "METRICS",
    "NAMED_BY_ROW",
    "OPTUNA_RESULTS",
    "SEED_KEY",
    "SUMMARY_STEM",
    "Job",
    "MultirunSummary",
    "Row",
    "Summary",
    "aggregate",
    "collect_jobs",
    "describe",
    "expected_jobs",
    "main",
    "optuna_best",
    "parse_overrides",
    "record_path",
    "summarize",
    "sweep_keys",
    "to_csv",
    "to_markdown",
    "varying_keys",
    "write_record",
]

#: where each job records its overrides, inside the sweep folder
JOBS_DIR = ".jobs"
SUMMARY_STEM = "summary"
OPTUNA_RESULTS = "optimization_results.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


# ----------------------------------------------------------------------------- files


def _plain_dict(node: Any) -> dict[str, Any] | None:
    """A config node (or None) as a plain dict with string keys, unresolved."""
    if node is None or not OmegaConf.is_dict(node):
        return None
    return {str(k): v for k, v in OmegaConf.to_container(node, resolve=False).items()}  # type: ignore[union-attr]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_path(sweep_dir: Path, num: int) -> Path:
    """Where job ``num`` records its overrides and folder."""
    return Path(sweep_dir) / JOBS_DIR / f"{num}.json"


def write_record(sweep_dir: Path, num: int, overrides: Sequence[str], job_dir: Path) -> None:
    """Record a starting job (atomically: concurrent jobs each write their own file)."""
    path = record_path(sweep_dir, num)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    record = {"num": num, "overrides": list(overrides), "dir": str(job_dir)}
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def collect_jobs(
    sweep_dir: Path,
    expected: Sequence[Sequence[str]] | None = None,
    config_keys: Sequence[str] = (),
) -> list[Job]:
    """The jobs of the sweep folder: every recorded job (finished when its folder holds
    ``metrics.json``, else failed), then job folders without a record (a sweep from before the
    records; their ``config_keys`` overrides are read back from their ``config.yaml``), then
    the ``expected`` jobs (override lists in job-number order) that never started."""
    sweep_dir = Path(sweep_dir)
    records = []
    for path in (sweep_dir / JOBS_DIR).glob("*.json"):
        record = _read_json(path)
        if record is not None and isinstance(record.get("num"), int):
            records.append(record)
    records.sort(key=lambda r: int(r["num"]))
    jobs = [_recorded_job(sweep_dir, record) for record in records]
    seen = {job_dir.resolve() for job_dir in (_record_dir(sweep_dir, r) for r in records)}
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if folder.resolve() not in seen:
            job = _unrecorded_job(folder, config_keys)
            if job is not None:
                jobs.append(job)
    if expected is not None and records:
        started = {job.num for job in jobs if job.num is not None}
        for num, planned in enumerate(expected):
            if num not in started:
                jobs.append(Job(f"job {num}", tuple(planned), None, "not run", num))
    return jobs


def _record_dir(sweep_dir: Path, record: Mapping[str, Any]) -> Path:
    """A recorded job's folder (a relative one is inside the sweep folder)."""
    job_dir = Path(str(record.get("dir", "")))
    return job_dir if job_dir.is_absolute() else sweep_dir / job_dir


def _recorded_job(sweep_dir: Path, record: Mapping[str, Any]) -> Job:
    """The job of one record: finished when its folder holds ``metrics.json``, else failed."""
    job_dir = _record_dir(sweep_dir, record)
    metrics = _read_json(job_dir / "metrics.json")
    return Job(
        name=job_dir.name,
        overrides=tuple(str(o) for o in record.get("overrides") or ()),
        metrics=metrics,
        status="finished" if metrics is not None else "failed",
        num=int(record["num"]),
    )


def _unrecorded_job(folder: Path, config_keys: Sequence[str]) -> Job | None:
    """A run folder without a record, its ``config_keys`` overrides read back from its
    ``config.yaml`` (None: not a run folder)."""
    metrics = _read_json(folder / "metrics.json")
    if metrics is None and not (folder / "config.yaml").is_file():
        return None
    overrides: tuple[str, ...] = ()
    if config_keys and (folder / "config.yaml").is_file():
        cfg = OmegaConf.load(folder / "config.yaml")
        found = [(k, OmegaConf.select(cfg, k, default=None)) for k in config_keys]
        overrides = tuple(
            f"{k}={v}" for k, v in found if v is not None and not OmegaConf.is_config(v)
        )
    status: Status = "finished" if metrics is not None else "failed"
    return Job(folder.name, overrides, metrics, status)


def expected_jobs(
    overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None
) -> list[list[str]] | None:
    """The override lists of Hydra's basic sweeper for these multirun overrides (and its
    ``hydra.sweeper.params``), in job-number order; None when it cannot tell (a sweep Hydra
    would refuse, a glob over a config group)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)
    try:
        from hydra.core.global_hydra import GlobalHydra

        hydra = GlobalHydra.instance()
        loader = hydra.config_loader() if hydra.is_initialized() else None
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(given)
        (batch,) = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - Hydra's own error is reported by Hydra
        return None
    return [list(job) for job in batch]


def sweep_keys(overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """The keys a multirun sweeps (``a=1,2``, ``range``, Optuna's ``interval``...), from its
    command-line overrides and ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)
    keys: list[str] = []
    for text in given:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except Exception:  # noqa: BLE001 - not ours to report
            continue
        key = _override_key(override)
        if override.is_sweep_override() and not override.is_hydra_override() and key not in keys:
            keys.append(key)
    return keys


def summarize(
    sweep_dir: Path,
    expected: Sequence[Sequence[str]] | None = None,
    config_keys: Sequence[str] = (),
    note: str | None = None,
) -> tuple[Summary, str]:
    """Aggregate the sweep folder, write ``summary.md`` and ``summary.csv`` into it and return
    the summary and its Markdown text (with the Optuna sweeper's best point, if any)."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir, expected, config_keys)
    summary = aggregate(jobs)
    if note:
        summary.notes.append(note)
    results_path = sweep_dir / OPTUNA_RESULTS
    if results_path.is_file():
        results = _plain_dict(OmegaConf.load(results_path))
        objectives = {
            f"validation {job.metrics.get('selection_metric')}"
            for job in jobs
            if job.metrics is not None and job.metrics.get("selection_metric")
        }
        objective = objectives.pop() if len(objectives) == 1 else None
        if results is not None:
            summary.notes.append(optuna_best(results, objective))
    text = to_markdown(summary, f"Multirun summary: {sweep_dir}")
    (sweep_dir / f"{SUMMARY_STEM}.md").write_text(text)
    (sweep_dir / f"{SUMMARY_STEM}.csv").write_text(to_csv(summary))
    return summary, text


# ----------------------------------------------------------------------------- the callback


def _is_multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode", default=None)
    return str(getattr(mode, "name", mode)) == "MULTIRUN"


def _sweep_dir(config: DictConfig) -> Path:
    """The multirun's folder (``hydra.sweep.dir``)."""
    return Path(str(OmegaConf.select(config, "hydra.sweep.dir")))


def _task_overrides(config: DictConfig | ListConfig) -> list[str]:
    """The job's (or multirun's) command-line overrides (``hydra.overrides.task``)."""
    return [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]


class MultirunSummary(Callback):
    """Hydra callback: every job records its overrides when it starts; the multirun's end
    (or, when it stops early, the process's exit) writes and prints the summary."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None
        self._expected: list[list[str]] | None = None
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = _sweep_dir(config)
        self._ended = False
        if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER:
            params = _plain_dict(OmegaConf.select(config, "hydra.sweeper.params", default=None))
            self._expected = expected_jobs(_task_overrides(config), params)
        atexit.register(self._at_exit)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        write_record(
            _sweep_dir(config),
            int(OmegaConf.select(config, "hydra.job.num")),
            _task_overrides(config),
            Path(str(OmegaConf.select(config, "hydra.runtime.output_dir"))),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._ended = True
        atexit.unregister(self._at_exit)
        self._report(_sweep_dir(config), None)

    def _at_exit(self) -> None:
        """The multirun stopped before its end (a failed job, Ctrl-C): summarise what ran."""
        if self._ended or self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        self._ended = True
        try:
            self._report(self._sweep_dir, "The multirun stopped before its end.")
        except Exception as err:  # noqa: BLE001 - at exit: one line, never a traceback
            print(f"warning: no multirun summary: {type(err).__name__}: {err}", file=sys.stderr)

    def _report(self, sweep_dir: Path, note: str | None) -> None:
        if not sweep_dir.is_dir():
            return
        _, text = summarize(sweep_dir, self._expected, note=note)
        print(f"\nwritten: {sweep_dir / SUMMARY_STEM}.md and .csv\n{text}", end="", flush=True)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m zsl.reporting.multirun <sweep dir>``: write and print its summary again."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zsl.reporting.multirun",
        description="Write summary.md and summary.csv (mean ± std over seeds) of a multirun's "
        "sweep folder.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir}: not a folder")
    expected, keys = None, []
    saved = sweep_dir / "multirun.yaml"  # written there by Hydra's basic sweeper
    if saved.is_file():
        cfg = OmegaConf.load(saved)
        task = _task_overrides(cfg)
        params = _plain_dict(OmegaConf.select(cfg, "hydra.sweeper.params", default=None))
        expected = expected_jobs(task, params)
        keys = [k for k in sweep_keys(task, params) if k not in NAMED_BY_ROW]
    _, text = summarize(sweep_dir, expected, keys)
    print(f"written: {sweep_dir / SUMMARY_STEM}.md and .csv\n{text}", end="")


if __name__ == "__main__":
    main()
