"""Checkpoints of a ``train.py`` run and resuming an interrupted one.

Layout inside the run directory::

    checkpoints/val-<i>/best.ckpt   grid point i: epoch with the best val/<model.search.metric>
    checkpoints/val-<i>/last.ckpt   grid point i: the latest epoch (iterative models)
    checkpoints/final/last.ckpt     the final trainval fit: the latest epoch
    trials/<i>.json                 grid point i, once its validation fit has finished
    model.ckpt                      the final model (after its single test evaluation)

Checkpoints are written at the end of every training epoch (validation, when it runs, comes
first in the epoch), so a resumed fit redoes at most the epoch that was interrupted. Besides
weights, optimizer and loop state, every checkpoint holds the module's validation history and
the RNG states (see :meth:`zsl.models.base.ZSLModule.on_save_checkpoint`), so a resumed run on
the same machine and settings reproduces the uninterrupted one exactly.

``python train.py resume=<run dir or a .ckpt inside it>`` reads the run's ``config.yaml``
(:func:`resume_config`), skips the grid points recorded in ``trials/`` and continues the
interrupted fit from its ``last.ckpt``. SIGTERM (:func:`sigterm_guard`) stops a run at the
end of the current batch with :class:`TrainingInterrupted`, whose message says how to resume.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zsl.errors import ResumeError, RunDirError, TrainingInterrupted
from zsl.run.callbacks import LAST
from zsl.run.lock import LOCK_NAME
from zsl.run.selection import Trial

CHECKPOINT_DIR = "checkpoints"
TRIALS_DIR = "trials"


def resume_path(directory: Path) -> Path | None:
    """``directory/last.ckpt`` if an interrupted fit left one, else None (start afresh)."""
    path = directory / LAST
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- files


def make_run_dir(
    output_dir: str | None, runs_dir: str, stem: str, resume: str | None = None
) -> Path:
    """The run directory: ``resume``'s, ``output_dir`` (created if absent; a new run must then
    find it empty, :func:`claim_new_run_dir`), else
    ``<runs_dir>/<stem>_<time>`` (a suffix ``-1``, ``-2``, ... when runs start in the same
    second, e.g. the jobs of a multirun). Never overwrites a run."""
    if resume:
        return Path(resume)
    if output_dir:
        run_dir = Path(output_dir)
        try:
            exists, is_dir = run_dir.exists(), run_dir.is_dir()
        except OSError as err:  # e.g. a name too long for the file system
            raise RunDirError(
                f"output_dir: cannot create or write the run directory {run_dir} "
                f"({err.strerror or type(err).__name__})"
            ) from None
        if exists and not is_dir:
            raise NotADirectoryError(f"output_dir {run_dir} is a file, not a folder")
        # empty or not: checked under the directory's lock (claim_new_run_dir), so a live run
        # there is named as such
        _mkdir(run_dir, "output_dir", exist_ok=True)
        return run_dir
    base = Path(runs_dir) / f"{stem}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    _mkdir(base.parent, "paths.runs_dir", exist_ok=True)
    for n in range(1000):
        run_dir = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            _mkdir(run_dir, "paths.runs_dir", exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run directory next to {base}")


def claim_new_run_dir(run_dir: Path) -> None:
    """Under the run directory's lock (:class:`zsl.run.lock.RunLock`): a new run's
    ``output_dir`` must be empty; runs are never overwritten or mixed."""
    ours = (LOCK_NAME, ".zsl-write-test")
    if any(not p.name.startswith(ours) for p in run_dir.iterdir()):
        raise FileExistsError(
            f"run directory {run_dir} already exists and is not empty; choose another output_dir"
        )


def work_saved(run_dir: Path) -> bool:
    """Whether the run has finished work that ``resume=`` would reuse (a validated grid point
    in ``trials/``): from then on a failed run is kept. Before that, a failed run holds at most
    part of a fit that its rerun redoes anyway, and is removed."""
    return any((run_dir / TRIALS_DIR).glob("*.json"))


def _mkdir(path: Path, key: str, exist_ok: bool) -> None:
    """Create ``path`` (and its parents); one clear error when the file system refuses."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
        probe = path / f".zsl-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except FileExistsError:
        raise
    except OSError as err:
        raise RunDirError(
            f"{key}: cannot create or write the run directory {path} "
            f"({err.strerror or type(err).__name__})"
        ) from None


def save_trial(trials_dir: Path, index: int, trial: Trial) -> Path:
    """Record a finished grid point as ``<trials_dir>/<index>.json`` (atomically)."""
    path = trials_dir / f"{index}.json"
    write_json_atomic(path, asdict(trial))
    return path


def load_trial(trials_dir: Path, index: int, params: dict[str, Any]) -> Trial | None:
    """The recorded grid point ``index``, or None if it has not finished; refuses a record
    made for other parameters (the grid of the run changed)."""
    path = trials_dir / f"{index}.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ResumeError(
            f"{path} is unreadable or corrupt ({type(err).__name__}: {_first_line(err)}); "
            f"delete it to redo grid point {index}"
        ) from None
    if data.get("params") != json.loads(json.dumps(params, default=float)):
        raise ResumeError(
            f"{path} records parameters {data.get('params')} but grid point {index} is "
            f"{params}; the run's search grid changed, start a new run"
        )
    try:
        return Trial(**data)
    except TypeError as err:
        raise ResumeError(
            f"{path} is not a grid point record ({_first_line(err)}); delete it to redo grid "
            f"point {index}"
        ) from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that ``path`` holds either its old content or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=float)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- resume


