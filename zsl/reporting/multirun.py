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
folders are aggregated by the pure functions :func:`aggregate`, :func:`to_markdown` and
:func:`to_csv`. ``python -m zsl.reporting.multirun <sweep dir>`` writes the summary of a
sweep folder again (e.g. after some jobs were rerun with ``resume=``).

Nothing here imports torch or Lightning; Hydra's parser is imported where it is used.
"""

from __future__ import annotations

import atexit
import csv
import functools
import io
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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
#: where each job records its overrides, inside the sweep folder
JOBS_DIR = ".jobs"
SUMMARY_STEM = "summary"
OPTUNA_RESULTS = "optimization_results.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

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


# ----------------------------------------------------------------------------- pure functions


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


def _cell(mean: float, std: float | None) -> str:
    """``52.21 ± 0.35``; a single run: ``52.21``; NaN: ``n/a``."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _setting_titles(summary: Summary) -> list[str]:
    taken = {"dataset", "model", "n"}
    return [f"{key} (override)" if key in taken else key for key in summary.settings]


def describe(summary: Summary) -> str:
    """The sentence above the table: how many jobs finished, what the ± means, which split."""
    finished = sum(row.n for row in summary.rows)
    counts = f"{summary.n_jobs} job(s), {finished} finished"
    if summary.failed:
        counts += f", {len(summary.failed)} failed"
    if summary.not_run:
        counts += f", {len(summary.not_run)} not run"
    sizes = {row.n for row in summary.rows}
    if not sizes:
        spread = "No finished run"
    elif max(sizes) > 1:
        spread = "Mean ± sample std (n - 1) over seeds"
        if 1 in sizes:
            spread += "; a row with n = 1 is a single run (no std)"
    else:
        spread = "One run per row (single runs, no std)"
    where = {"test": "test split (protocol test)", "val": "validation classes (protocol val)"}
    split = ", ".join(where.get(p, f"protocol {p}") for p in summary.protocols)
    return f"{counts}. {spread}" + (f"; {split}." if split else ".")


def _job_line(job: Job, swept: Sequence[str]) -> str:
    """``1_CUB_ale_seed0 (seed=0 model.params.lr=0.1)``: the job's swept overrides (all of
    them when nothing was swept)."""
    items = parse_overrides(job.overrides)
    shown = [f"{k}={items[k]}" for k in swept if k in items] if swept else list(job.overrides)
    return job.name + (f" ({' '.join(shown)})" if shown else "")


def to_markdown(summary: Summary, title: str = "Multirun summary") -> str:
    """The summary as a Markdown table, with the failed and not-run jobs listed below it."""
    head = ["dataset", "model", *_setting_titles(summary), *(t for _, t in METRICS), "n"]
    lines = [f"# {title}", "", describe(summary), ""]
    if summary.rows:
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for row in summary.rows:
            cells = [_cell(row.mean[key], row.std[key]) for key, _ in METRICS]
            lines.append(
                "| "
                + " | ".join([row.dataset, row.model, *row.settings, *cells, str(row.n)])
                + " |"
            )
        lines.append("")
    if summary.failed:
        lines += [f"Failed (no metrics.json): {len(summary.failed)} of {summary.n_jobs} jobs", ""]
        lines += [f"- {_job_line(job, summary.swept)}" for job in summary.failed] + [""]
    if summary.not_run:
        lines += [f"Not run (the multirun stopped first): {len(summary.not_run)} jobs", ""]
        lines += [f"- {_job_line(job, summary.swept)}" for job in summary.not_run] + [""]
    lines += summary.notes + ([""] if summary.notes else [])
    return "\n".join(lines).rstrip("\n") + "\n"


