"""Where a result came from: the seed, package versions, the code's git commit and the machine,
recorded in every run's ``metrics.json`` (``provenance``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

#: distributions whose versions a result depends on
PACKAGES = (
    "zsl-lightning",
    "torch",
    "pytorch-lightning",
    "numpy",
    "scipy",
    "hydra-core",
    "omegaconf",
)


def package_versions() -> dict[str, str | None]:
    """Python's and each of :data:`PACKAGES`'s installed version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(where: Path | None = None) -> dict[str, Any] | None:
    """The commit of the git checkout holding the ``zsl`` package and whether its tracked files
    differ from it (``dirty``); None outside a checkout or without git."""
    folder = where or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The host, CPU, cores this process may use, torch's threads and the GPUs."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "host": platform.node(),
        "system": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
    }


def provenance(seed: int) -> dict[str, Any]:
    """Everything above, with the seed, the command line and the time (UTC)."""
    import torch

    versions = package_versions()
    versions["torch"] = torch.__version__  # with its build (e.g. +cu130, +cpu)
    return {
        "seed": int(seed),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "git": git_state(),
        "machine": machine(),
    }