def run_dir_of(target: str | Path) -> Path:
    """The run directory named by ``resume=``: the directory itself, or the nearest parent
    of a ``.ckpt`` (or any file inside it) that holds ``config.yaml``."""
    path = Path(target)
    if not path.exists():
        raise ResumeError(f"resume={target}: no such run directory or checkpoint")
    for candidate in [path, *path.parents] if path.is_dir() else list(path.parents):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ResumeError(
        f"resume={target}: no run directory with a config.yaml found there or above; "
        "a run interrupted before it wrote config.yaml cannot be resumed (start a new one)"
    )


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: cfg}


def resume_config(given: DictConfig, argv: list[str]) -> DictConfig:
    """The config of the run ``given.resume`` points at, with ``resume`` set to its directory.

    The rule: ``resume=<run>`` alone continues the run with its saved ``config.yaml``; with
    more arguments they must compose exactly the saved config (the original command line
    plus ``resume=``), anything else is refused naming the changed keys."""
    target = str(given.resume)
    run_dir = run_dir_of(target)
    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
        if not isinstance(saved, DictConfig) or "model" not in saved or "data" not in saved:
            raise ValueError("not a run config (no model and data sections)")
    except Exception as err:  # noqa: BLE001 - yaml and omegaconf raise many types
        raise ResumeError(
            f"resume={target}: {run_dir / 'config.yaml'} is unreadable or corrupt "
            f"({type(err).__name__}: {_first_line(err)}); the run cannot be resumed, start a "
            "new one"
        ) from None
    if (run_dir / "metrics.json").is_file():
        raise ResumeError(
            f"resume={target}: {run_dir} already finished (metrics.json exists); nothing to resume"
        )
    others = [a for a in argv if a.split("=", 1)[0].lstrip("+") != "resume"]
    if others:
        ours = _flat(OmegaConf.to_container(given, resolve=True))
        theirs = _flat(OmegaConf.to_container(saved, resolve=True))
        changed = sorted(
            k for k in set(ours) | set(theirs) if k != "resume" and ours.get(k) != theirs.get(k)
        )
        if changed:
            shown = ", ".join(f"{k} ({theirs.get(k)!r} -> {ours.get(k)!r})" for k in changed[:8])
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            raise ResumeError(
                f"resume={target}: the command line changes the run's config: {shown}"
                f"{more}. A resumed run keeps {run_dir / 'config.yaml'}: pass resume=... alone "
                "(or with exactly the original overrides), or start a new run"
            )
    saved.resume = str(run_dir)
    return saved


# ----------------------------------------------------------------------------- signals

#: the signal that interrupted the running fit (set by :func:`interrupt_guard`'s handler)
_received: list[int] = []


def received_signal() -> int:
    """The signal that interrupted the current run (SIGTERM when none was recorded)."""
    return _received[-1] if _received else int(signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def interrupt_guard() -> Iterator[None]:
    """Turn SIGTERM and SIGINT (Ctrl-C) into :class:`TrainingInterrupted`.

    Outside a Lightning fit the handler raises at once. While ``trainer.fit``/``test`` runs,
    Lightning (2.x, ``_SignalConnector``) owns SIGTERM: its handler sets
    ``trainer.received_sigterm`` (and also calls this one, which then does nothing), and the
    loops raise ``SIGTERMException`` after the current batch, which
    :func:`zsl.run.fitting.interruptible` turns into :class:`TrainingInterrupted`. SIGINT is
    routed to the same handler, so Ctrl-C stops a fit the same way (Lightning would otherwise
    turn ``KeyboardInterrupt`` into ``sys.exit(1)``). A second Ctrl-C stops at once, still as
    :class:`TrainingInterrupted`; the run directory is kept for ``resume=`` either way.
    """

    forwarding: list[bool] = []

    def handler(signum: int, frame: Any) -> None:
        if forwarding:  # our own SIGINT, passed through Lightning's handler back to us
            return
        first = not _received
        _received.append(int(signum))
        if signal.getsignal(signal.SIGTERM) is handler:  # no Lightning loop running
            raise TrainingInterrupted(f"{signal_name(signum)} received", signum)
        if signum == signal.SIGINT:
            if not first:  # impatient: stop now, the last checkpoint is kept
                raise TrainingInterrupted("SIGINT received twice: stopped at once", signum)
            lightning = signal.getsignal(signal.SIGTERM)
            if callable(lightning):  # stop after the current batch, as for SIGTERM
                forwarding.append(True)
                try:
                    lightning(signal.SIGTERM, frame)
                finally:
                    forwarding.clear()

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    _received.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


#: the former name (SIGTERM only); SIGINT is handled the same way now
sigterm_guard = interrupt_guard