def to_csv(summary: Summary) -> str:
    """The summary as CSV: one ``finished`` line per row (full-precision mean and std; the std
    is empty for a single run), then one ``failed`` / ``not run`` line per such job."""
    head = ["status", "dataset", "model", *summary.settings, "n", "seeds"]
    head += [f"{key}_{what}" for key, _ in METRICS for what in ("mean", "std")]
    head += ["job", "overrides"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    blank = [""] * (2 * len(METRICS))
    for row in summary.rows:
        numbers = []
        for key, _ in METRICS:
            std = row.std[key]
            numbers += [repr(row.mean[key]), "" if std is None else repr(std)]
        seeds = ";".join(str(s) for s in row.seeds)
        writer.writerow(
            ["finished", row.dataset, row.model, *row.settings, row.n, seeds, *numbers, "", ""]
        )
    for job in [*summary.failed, *summary.not_run]:
        items = parse_overrides(job.overrides)
        settings = [items.get(key, "") for key in summary.settings]
        writer.writerow(
            [job.status, "", "", *settings, 0, "", *blank, job.name, " ".join(job.overrides)]
        )
    return out.getvalue()


def optuna_best(results: Mapping[str, Any], objective: str | None = None) -> str:
    """The line naming the Optuna sweeper's best point(s) from ``optimization_results.yaml``
    (``best_params``/``best_value``; several objectives: ``solutions``)."""
    what = f" ({objective})" if objective else ""
    if "best_params" in results:
        point = " ".join(f"{k}={v}" for k, v in dict(results["best_params"]).items())
        value = results.get("best_value")
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        return f"optuna best value{what}: {shown} at {point or '(no params)'}"
    solutions = list(results.get("solutions") or [])
    parts = [
        f"{s.get('values')} at " + " ".join(f"{k}={v}" for k, v in dict(s["params"]).items())
        for s in solutions
    ]
    return f"optuna Pareto-optimal values{what}: " + ("; ".join(parts) or "none")


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
    jobs: list[Job] = []
    seen: set[Path] = set()
    for record in records:
        job_dir = Path(str(record.get("dir", "")))
        if not job_dir.is_absolute():
            job_dir = sweep_dir / job_dir
        seen.add(job_dir.resolve())
        metrics = _read_json(job_dir / "metrics.json")
        jobs.append(
            Job(
                name=job_dir.name,
                overrides=tuple(str(o) for o in record.get("overrides") or ()),
                metrics=metrics,
                status="finished" if metrics is not None else "failed",
                num=int(record["num"]),
            )
        )
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if folder.resolve() in seen:
            continue
        metrics = _read_json(folder / "metrics.json")
        if metrics is None and not (folder / "config.yaml").is_file():
            continue  # not a run folder
        overrides: tuple[str, ...] = ()
        if config_keys and (folder / "config.yaml").is_file():
            cfg = OmegaConf.load(folder / "config.yaml")
            found = [(k, OmegaConf.select(cfg, k, default=None)) for k in config_keys]
            overrides = tuple(
                f"{k}={v}" for k, v in found if v is not None and not OmegaConf.is_config(v)
            )
        status: Status = "finished" if metrics is not None else "failed"
        jobs.append(Job(folder.name, overrides, metrics, status))
    if expected is not None and records:
        started = {job.num for job in jobs if job.num is not None}
        for num, planned in enumerate(expected):
            if num not in started:
                jobs.append(Job(f"job {num}", tuple(planned), None, "not run", num))
    return jobs


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


class MultirunSummary(Callback):
    """Hydra callback: every job records its overrides when it starts; the multirun's end
    (or, when it stops early, the process's exit) writes and prints the summary."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None
        self._expected: list[list[str]] | None = None
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir))
        self._ended = False
        if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER:
            params = _plain_dict(OmegaConf.select(config, "hydra.sweeper.params", default=None))
            self._expected = expected_jobs([str(o) for o in config.hydra.overrides.task], params)
        atexit.register(self._at_exit)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        write_record(
            Path(str(config.hydra.sweep.dir)),
            int(config.hydra.job.num),
            [str(o) for o in config.hydra.overrides.task],
            Path(str(config.hydra.runtime.output_dir)),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._ended = True
        atexit.unregister(self._at_exit)
        self._report(Path(str(config.hydra.sweep.dir)), None)

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
        task = [str(o) for o in OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or []]
        params = _plain_dict(OmegaConf.select(cfg, "hydra.sweeper.params", default=None))
        expected = expected_jobs(task, params)
        keys = [k for k in sweep_keys(task, params) if k not in NAMED_BY_ROW]
    _, text = summarize(sweep_dir, expected, keys)
    print(f"written: {sweep_dir / SUMMARY_STEM}.md and .csv\n{text}", end="")


if __name__ == "__main__":
    main()
