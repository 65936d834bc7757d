"""Feature preparation: the step between reading a benchmark and splitting it.

A run reads its benchmark through the format registry (:func:`zsl.data.formats.read_dataset`)
and then applies the preparation its model class declares (a name in :data:`PREPARATIONS`):

* ``"none"``: the benchmark as read (every model that scores the file's features);
* ``"clip"``: features = CLIP image embeddings of the benchmark's own images (``image_files``
  of the feature file, resolved under ``data.image_root``), semantics = CLIP text embeddings
  of the class names in every prompt template. Images, labels and splits are untouched, so a
  CLIP model is evaluated on the same split with the same metrics as every other model.

A step is a :class:`PreparationStep`: ``step(data, params, data_cfg) -> ZSLData``, with
``params`` the model's ``model.params`` and ``data_cfg`` the run's ``data`` config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zsl.data.errors import DataError
from zsl.data.types import ZSLData
from zsl.features.backbones import BackboneSpec
from zsl.features.clip import (
    DEFAULT_CLIP_MODEL,
    class_text_embeddings,
    clip_image_backbone,
    load_clip,
)
from zsl.features.extract import extract_features, extract_to_file
from zsl.features.images import resolve_image_paths

__all__ = [
    "PREPARATIONS",
    "CLIPSettings",
    "PreparationStep",
    "clip_embeddings",
    "keep_features",
    "prepare_features",
]


class PreparationStep(Protocol):
    """A feature-preparation step: the benchmark a model sees, from the one that was read."""

    def __call__(
        self, data: ZSLData, params: Mapping[str, Any], data_cfg: Mapping[str, Any]
    ) -> ZSLData: ...


def keep_features(data: ZSLData, params: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> ZSLData:
    """The ``"none"`` step: the benchmark as read."""
    return data


# ----------------------------------------------------------------------------- CLIP


@dataclasses.dataclass(frozen=True)
class CLIPSettings:
    """``model.params`` of ``model=clip``: the CLIP checkpoint, prompts and extraction
    settings (``logit_scale`` is the model's own; the embedding step ignores it)."""

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
        """The settings of ``params``; unknown keys fail listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in params if k not in valid]
        if unknown:
            raise ValueError(f"unknown CLIP parameters {unknown}; valid: {', '.join(valid)}")
        return cls(**params)


#: CLIP image embeddings by (checkpoint, image paths): the val and the test protocol of a run
#: embed the same images
_IMAGE_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


def _image_embeddings(
    settings: CLIPSettings, paths: Sequence[Path], data: ZSLData, base: Path | None
) -> np.ndarray:
    """CLIP image embeddings [N, E] of ``paths``; cached in memory and, with ``cache_file``,
    in an xlsa17 feature file."""
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


def clip_embeddings(
    data: ZSLData, params: Mapping[str, Any], data_cfg: Mapping[str, Any]
) -> ZSLData:
    """The ``"clip"`` step: features = CLIP image embeddings of the benchmark's images,
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
    paths = resolve_image_paths(data.image_files, data_cfg.get("image_root"), base)
    bundle = load_clip(settings.model)
    features = _image_embeddings(settings, paths, data, base)
    semantics = class_text_embeddings(
        bundle, data.class_names, settings.templates, settings.name_map, settings.device
    )
    return dataclasses.replace(data, features=features, semantics=semantics)


# ----------------------------------------------------------------------------- registry

#: preparation name (what a model class declares) -> step
PREPARATIONS: dict[str, PreparationStep] = {"none": keep_features, "clip": clip_embeddings}


def prepare_features(
    step: str, data: ZSLData, params: Mapping[str, Any], data_cfg: Mapping[str, Any]
) -> ZSLData:
    """Apply the preparation ``step`` (a key of :data:`PREPARATIONS`) to a benchmark read
    through the format registry; ``params``: ``model.params``, ``data_cfg``: ``data``."""
    if step not in PREPARATIONS:
        raise KeyError(
            f"unknown feature preparation {step!r}; available: {', '.join(sorted(PREPARATIONS))}"
        )
    return PREPARATIONS[step](data, params, data_cfg)
