"""The benchmark's cell runner: methods x datasets x seeds, each cell one ordinary run.

A cell ``(method, dataset, seed)`` is keyed by its settings (see :mod:`zsl.cli.benchmark` for
the rule as the command documents it): its run config as composed for ``train.py``, resolved,
without :data:`IGNORED_KEYS`, plus the provenance record of generated stand-in features when it
reads them. :func:`settings_hash` names its directory
``<runs-dir>/<name>/<dataset>_<method>_seed<seed>_<hash>/``; a finished cell there (its
``metrics.json`` and a :data:`CELL_RECORD` of the same hash) is reused, anything else runs
again into that directory and earlier cells of other settings are left in place.

Composing and running a config are entry points of the command line; they are handed in as
:class:`CellEntries` (module-level callables, so cells can run in worker processes), which
keeps this module free of the command-line layer.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zsl.errors import ConfigError

#: the GBU benchmark's methods (Xian et al., TPAMI 2018), in its table's order
GBU: tuple[str, ...] = (
    *("dap", "iap", "conse", "cmt", "sse", "latem", "ale"),
    *("devise", "sje", "eszsl", "sync", "sae", "gfzsl"),
)
#: run-config keys left out of a cell's settings: they cannot change its numbers
IGNORED_KEYS: tuple[str, ...] = (
    "output_dir",
    "resume",
    "logger",
    "paths.runs_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_interval_s",
)
#: written beside a finished cell's ``metrics.json``: its settings hash, argv and settings
CELL_RECORD = "cell.json"
#: how many differing keys the rerun line names
SHOWN_KEYS = 4
#: where the data configs live (``<dataset>.yaml``)
DATA_CONFIGS = Path(__file__).resolve().parent.parent / "conf" / "data"

Cell = tuple[str, str, int]  # (method, dataset, seed)
StandIn = tuple[str, str]  # (data root, feature file) of generated features


@dataclass(frozen=True)
class BenchmarkPlan:
    """What every cell of one benchmark shares."""

    name: str = "benchmark"
    runs_dir: str = "runs/benchmark"
    logger: str = "csv"
    root: str | None = None
    feature_file: str | None = None
    force: bool = False
    #: datasets read from generated features: dataset -> (data root, feature file)
    standins: Mapping[str, StandIn] = field(default_factory=dict)


@dataclass(frozen=True)
class CellEntries:
    """The entry points a cell goes through: ``compose(argv)`` is the validated run config of
    ``train.py <argv>`` (a bad override exits with one line), ``train(argv)`` runs it and
    returns its ``metrics.json`` content. Module-level functions, so worker processes can
    receive them."""

    compose: Callable[[list[str]], DictConfig]
    train: Callable[[list[str]], Mapping[str, Any] | None]


def expand_methods(spec: str) -> list[str]:
    """Model names from a comma list in which ``gbu``, ``classical`` and ``generative`` stand
    for their sets; an unknown name raises :class:`ConfigError` listing what exists."""
    from zsl.models import MODELS

    def family(package: str) -> list[str]:
        return sorted(n for n in MODELS if MODELS[n].startswith(f"zsl.models.{package}."))

    sets = {"gbu": list(GBU), "classical": family("classical"), "generative": family("generative")}
    names: list[str] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        for name in sets.get(item, [item]):
            if name not in MODELS:
                raise ConfigError(
                    f"unknown method {name!r}; available: {', '.join(sorted(MODELS))} "
                    f"and the sets {', '.join(sets)}"
                )
            if name not in names:
                names.append(name)
    return names


def cell_argv(
    method: str, dataset: str, seed: int, plan: BenchmarkPlan, extra: list[str]
) -> list[str]:
    """The ``train.py`` arguments of one cell, without its ``output_dir``."""
    argv = [
        f"data={dataset}",
        f"model={method}",
        f"seed={seed}",
        f"logger={plan.logger}",
        "trainer.enable_progress_bar=false",
    ]
    standin = plan.standins.get(dataset)
    if standin is not None:  # generated features at the dataset's real shapes
        argv += [f"data.root={standin[0]}", f"data.feature_file={standin[1]}"]
    else:
        if plan.root:
            argv.append(f"data.root={plan.root}")
        if plan.feature_file:
            argv.append(f"data.feature_file={plan.feature_file}")
    return argv + list(extra)


def settings_of(cfg: DictConfig, standin: StandIn | None = None) -> dict[str, Any]:
    """What identifies a cell: its composed run config, resolved, without
    :data:`IGNORED_KEYS`; with ``standin`` also ``benchmark.synthetic_features``, the
    provenance record of the generated features it reads."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(settings, dict)
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = settings
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    if standin is not None:
        data = settings.get("data")
        folder = str(data.get("name")) if isinstance(data, dict) else ""
        settings["benchmark"] = {"synthetic_features": _standin_record(folder, standin)}
    return {str(key): value for key, value in settings.items()}


