"""Synthesise image features for new classes from a trained generative model's checkpoint.

The checkpoint is one written by ``trainer.save_checkpoint`` for a
:class:`~zsl.models.generative.base.GenerativeZSL` model (f-CLSWGAN, CADA-VAE); the model class
is read from the checkpoint (recorded by ``on_save_checkpoint``) or passed explicitly. The
attribute vectors may describe classes that did not exist at training time; they must be
preprocessed like the training semantics (xlsa17 ``att``: every class vector L2-normalised),
and the features come out in the model's input space (after the datamodule's preprocessing,
e.g. L2-normalised rows).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsl.models.generative.base import GenerativeZSL


def _class_from_path(path: str) -> type[GenerativeZSL]:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, GenerativeZSL)):
        raise TypeError(f"{path} is not a generative ZSL model (GenerativeZSL subclass)")
    return cls


def load_generator(
    checkpoint_path: str | Path,
    model_cls: type[GenerativeZSL] | None = None,
    map_location: str | torch.device = "cpu",
) -> GenerativeZSL:
    """Rebuild a trained generative model (eval mode) from a Lightning checkpoint."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if model_cls is None:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        recorded = ckpt.get("zsl_model_class")
        if recorded is None:
            raise ValueError(
                f"{path} does not record its model class (not saved from a GenerativeZSL "
                "model?); pass model_cls=..., e.g. zsl.models.generative.clswgan.CLSWGAN"
            )
        model_cls = _class_from_path(str(recorded))
    model = model_cls.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    model.eval()
    return model


def generate(
    checkpoint_path: str,
    attributes: Tensor | np.ndarray,
    n: int,
    seed: int = 0,
    model_cls: type[GenerativeZSL] | None = None,
) -> Tensor:
    """``n`` synthetic features per attribute vector ([K, A] or [A]) -> [K * n, D] on the CPU,
    grouped by row: rows ``k*n .. k*n + n - 1`` belong to ``attributes[k]``. Deterministic
    for a given ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    model = load_generator(checkpoint_path, model_cls)
    attrs = torch.as_tensor(np.asarray(attributes), dtype=torch.float32)
    if attrs.ndim == 1:
        attrs = attrs[None]
    if attrs.ndim != 2 or attrs.shape[1] != model.n_attributes:
        raise ValueError(
            f"attributes must have shape [K, {model.n_attributes}] for this model, "
            f"got {tuple(attrs.shape)}"
        )
    if not torch.isfinite(attrs).all():
        raise ValueError("attributes contain NaN or infinite values")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        feats = model.generate_features(attrs.to(model.device), int(n), generator)
    return feats.cpu()
