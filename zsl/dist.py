"""Process ranks of multi-process (DDP) runs, readable before Lightning starts the process group.

Lightning's ``ddp`` strategy starts the other processes of a node at the first ``Trainer.fit``
by re-running the command line (``python train.py ...``) with ``LOCAL_RANK``, ``NODE_RANK``
and ``WORLD_SIZE`` set; ``torchrun`` and SLURM start every process themselves (``RANK`` /
``SLURM_PROCID``). Either way ``train.py`` runs from the top on every rank, so these helpers
let the entry point tell the ranks apart: every rank trains and evaluates (the collective
calls need all of them), only global rank zero creates the run directory and writes files.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pytorch_lightning.strategies import DDPStrategy as _LightningDDP
from pytorch_lightning.strategies import Strategy
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch.nn import Module

#: the run directory chosen by rank zero, inherited by the processes the ``ddp`` strategy starts
RUN_DIR_ENV = "ZSL_RUN_DIR"
#: the process id of the process that exported the run directory (see :func:`exit_with_parent`)
RUN_PID_ENV = "ZSL_RUN_PID"
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _process_group_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's global rank; 0 in a single-process run.

    The process group's rank once it exists. Before that it is read from the launcher's
    environment: ``RANK`` (torchrun), else ``NODE_RANK``/``LOCAL_RANK`` (Lightning's own
    launcher), else ``SLURM_PROCID``. On nodes other than node 0 of a Lightning-launched
    multi-node run the value is only guaranteed to be non-zero until the group exists.
    """
    if _process_group_ready():
        return int(torch.distributed.get_rank())
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    local = int(env.get("LOCAL_RANK", "0"))
    if node == 0:
        if "LOCAL_RANK" not in env and "SLURM_PROCID" in env:
            return int(env["SLURM_PROCID"])
        return local
    per_node = int(env.get("LOCAL_WORLD_SIZE", str(local + 1)))
    return node * max(per_node, 1) + local


def world_size() -> int:
    """Number of processes of the run (the process group's, else ``WORLD_SIZE``, else 1)."""
    if _process_group_ready():
        return int(torch.distributed.get_world_size())
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_global_zero() -> bool:
    """True in the one process that writes files and talks to W&B (always in a single process)."""
    return global_rank() == 0


def sync_lightning_rank() -> None:
    """Tell Lightning's ``rank_zero_only`` (which loggers consult) this process's rank now.

    Lightning reads it from the environment at import and corrects it when the strategy sets
    up; a logger created before the first ``Trainer`` runs would otherwise take a later node's
    first process for rank zero.
    """
    from lightning_utilities.core.rank_zero import rank_zero_only

    rank_zero_only.rank = global_rank()  # type: ignore[attr-defined]


def inherited_run_dir() -> Path | None:
    """The run directory exported by rank zero (:func:`export_run_dir`), if any."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def inherited_parent() -> int | None:
    """The id of the process that exported the run directory, if any."""
    value = os.environ.get(RUN_PID_ENV)
    return int(value) if value else None


def exit_with_parent(parent: int | None = None, interval_s: float = 2.0) -> None:
    """End this process soon after its parent (``parent``, default: the current one) is gone.

    For the processes Lightning's ``ddp`` launcher starts: when rank zero dies they would wait
    in a collective (or to join the group) until the process-group timeout (30 minutes). On
    Linux the kernel kills this process with its parent (``PR_SET_PDEATHSIG``; a watcher thread
    would not do: some collectives block holding the GIL); elsewhere a daemon thread polls.
    """
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="zsl-exit-with-parent", daemon=True).start()


@contextmanager
def export_run_dir(run_dir: Path) -> Iterator[None]:
    """Export ``run_dir`` to processes started inside the block (the ``ddp`` strategy's), then
    restore the previous environment."""
    exported = {RUN_DIR_ENV: str(run_dir.resolve()), RUN_PID_ENV: str(os.getpid())}
    previous = {name: os.environ.get(name) for name in exported}
    os.environ.update(exported)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def write_text(path: Path, text: str) -> None:
    """Write ``path`` on global rank zero only (the other ranks hold the same content)."""
    if is_global_zero():
        path.write_text(text)


class DDPStrategy(_LightningDDP):
    """Lightning's DDP strategy, adapted to the model it wraps.

    * A model with nothing to train by gradients (closed-form models, CLIP) is left unwrapped:
      ``DistributedDataParallel`` refuses such modules, yet the processes still form the group
      that shards evaluation and gathers metrics.
    * A model trained with manual optimisation (f-CLSWGAN: critic and generator steps each
      reach only their own network) gets ``find_unused_parameters=True``, without which DDP
      stops at the first step that leaves a parameter without gradient.
    """

    def _setup_model(self, model: Module) -> Module:  # type: ignore[override]  # may not wrap
        if not any(p.requires_grad for p in model.parameters()):
            return model
        module = self.lightning_module
        if module is not None and not module.automatic_optimization:
            self._ddp_kwargs.setdefault("find_unused_parameters", True)
        return super()._setup_model(model)


def make_strategy(name: str) -> str | Strategy:
    """The Trainer's ``strategy``: ``ddp`` and ``ddp_find_unused_parameters_true`` become
    :class:`DDPStrategy`; the spawning variants are refused (the fitted model and its
    evaluation record would stay in the spawned processes); other names go to Lightning."""
    if name == "ddp":
        return DDPStrategy()
    if name == "ddp_find_unused_parameters_true":
        return DDPStrategy(find_unused_parameters=True)
    if name.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise MisconfigurationException(
            f"strategy {name!r} is not supported: the engine reads every fit's validation "
            "history from its callbacks in its own process; use trainer=ddp (strategy: ddp)"
        )
    return name
