"""CLIP encoders: loading a checkpoint, its image tower as an extraction backbone, and class
text embeddings from prompt templates (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", ICML 2021). The step that embeds a benchmark with them is
:func:`zsl.features.prepare.clip_embeddings`; the zero-shot scorer lives in
:mod:`zsl.models.clip`. ``transformers`` is imported only when CLIP is used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from zsl.data.errors import DataError
from zsl.errors import ModelLoadError
from zsl.features.images import Backbone, pick_device

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

#: prompt-template presets (``model.params.templates`` / ``--templates``); a list also works
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "generic": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
        "a cropped photo of the {}.",
        "a good photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
    ),
    "bird": (
        "a photo of a {}, a type of bird.",
        "a photo of the {}, a type of bird.",
        "a close-up photo of a {}, a type of bird.",
        "a photo of a {}.",
    ),
    "animal": (
        "a photo of a {}, a type of animal.",
        "a photo of the {}, a type of animal.",
        "a photo of a {}.",
        "a photo of the {}.",
    ),
    "scene": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of a {}, a type of scene.",
        "a photo of the {}, a type of place.",
    ),
    "flower": (
        "a photo of a {}, a type of flower.",
        "a close-up photo of a {}, a type of flower.",
        "a photo of a {}.",
    ),
}


class CLIPLoadError(ModelLoadError):
    """CLIP weights, tokenizer or image processor could not be loaded."""


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass
class CLIPBundle:
    """A loaded CLIP checkpoint: the transformers model, its tokenizer and image processor."""

    source: str
    model: Any  # transformers.CLIPModel
    tokenizer: Any
    image_processor: Any

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def max_text_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)


def _looks_local(source: str) -> bool:
    return (
        Path(source).expanduser().exists()
        or source.startswith(("/", "./", "../", "~", "."))
        or source.count("/") > 1
        or "\\" in source
    )


@functools.lru_cache(maxsize=2)
def load_clip(source: str = DEFAULT_CLIP_MODEL) -> CLIPBundle:
    """Load ``CLIPModel`` + ``CLIPProcessor`` from a model id or a local directory (cached)."""
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as err:
        raise ImportError("CLIP needs transformers and pillow: pip install 'zsl[clip]'") from err
    hint = (
        "model.params.model (zsl-extract: --weights) takes a Hugging Face model id "
        f"such as {DEFAULT_CLIP_MODEL} or a local directory holding a CLIPModel and its "
        "CLIPProcessor written with save_pretrained"
    )
    local = _looks_local(source)
    path = Path(source).expanduser()
    if local and not path.is_dir():
        raise CLIPLoadError(f"CLIP weights {source!r}: local directory {path} not found; {hint}")
    where = str(path) if local else source
    try:
        model = CLIPModel.from_pretrained(where)
        processor = CLIPProcessor.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise CLIPLoadError(
            f"cannot load CLIP weights {source!r} ({type(err).__name__}: {err}). Without "
            f"access to the Hugging Face hub, download {source!r} on a machine that has it "
            "(CLIPModel/CLIPProcessor.from_pretrained(...).save_pretrained(DIR)), copy DIR "
            f"here and pass model.params.model=DIR (or --weights DIR); {hint}"
        ) from err
    model.eval()
    return CLIPBundle(source, model, processor.tokenizer, processor.image_processor)


# ----------------------------------------------------------------------------- encoders


class CLIPImageEncoder(nn.Module):
    """Pixels [B, 3, H, W] -> CLIP image embeddings [B, E] (not normalised)."""

    def __init__(self, clip_model: Any) -> None:
        super().__init__()
        self.vision = clip_model.vision_model
        self.projection = clip_model.visual_projection

    def forward(self, pixels: Tensor) -> Tensor:
        return self.projection(self.vision(pixel_values=pixels).pooler_output)


class CLIPTextEncoder(nn.Module):
    """Token ids [B, L] -> CLIP text embeddings [B, E] (not normalised)."""

    def __init__(self, clip_model: Any) -> None:
        super().__init__()
        self.text = clip_model.text_model
        self.projection = clip_model.text_projection

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.text(input_ids=input_ids, attention_mask=attention_mask)
        return self.projection(out.pooler_output)


class CLIPPixels:
    """PIL image -> pixel tensor with the checkpoint's own image processor (picklable)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def clip_image_backbone(source: str = DEFAULT_CLIP_MODEL) -> Backbone:
    """CLIP's image tower as an extraction backbone (``zsl-extract --backbone clip``)."""
    bundle = load_clip(source)
    return Backbone(
        CLIPImageEncoder(bundle.model), CLIPPixels(bundle.image_processor), f"clip weights={source}"
    )


