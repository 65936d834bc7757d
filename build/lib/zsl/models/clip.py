"""CLIP zero-shot: "Learning Transferable Visual Models From Natural Language Supervision"
(Radford et al., ICML 2021, https://arxiv.org/abs/2103.00020).

``score(x, c) = logit_scale * cos(image embedding of x, text embedding of class c)``, where a
class's text embedding is the L2-normalised mean of the L2-normalised embeddings of its name
in every prompt template ("a photo of a {}.", ...).

How it keeps the one trainer path: :meth:`CLIPZeroShot.adapt_data`, which the runner applies
to the loaded benchmark, replaces the features by CLIP image embeddings of the benchmark's own
images (``image_files`` of the feature file, resolved under ``data.image_root``) and the class
semantics by CLIP text embeddings of the class names. Images, labels and splits are untouched,
so CLIP is evaluated on the same split with the same metrics as every other model (and its
calibration gamma is chosen on validation classes like theirs). The module itself is
closed-form with nothing to fit; it stores only the logit scale.

Weights come from a Hugging Face model id or a local directory written by ``save_pretrained``
(``model.params.model``); ``transformers`` is imported only when CLIP is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zsl.data.errors import DataError
from zsl.data.types import ZSLData
from zsl.features.clip import (
    DEFAULT_CLIP_MODEL,
    TEMPLATE_SETS,
    CLIPLoadError,
    class_text_embeddings,
    clean_class_name,
    clip_image_backbone,
    load_clip,
    prompt_names,
    resolve_templates,
)
from zsl.features.extract import BackboneSpec, extract_features, extract_to_file
from zsl.features.images import resolve_image_paths
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


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class CLIPSettings:
    """``model.params`` of ``model=clip`` (the constructor arguments after the shapes)."""

    model: str = DEFAULT_CLIP_MODEL
    templates: str | Sequence[str] = "generic"
    name_map: str | None = None
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    cache_file: str | None = None
    logit_scale: float | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CLIPSettings:
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(f"unknown CLIP parameters {unknown}; valid: {', '.join(valid)}")
        return cls(**params)


_IMAGE_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def _image_embeddings(
    settings: CLIPSettings, paths: Sequence[Path], data: ZSLData, base: Path | None
) -> np.ndarray:
    """CLIP image embeddings [N, E] of ``paths``; cached in memory (the val and the test
    protocol embed the same images) and, with ``cache_file``, in an xlsa17 feature file."""
    key = (settings.model, tuple(str(p) for p in paths))
    if key not in _IMAGE_CACHE:
        if settings.cache_file:
            cache = Path(settings.cache_file).expanduser()
            if not cache.is_absolute() and base is not None:
                cache = base / cache
            assert data.image_files is not None
            feats = extract_to_file(
                cache,
                paths,
                data.labels,
                data.image_files,
                BackboneSpec("clip", settings.model),
                batch_size=settings.batch_size,
                num_workers=settings.num_workers,
                device=settings.device,
            )
        else:
            feats = extract_features(
                paths,
                clip_image_backbone(settings.model),
                batch_size=settings.batch_size,
                num_workers=settings.num_workers,
                device=settings.device,
            )
        if len(_IMAGE_CACHE) >= 4:
            _IMAGE_CACHE.pop(next(iter(_IMAGE_CACHE)))
        _IMAGE_CACHE[key] = feats
    return _IMAGE_CACHE[key]


class CLIPZeroShot(ZSLModule):
    """CLIP zero-shot (Radford et al., ICML 2021): cosine of image and class-prompt embeddings."""

    closed_form = True
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
                "CLIPZeroShot.adapt_data (python train.py model=clip does this)"
            )
        scale = load_clip(model).logit_scale if logit_scale is None else float(logit_scale)
        self.register_buffer("logit_scale", torch.tensor(scale))

    @classmethod
    def adapt_data(
        cls, data: ZSLData, params: Mapping[str, Any], data_cfg: Mapping[str, Any]
    ) -> ZSLData:
        """The benchmark seen by CLIP: features = CLIP image embeddings of its images,
        semantics = CLIP text embeddings of its class names; images, labels, splits unchanged."""
        settings = CLIPSettings.from_params(params)
        if data_cfg.get("preprocess") == "minmax":
            raise DataError(
                "data.preprocess",
                "minmax scaling distorts the cosine similarity CLIP scores with; use l2 or none",
            )
        if data.image_files is None:
            raise DataError(
                f"{data.name} feature file",
                "has no 'image_files': CLIP embeds the dataset's images and needs their list",
            )
        base = None
        if data_cfg.get("root") is not None and data_cfg.get("name") is not None:
            base = Path(str(data_cfg["root"])) / str(data_cfg["name"])
        image_root = data_cfg.get("image_root")
        paths = resolve_image_paths(data.image_files, image_root, base)
        bundle = load_clip(settings.model)
        features = _image_embeddings(settings, paths, data, base)
        semantics = class_text_embeddings(
            bundle, data.class_names, settings.templates, settings.name_map, settings.device
        )
        return dataclasses.replace(data, features=features, semantics=semantics)

    def scores(self, features: Tensor, class_semantics: Tensor) -> Tensor:
        image = F.normalize(features, dim=-1)
        text = F.normalize(class_semantics, dim=-1)
        return self.logit_scale * image @ text.T

    def fit_closed_form(
        self, features: Tensor, local_labels: Tensor, seen_semantics: Tensor
    ) -> None:
        """Zero-shot CLIP is not trained on the benchmark: nothing to fit."""
