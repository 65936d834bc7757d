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

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsl.errors import CheckpointError
from zsl.models.checkpoint import load_model
from zsl.models.generative.base import GenerativeZSL


def load_generator(
    checkpoint_path: str | Path,
    model_cls: type[GenerativeZSL] | None = None,
    map_location: str | torch.device = "cpu",
) -> GenerativeZSL:
    """Rebuild a trained generative model (eval mode) from a Lightning checkpoint, read as
    data (:func:`zsl.models.checkpoint.load_model`: ``weights_only=True``, registered model
    classes only); :class:`~zsl.errors.CheckpointError` when it is not a generator's."""
    model = load_model(checkpoint_path, model_cls, map_location)
    if not isinstance(model, GenerativeZSL):
        raise CheckpointError(
            f"{checkpoint_path} holds a {type(model).__name__} model, not a feature generator "
            "(f-CLSWGAN, CADA-VAE, SE-GZSL, f-VAEGAN, tf-VAEGAN)"
        )
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
    raw = attributes.numpy() if isinstance(attributes, Tensor) else np.asarray(attributes)
    if np.iscomplexobj(raw) or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"attributes must be real numbers, got an array of dtype {raw.dtype}")
    model = load_generator(checkpoint_path, model_cls)
    attrs = torch.as_tensor(raw, dtype=torch.float32)
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
