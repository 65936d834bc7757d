"""The image side: image-folder listings, image path resolution, transforms and datasets.

Feature extraction (:mod:`zsl.features.extract`), the custom-dataset builder
(:mod:`zsl.features.custom`) and
models that read images themselves (CLIP zero-shot) all go through this module, so an image
is found, opened and transformed the same way everywhere.

Paths stored in an xlsa17 feature file (``image_files``) are whatever the authors' machine
had, e.g. ``/BS/Deep_Fragments/work/MSc/CUB_200_2011/images/001.Black_footed_Albatross/x.jpg``.
:func:`resolve_image_paths` maps them onto a local ``image_root`` by looking for the longest
suffix of the stored path that exists under it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsl.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Image.Image], Tensor]


@dataclass
class Backbone:
    """A frozen image encoder: ``module(pixels[B, 3, H, W]) -> features[B, D]``, with the
    transform that turns an image into its input (built by :mod:`zsl.features.backbones`)."""

    module: nn.Module
    transform: Transform
    description: str


# ----------------------------------------------------------------------------- listings


@dataclass(frozen=True)
class ImageFolder:
    """An image folder with one sub-folder per class, listed in a fixed order.

    Classes are the sub-folder names sorted; images are sorted by file name within a class.
    ``labels`` are 0-based positions in ``class_names``.
    """

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Number of images of every class."""
        per = np.bincount(self.labels, minlength=len(self.class_names))
        return dict(zip(self.class_names, per.tolist()))


def is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def list_image_folder(root: str | Path) -> ImageFolder:
    """List ``root/<class>/<image>``; fails on a missing root, no classes or an empty class."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(str(root), "image folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(str(root), "no class sub-folders (expected <root>/<class>/<image files>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        images = sorted((p for p in folder.rglob("*") if is_image(p)), key=lambda p: str(p))
        if not images:
            raise DataError(
                str(folder),
                f"class folder holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})",
            )
        paths.extend(images)
        labels.extend([label] * len(images))
    return ImageFolder(
        root=root,
        class_names=tuple(p.name for p in class_dirs),
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- resolution


def _parts(stored: str) -> tuple[str, ...]:
    """Path components of a stored (POSIX or Windows) path, without the anchor."""
    posix = PurePosixPath(stored.replace("\\", "/"))
    parts = posix.parts
    if parts and parts[0] == "/":
        parts = parts[1:]
    if parts and parts[0].endswith(":"):  # a Windows drive letter
        parts = parts[1:]
    return tuple(p for p in parts if p not in ("", "."))


def _find_under(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The longest suffix of ``parts`` that is a file under ``root``."""
    for k in range(len(parts)):
        candidate = root.joinpath(*parts[k:])
        if candidate.is_file():
            return candidate
    return None


def resolve_image_paths(
    image_files: Sequence[str],
    image_root: str | Path | None = None,
    base: str | Path | None = None,
) -> list[Path]:
    """Local paths of the images listed in a feature file; raises naming the first missing one.

    With ``image_root``: every stored path is mapped to the longest of its suffixes that exists
    under ``image_root`` (so the authors' absolute prefixes are stripped, and ``image_root``
    may be ``CUB_200_2011``, its ``images`` folder or their parent). Without it: absolute
    stored paths are used as they are and relative ones are taken relative to ``base``.
    """
    if not image_files:
        raise DataError("image_files", "the feature file lists no images")
    if image_root is None:
        where = Path(base) if base is not None else Path.cwd()
        resolved = [Path(f) if Path(f).is_absolute() else where / f for f in image_files]
        missing = [i for i, p in enumerate(resolved) if not p.is_file()]
        if missing:
            first = missing[0]
            raise DataError(
                str(resolved[first]),
                f"image not found ({len(missing)} of {len(image_files)} images missing; first "
                f"listed as {image_files[first]!r}); set data.image_root to the folder that "
                "holds the dataset's images",
            )
        return resolved

    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise DataError(
            str(root),
            f"image root does not exist; first image needed: {image_files[0]!r} "
            "(set data.image_root to the folder that holds the dataset's images)",
        )
    resolved = []
    missing = []
    inside = Path(os.path.normpath(root.absolute()))
    for i, stored in enumerate(image_files):
        found = _find_under(root, _parts(stored))
        if found is None:
            missing.append(i)
        elif not Path(os.path.normpath(found.absolute())).is_relative_to(inside):
            # '..' in a file's path; the user's own symlinks under the root are followed
            raise DataError(
                str(stored),
                f"image entry {i + 1} of {len(image_files)} leads to "
                f"{os.path.normpath(found.absolute())}, outside the image root {root}; a "
                "feature file's paths must stay under the image root",
            )
        else:
            resolved.append(found)
    if missing:
        first = missing[0]
        raise DataError(
            str(image_files[first]),
            f"image not found under image root {root} (no suffix of the stored path exists there); "
            f"{len(missing)} of {len(image_files)} images missing",
        )
    return resolved


# ----------------------------------------------------------------------------- transforms


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB; errors name the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(str(path), "image not found") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise DataError(str(path), f"cannot read image ({type(err).__name__}: {err})") from None


def imagenet_transform(resize: int = 256, crop: int = 224) -> Transform:
    """The standard ImageNet evaluation transform: resize, centre crop, normalise."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ImageFiles(Dataset):
    """Transformed images of a list of paths; item ``i`` is ``(pixels, i)``.

    An image that cannot be read becomes ``(DataError's (where, problem), i)`` instead of an
    exception: raised inside a data-loader worker, the error would reach the main process
    wrapped in the worker's traceback (and not as a DataError). :func:`collate_images` passes
    it on and :func:`raise_unreadable` raises it, as one line, in the main process.
    """

    def __init__(self, paths: Sequence[Path], transform: Transform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | tuple[str, str], int]:
        try:
            return self.transform(load_rgb(self.paths[index])), index
        except DataError as err:
            return (err.where, err.problem), index


def collate_images(
    items: list[tuple[Tensor | tuple[str, str], int]],
) -> tuple[Tensor | tuple[str, str], Tensor]:
    """Stack a batch of :class:`ImageFiles` items, or hand on the first unreadable image's
    error (``(where, problem)``) in place of the pixels."""
    indices = torch.tensor([index for _, index in items])
    for pixels, _ in items:
        if isinstance(pixels, tuple):
            return pixels, indices
    return torch.stack([pixels for pixels, _ in items if isinstance(pixels, Tensor)]), indices


def raise_unreadable(pixels: Tensor | tuple[str, str]) -> Tensor:
    """The batch's pixels, or the :class:`DataError` of its unreadable image."""
    if isinstance(pixels, tuple):
        raise DataError(*pixels)
    return pixels


def batch_plan(n: int, batch_size: int, chunk_size: int, skip_chunks: set[int]) -> list[list[int]]:
    """Index batches over ``range(n)`` that never cross a chunk boundary, skipping done chunks."""
    batches: list[list[int]] = []
    for chunk, start in enumerate(range(0, n, chunk_size)):
        if chunk in skip_chunks:
            continue
        stop = min(start + chunk_size, n)
        batches.extend(
            list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)
        )
    return batches


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
