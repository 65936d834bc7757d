"""The backbone type shared by feature extraction and the CLIP encoders."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zsl.features.images import Transform


@dataclass
class Backbone:
    """A frozen image encoder: ``module(pixels[B, 3, H, W]) -> features[B, D]``."""

    module: nn.Module
    transform: Transform
    description: str
