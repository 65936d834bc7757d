"""Model registry: ``model.name`` in a config -> a :class:`ZSLModule` subclass.

The registry is read from the shipped model configs: every ``zsl/conf/model/<file>.yaml``
names its model (``name``) and the class (``_target_``, a dotted path). Adding a model
therefore touches its module and its config only. Modules are imported lazily, so
``python train.py model=ale`` does not import the CLIP or generative code.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from zsl.conf import CONFIG_DIR

if TYPE_CHECKING:
    from zsl.models.base import ZSLModule


@functools.cache
def _registry() -> dict[str, str]:
    """``name -> "package.module.Class"`` from the model configs (several configs of one
    model, e.g. a CPU and a paper-size one, must name the same class)."""
    found: dict[str, str] = {}
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise RuntimeError(f"{path}: a model config must be a mapping")
        name, target = cfg.get("name"), cfg.get("_target_")
        if not name or not target:
            raise RuntimeError(f"{path}: a model config needs 'name' and '_target_' (its class)")
        if found.setdefault(str(name), str(target)) != str(target):
            raise RuntimeError(
                f"{path}: model {name!r} names {target}, another config names {found[str(name)]}"
            )
    return found


class _Models(Mapping[str, str]):
    """The registry as a read-only mapping (``name in MODELS``, ``sorted(MODELS)``)."""

    def __getitem__(self, name: str) -> str:
        return _registry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_registry())

    def __len__(self) -> int:
        return len(_registry())


MODELS: Mapping[str, str] = _Models()


def get_model_class(name: str) -> type[ZSLModule]:
    """Look a model up by name; unknown names fail listing what exists."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    module, _, attr = MODELS[name].rpartition(".")
    cls: type[ZSLModule] = getattr(importlib.import_module(module), attr)
    return cls
