"""Model registry: ``model.name`` in a config -> a :class:`ZSLModule` subclass.

Modules are imported lazily, so ``python train.py model=ale`` does not import the CLIP or
generative code. A new model adds one line here and one ``zsl/conf/model/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsl.models.base import ZSLModule

MODELS: dict[str, str] = {
    "ale": "zsl.models.classical.ale:ALE",
    "dap": "zsl.models.classical.dap:DAP",
    "devise": "zsl.models.classical.devise:DeViSE",
    "sje": "zsl.models.classical.sje:SJE",
    "eszsl": "zsl.models.classical.eszsl:ESZSL",
    "sae": "zsl.models.classical.sae:SAE",
    "latem": "zsl.models.classical.latem:LATEM",
    "clswgan": "zsl.models.generative.clswgan:CLSWGAN",
    "cadavae": "zsl.models.generative.cadavae:CADAVAE",
    "clip": "zsl.models.clip:CLIPZeroShot",
}


def get_model_class(name: str) -> type[ZSLModule]:
    """Look a model up by name; unknown names fail listing what exists."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)