# ----------------------------------------------------------------------------- class names


def clean_class_name(raw: str) -> str:
    """``002.Laysan_Albatross`` -> ``Laysan Albatross``; ``grizzly+bear`` -> ``grizzly bear``."""
    name = re.sub(r"^\s*\d+\.", "", raw)
    name = re.sub(r"[_+]+", " ", name)
    name = " ".join(name.split())
    return name or raw


def prompt_names(class_names: Sequence[str], name_map: str | Path | None = None) -> list[str]:
    """The names put into the prompts, one per class.

    ``name_map``: a ``.json``/``.yaml`` mapping from a class name (raw, as in the dataset, or
    cleaned) to its prompt name (unmapped classes keep the cleaned name), or any other text
    file with one prompt name per line in class order.
    """
    names = [clean_class_name(n) for n in class_names]
    if name_map is None:
        return names
    path = Path(name_map).expanduser()
    if not path.is_file():
        raise DataError(str(path), "class-name map not found")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if path.suffix.lower() == ".json":
            mapping = json.loads(path.read_text())
        else:
            from omegaconf import OmegaConf

            mapping = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(mapping, dict):
            raise DataError(str(path), "expected a mapping from class name to prompt name")
        known = set(class_names) | set(names)
        unknown = [k for k in mapping if k not in known]
        if unknown:
            raise DataError(
                str(path), f"{len(unknown)} names are not classes of the dataset: {unknown[:5]}"
            )
        return [
            str(mapping.get(raw, mapping.get(clean, clean)))
            for raw, clean in zip(class_names, names)
        ]
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != len(class_names):
        raise DataError(
            str(path), f"lists {len(lines)} names, the dataset has {len(class_names)} classes"
        )
    return lines


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """A preset name, a single ``"... {} ..."`` template, a file (one per line) or a list."""
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            out = list(TEMPLATE_SETS[templates])
        elif "{}" in templates:
            out = [templates]
        elif Path(templates).expanduser().is_file():
            text = Path(templates).expanduser().read_text()
            out = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            raise ValueError(
                f"templates {templates!r}: not a preset ({', '.join(TEMPLATE_SETS)}), a template "
                "with '{}' or a file"
            )
    else:
        out = [str(t) for t in templates]
    bad = [t for t in out if t.count("{}") != 1]
    if not out or bad:
        raise ValueError(
            f"every prompt template needs exactly one '{{}}'; bad: {bad or 'none given'}"
        )
    return out


def class_text_embeddings(
    bundle: CLIPBundle,
    class_names: Sequence[str],
    templates: str | Sequence[str] = "generic",
    name_map: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> np.ndarray:
    """[C, E] float32: per class, the normalised mean of its normalised prompt embeddings."""
    names = prompt_names(class_names, name_map)
    temps = resolve_templates(templates)
    prompts = [t.format(name) for name in names for t in temps]
    dev = pick_device(device)
    encoder = CLIPTextEncoder(bundle.model).to(dev).eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            tokens = bundle.tokenizer(
                prompts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=bundle.max_text_length,
                return_tensors="pt",
            )
            emb = encoder(tokens["input_ids"].to(dev), tokens["attention_mask"].to(dev))
            chunks.append(F.normalize(emb.float(), dim=-1).cpu())
    per_prompt = torch.cat(chunks).view(len(names), len(temps), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).numpy().astype(np.float32)
