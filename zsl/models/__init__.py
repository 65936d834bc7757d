"""Model registry: ``model.name`` in a config -> a :class:`ZSLModule` subclass.

Modules are imported lazily, so ``python train.py model=ale`` does not import the CLIP or
generative code. A new model adds one line here and one ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsl.models.base import ZSLModule

MODELS: dict[str, str] = {
    "ale": "zsl.models.ale:ALE",
    "dap": "zsl.models.dap:DAP",
    "devise": "zsl.models.devise:DeViSE",
    "sje": "zsl.models.sje:SJE",
    "eszsl": "zsl.models.eszsl:ESZSL",
    "sae": "zsl.models.sae:SAE",
    "latem": "zsl.models.latem:LATEM",
    "clswgan": "zsl.models.clswgan:CLSWGAN",
    "cadavae": "zsl.models.cadavae:CADAVAE",
    "clip": "zsl.models.clip:CLIPZeroShot",
}


def get_model_class(name: str) -> type[ZSLModule]:
    """Look a model up by name; unknown names fail listing what exists."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)
