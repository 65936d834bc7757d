"""The Hydra configs shipped with the package: ``train.yaml`` and one folder per group."""

from __future__ import annotations

from pathlib import Path

#: the folder holding ``train.yaml`` and the group folders (inside the installed package)
CONFIG_DIR = Path(__file__).resolve().parent
#: the groups a run composes (``group=option`` on the command line)
GROUPS = ("data", "model", "trainer", "logger")


def available(group: str) -> list[str]:
    """Names of the selectable configs of one group (``zsl/conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
