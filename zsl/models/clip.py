"""CLIP zero-shot: "Learning Transferable Visual Models From Natural Language Supervision"
(Radford et al., ICML 2021, https://arxiv.org/abs/2103.00020).

``score(x, c) = logit_scale * cos(image embedding of x, text embedding of class c)``, where a
class's text embedding is the L2-normalised mean of the L2-normalised embeddings of its name
in every prompt template ("a photo of a {}.", ...).

How it keeps the one trainer path: the model declares the feature preparation it needs
(:attr:`CLIPZeroShot.feature_preparation` = ``"clip"``, the step
:func:`zsl.features.prepare.clip_embeddings`), which the runner applies to the benchmark read
through the format registry: features become CLIP image embeddings of the benchmark's own
images and class semantics CLIP text embeddings of the class names. Images, labels and splits
are untouched, so CLIP is evaluated on the same split with the same metrics as every other
model (and its calibration gamma is chosen on validation classes like theirs). The module
itself is closed-form with nothing to fit; it stores only the logit scale.

Weights come from a Hugging Face model id or a local directory written by ``save_pretrained``
(``model.params.model``); ``transformers`` is imported only when CLIP is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zsl.features.clip import (
    DEFAULT_CLIP_MODEL,
    TEMPLATE_SETS,
    CLIPLoadError,
    class_text_embeddings,
    clean_class_name,
    load_clip,
    prompt_names,
    resolve_templates,
)
from zsl.features.prepare import CLIPSettings
from zsl.models.base import ZSLModule

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "TEMPLATE_SETS",
    "CLIPLoadError",
    "CLIPSettings",
    "CLIPZeroShot",
    "class_text_embeddings",
    "clean_class_name",
    "load_clip",
    "prompt_names",
    "resolve_templates",
]


class CLIPZeroShot(ZSLModule):
    """CLIP zero-shot (Radford et al., ICML 2021): cosine of image and class-prompt embeddings."""

    closed_form = True
    #: the feature preparation (:data:`zsl.features.prepare.PREPARATIONS`) the run applies to
    #: the benchmark before this model sees it
    feature_preparation: ClassVar[str] = "clip"
    logit_scale: Tensor

    def __init__(
        self,
        feature_dim: int,
        n_attributes: int,
        n_classes: int,
        model: str = DEFAULT_CLIP_MODEL,
        templates: str | Sequence[str] = "generic",
        name_map: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        device: str = "auto",
        cache_file: str | None = None,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__(feature_dim, n_attributes, n_classes)
        if feature_dim != n_attributes:
            raise ValueError(
                f"CLIPZeroShot compares image and text embeddings of one space, but features are "
                f"{feature_dim}-d and class semantics {n_attributes}-d: the data must go through "
                "the 'clip' feature preparation (zsl.features.prepare.prepare_features; "
                "python train.py model=clip applies it)"
            )
        scale = load_clip(model).logit_scale if logit_scale is None else float(logit_scale)
        self.register_buffer("logit_scale", torch.tensor(scale))

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        image = F.normalize(features, dim=-1)
        text = F.normalize(class_semantics, dim=-1)
        return self.logit_scale * image @ text.T

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        """Zero-shot CLIP is not trained on the benchmark: nothing to fit."""
