"""Image backbones for feature extraction: any torchvision classification model with its
classifier head removed (ImageNet weights from torchvision's cache, seeded random weights or a
local checkpoint), or CLIP's image tower (:mod:`zsl.features.clip`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsl.errors import ModelLoadError
from zsl.features.images import Backbone, imagenet_transform

__all__ = [
    "CLIP_BACKBONE",
    "DEFAULT_BACKBONE",
    "RANDOM_INIT_SEED",
    "Backbone",
    "BackboneSpec",
    "remove_classifier_head",
    "torchvision_backbone",
]


DEFAULT_BACKBONE = "resnet101"
CLIP_BACKBONE = "clip"
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone and weights; cheap to make, :meth:`build` loads the network."""

    name: str = DEFAULT_BACKBONE
    weights: str | None = None  # None: the backbone's default (imagenet / the default CLIP)

    @property
    def is_clip(self) -> bool:
        return self.name == CLIP_BACKBONE

    @property
    def resolved_weights(self) -> str:
        if self.weights is not None:
            return str(self.weights)
        if self.is_clip:
            from zsl.features.clip import DEFAULT_CLIP_MODEL

            return DEFAULT_CLIP_MODEL
        return "imagenet"

    def describe(self) -> str:
        """What is recorded in the feature file (a rerun must match it to reuse the file)."""
        return f"{self.name} weights={self.resolved_weights}"

    def build(self) -> Backbone:
        if self.is_clip:
            from zsl.features.clip import clip_image_backbone

            return clip_image_backbone(self.resolved_weights)
        return torchvision_backbone(self.name, self.resolved_weights)


def remove_classifier_head(model: nn.Module) -> str:
    """Replace the last ``nn.Linear`` (the classifier) with ``nn.Identity``; returns its name."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier head to remove")
    name = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return name


def _checkpoint_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"--weights {path}: checkpoint not found (use 'imagenet', 'none' or a .pth path)"
        )
    state: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def torchvision_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """A torchvision classification model without its head; ``weights``: imagenet|none|path."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"unknown backbone {name!r}: not a torchvision classification model; use "
            f"'{CLIP_BACKBONE}' or one of: {', '.join(available)}"
        )
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=enum)
        except Exception as err:  # noqa: BLE001 - URLError, HTTPError, socket errors, ...
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise ModelLoadError(
                f"cannot load ImageNet weights of {name}: not in torchvision's cache ({cache}) "
                f"and the download of {enum.url} failed ({type(err).__name__}: {err}). Download "
                f"that file elsewhere and put it at {cache}, or pass --weights /path/to/file.pth "
                "(or --weights none for random weights)"
            ) from err
        remove_classifier_head(model)
    else:
        with torch.random.fork_rng(devices=[]):  # random weights, but the same on every rerun
            torch.manual_seed(RANDOM_INIT_SEED)
            model = torchvision.models.get_model(name, weights=None)
        head = remove_classifier_head(model)
        if weights != "none":
            state = _checkpoint_state_dict(Path(weights).expanduser())
            state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as err:  # shape mismatches
                raise ValueError(
                    f"--weights {weights} does not fit torchvision {name}: {err}"
                ) from None
            if missing or unexpected:
                raise ValueError(
                    f"--weights {weights} does not fit torchvision {name}: missing keys "
                    f"{missing[:5]}, unexpected keys {unexpected[:5]}"
                )
    return Backbone(
        nn.Sequential(model, nn.Flatten(1)), imagenet_transform(), f"{name} weights={weights}"
    )
