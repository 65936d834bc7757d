"""Helpers of the adversarial tests: crafted checkpoints, tiny runs, console scripts."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO_ROOT as REPO
from conftest import tiny_cli_args


class Payload:
    """A pickled object whose unpickling would create ``marker``: what a crafted checkpoint
    hides (``os.system`` in the wild; a harmless file here)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def craft(source: Path, target: Path, marker: Path) -> Path:
    """``target``: the real checkpoint ``source`` with one extra pickled :class:`Payload`."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["evil"] = Payload(marker)
    torch.save(state, target, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return target


#: a two-epoch ALE run on the tiny dataset under ``root`` (CSV logger)
tiny_args = tiny_cli_args


def script(name: str) -> str:
    """The installed console script ``name`` beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e .)")
    return str(path)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_script(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout
    )