def _standin_record(folder: str, standin: StandIn) -> Any:
    """The provenance record of the generated features a cell reads (None before they exist)."""
    from zsl.data.standin import provenance_path

    path = provenance_path(Path(standin[0]) / folder / standin[1])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def settings_hash(settings: dict[str, Any]) -> str:
    """A cell's identity: the first 12 hex digits of the SHA-256 of ``settings`` as JSON with
    sorted keys (stable across runs, processes and key order)."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_record(cell_dir: Path) -> dict[str, Any] | None:
    """A cell directory's ``cell.json`` (None when it is missing or unreadable)."""
    try:
        record = json.loads((cell_dir / CELL_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(cell_dir: Path, digest: str) -> bool:
    """``cell_dir`` holds a finished run made with the settings of hash ``digest``."""
    record = read_record(cell_dir)
    return (
        (cell_dir / "metrics.json").is_file()
        and record is not None
        and record.get("hash") == digest
    )


def earlier_cells(base: Path, stem: str) -> list[Path]:
    """Finished cells of one (dataset, method, seed) under ``base``, whatever their settings:
    ``<stem>_<hash>`` and the pre-hash ``<stem>``; newest ``metrics.json`` first."""
    pattern = re.compile(rf"{re.escape(stem)}(_[0-9a-f]{{12}})?")
    if not base.is_dir():
        return []
    found = [
        d for d in base.iterdir() if pattern.fullmatch(d.name) and (d / "metrics.json").is_file()
    ]
    return sorted(found, key=lambda d: (d / "metrics.json").stat().st_mtime, reverse=True)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{dotted key: leaf value}`` (an empty dict is a leaf)."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two cells' settings, sorted."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def rerun_reason(earlier: Path, settings: dict[str, Any], digest: str, force: bool) -> str:
    """Why the finished cell ``earlier`` is not reused for ``settings`` (of hash ``digest``)."""
    record = read_record(earlier)
    if record is None or "hash" not in record:
        return f"{earlier} has no settings record ({CELL_RECORD}), so its settings are unknown"
    if force and record["hash"] == digest:
        return f"--force (same settings as {earlier})"
    keys = changed_keys(record.get("settings") or {}, settings)
    if not keys:  # a record edited by hand, or of another hash rule
        return f"{earlier}/{CELL_RECORD} records hash {record['hash']}, not {digest}"
    shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
    return f"settings changed since {earlier} ({shown})"


def write_record(out: Path, digest: str, argv: list[str], settings: dict[str, Any]) -> None:
    """Record a finished cell's hash, argv and settings (atomically) in ``out``."""
    record = {"hash": digest, "argv": argv, "settings": settings}
    partial = out / f".{CELL_RECORD}.tmp"
    partial.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    partial.replace(out / CELL_RECORD)


def run_one(
    cell: Cell, plan: BenchmarkPlan, extra: list[str], entries: CellEntries
) -> dict[str, Any]:
    """One cell's metrics: reused from ``<runs_dir>/<name>/<dataset>_<method>_seed<seed>_<hash>``
    when that holds a finished run with these settings, else a run into it (an earlier cell of
    the same dataset, method and seed is named in one ``[benchmark] rerunning`` line)."""
    method, dataset, seed = cell
    standin = plan.standins.get(dataset)
    argv = cell_argv(method, dataset, seed, plan, extra)
    settings = settings_of(entries.compose(argv), standin)
    digest = settings_hash(settings)
    base = Path(plan.runs_dir) / plan.name
    stem = f"{dataset}_{method}_seed{seed}"
    out = base / f"{stem}_{digest}"
    if is_finished(out, digest) and not plan.force:
        print(f"[benchmark] reusing {out}", flush=True)
        return dict(json.loads((out / "metrics.json").read_text()))
    earlier = earlier_cells(base, stem)
    if earlier:  # the cell's own directory first: it is the one replaced
        shown = out if out in earlier else earlier[0]
        print(
            f"[benchmark] rerunning {dataset} {method} seed {seed}: "
            f"{rerun_reason(shown, settings, digest, plan.force)}; new cell {out}",
            flush=True,
        )
    if out.exists():  # an unfinished attempt at these settings, or --force
        shutil.rmtree(out)
    run_argv = [*argv[:3], f"output_dir={out}", *argv[3:]]
    print(f"[benchmark] {' '.join(run_argv)}", flush=True)
    metrics = entries.train(run_argv)
    assert metrics is not None
    write_record(out, digest, run_argv, settings)
    return dict(metrics)


def dataset_folder(dataset: str) -> str:
    """The benchmark folder a data config reads (``sun`` -> ``SUN``)."""
    from omegaconf import OmegaConf

    path = DATA_CONFIGS / f"{dataset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown dataset config {dataset!r} (no {path})")
    loaded = OmegaConf.load(path)
    return str(loaded.get("name") or dataset) if isinstance(loaded, DictConfig) else dataset


def make_standins(datasets: list[str], plan: BenchmarkPlan, dim: int) -> dict[str, StandIn]:
    """For every dataset whose feature file is missing under the plan's data root, synthetic
    ``dim``-d features at its real shapes (:mod:`zsl.data.standin`), generated once into
    ``<runs-dir>/<name>/synthetic_data``; maps the dataset to (data root, feature file)."""
    from zsl.data.standin import FEATURE_FILE, synthesize_features

    root = Path(plan.root or "data/xlsa17")
    feature_file = plan.feature_file or "res101.mat"
    out = Path(plan.runs_dir) / plan.name / "synthetic_data"
    standins = {}
    for dataset in datasets:
        folder = dataset_folder(dataset)
        if (root / folder / feature_file).is_file():
            continue
        made = synthesize_features(root, folder, out, dim=dim)
        print(
            f"[benchmark] {folder}: no {feature_file}; synthetic {made.feature_dim}-d features "
            f"at its real shapes ({made.n_images} images) in {made.folder}",
            flush=True,
        )
        standins[dataset] = (str(out), FEATURE_FILE)
    return standins


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s
    share), not every core of the machine; ``os.cpu_count()`` where affinity is unknown."""
    import os

    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def _start_worker(threads: int) -> None:
    """Pool initializer: share the cores between the workers instead of oversubscribing."""
    import torch

    torch.set_num_threads(threads)


def _clock(seconds: float) -> str:
    """``m:ss``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class _Progress:
    """The finished cells so far and one progress line per finished cell."""

    def __init__(self, total: int) -> None:
        import time

        self._clock = time.perf_counter
        self._start = self._clock()
        self.total = total
        self.results: dict[Cell, dict[str, Any]] = {}

    def report(self, cell: Cell, metrics: dict[str, Any]) -> None:
        """Record a finished cell and print its progress line."""
        self.results[cell] = metrics
        done, elapsed = len(self.results), self._clock() - self._start
        eta = elapsed / done * (self.total - done)
        print(
            f"[benchmark] cell {done}/{self.total} {cell[1]} {cell[0]} seed {cell[2]} · "
            f"ZSL T1 {float(metrics['zsl_t1']):.1f} · {float(metrics['wall_time_s']):.0f} s · "
            f"elapsed {_clock(elapsed)} · ETA {_clock(eta)}",
            flush=True,
        )


def run_cells(
    cells: list[Cell],
    plan: BenchmarkPlan,
    extra: list[str],
    workers: int,
    entries: CellEntries,
) -> list[dict[str, Any]]:
    """Every cell's ``metrics.json`` in ``cells`` order, finished ones reused; ``workers`` > 1
    runs cells in that many processes (each with ``cores / workers`` torch threads). One
    progress line per finished cell: ``cell 3/42 CUB ale seed 1 · ZSL T1 53.0 · 25 s ·
    elapsed 1:12 · ETA 4:30``."""
    from concurrent.futures import Future, ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    progress = _Progress(len(cells))
    if workers <= 1:
        for cell in cells:
            progress.report(cell, run_one(cell, plan, extra, entries))
    else:
        threads = max(1, available_cores() // workers)
        with ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads,),
        ) as pool:
            futures: dict[Future[dict[str, Any]], Cell] = {
                pool.submit(run_one, cell, plan, extra, entries): cell for cell in cells
            }
            for future in as_completed(futures):
                progress.report(futures[future], future.result())
    return [progress.results[cell] for cell in cells]
