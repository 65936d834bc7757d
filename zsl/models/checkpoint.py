"""Reading a user's checkpoint files: data, never code.

Every checkpoint the package reads (``resume=``, ``zsl-generate``, ``load_model``) goes through
:func:`load_checkpoint`, which unpickles with ``torch.load(..., weights_only=True)``: tensors,
numbers, strings and containers load, anything else (a pickled object whose ``__reduce__``
would run code) is refused with one :class:`CheckpointError` line. The model class a
checkpoint names (``zsl_model_class``, written by :meth:`zsl.models.base.ZSLModule.
on_save_checkpoint`) is looked up among the registered models only
(:data:`zsl.models.MODELS`), never imported from an arbitrary path, and Lightning rebuilds the
model with ``weights_only=True`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zsl.errors import CheckpointError

if TYPE_CHECKING:
    from zsl.models.base import ZSLModule

__all__ = ["CheckpointError", "load_checkpoint", "load_model", "model_class_of"]

#: the checkpoint key that names the model class (``module:QualName``)
MODEL_CLASS_KEY = "zsl_model_class"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The content of the checkpoint file ``path``, unpickled with ``weights_only=True``.

    Raises :class:`CheckpointError` (one line) for a missing, unreadable, truncated or unsafe
    file, or one that is not a Lightning checkpoint (a mapping with a ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch/pickle/zip raise many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain values (refused: loading "
                f"it could run code; {first.strip()[:160]})"
            ) from None
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}: {first[:200]})"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a model checkpoint (no state_dict in it)")
    return state


def model_class_of(checkpoint: dict[str, Any], path: str | Path) -> type[ZSLModule]:
    """The registered model class ``checkpoint`` names; refuses a class outside the registry
    (no module named by a file is ever imported)."""
    from zsl.models import MODELS, get_model_class

    recorded = checkpoint.get(MODEL_CLASS_KEY)
    if not isinstance(recorded, str):
        raise CheckpointError(
            f"{path} does not record its model class; pass the class explicitly "
            "(e.g. model_cls=zsl.models.generative.clswgan.CLSWGAN)"
        )
    dotted = recorded.replace(":", ".")
    for name, target in MODELS.items():
        if target == dotted:
            return get_model_class(name)
    raise CheckpointError(
        f"{path} names the model class {recorded!r}, which is not a registered zsl model"
    )


def load_model(
    path: str | Path,
    model_cls: type[ZSLModule] | None = None,
    map_location: str | torch.device = "cpu",
) -> ZSLModule:
    """Rebuild a trained model (eval mode) from a checkpoint written by a ``zsl`` run, such
    as a run directory's ``model.ckpt``; its class is read from the file when not given."""
    state = load_checkpoint(path, map_location)
    cls = model_class_of(state, path) if model_cls is None else model_cls
    try:
        model = cls.load_from_checkpoint(Path(path), map_location=map_location, weights_only=True)
    except (KeyError, TypeError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} does not hold a {cls.__name__} model ({type(err).__name__}: {first[:200]})"
        ) from None
    model.eval()
    return model
