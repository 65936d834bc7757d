"""``zsl-extract``: image features and CLIP class-name semantics in the xlsa17 format.

Three sources, one output format (what :func:`zsl.data.formats.xlsa17.load_xlsa17` reads):

* ``--images DIR``: an image folder with one sub-folder per class (classes sorted by name,
  labels 1-based in that order, ``image_files`` absolute paths);
* ``--from FEATURES.mat``: re-extract the images listed in an existing xlsa17 feature file, in
  its order and with its labels (so the ``*_loc`` arrays of ``att_splits.mat`` still index
  it); stored paths are resolved under ``--image-root`` (see :mod:`zsl.features.images`);
* ``--text-semantics ATT_SPLITS.mat``: a copy of ``att_splits.mat`` whose ``att`` holds CLIP
  text embeddings of the class names (the attributes are kept as ``att_attributes``).

Backbones: any torchvision classification model by name (classifier head removed, so the
output is the penultimate layer: 2048-d for resnet101) with ``--weights imagenet`` (torchvision's
cache or download), ``none`` (seeded random init) or a checkpoint path; or ``clip`` (image
embeddings, ``--weights`` a Hugging Face model id or a local directory).

Extraction is batched, shows a progress bar and is resumable: finished chunks are saved under
``<output>.partial/`` and a rerun continues from them; the output file is written atomically
at the end, and a rerun on a finished output with the same settings does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch import nn
from torch.utils.data import DataLoader

from zsl.data.errors import DataError
from zsl.errors import ModelLoadError
from zsl.features.backbones import Backbone
from zsl.features.images import (
    ImageFiles,
    batch_plan,
    imagenet_transform,
    list_image_folder,
    pick_device,
    resolve_image_paths,
)

DEFAULT_BACKBONE = "resnet101"
CLIP_BACKBONE = "clip"
RANDOM_INIT_SEED = 0


# ----------------------------------------------------------------------------- backbones


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


# ----------------------------------------------------------------------------- extraction


def _fingerprint(backbone: str, names: Sequence[str], chunk_size: int) -> dict[str, Any]:
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()
    return {
        "backbone": backbone,
        "n_images": len(names),
        "chunk_size": chunk_size,
        "images_sha1": digest,
    }


def _load_partial(
    partial_dir: Path, fingerprint: dict[str, Any], n: int, chunk_size: int
) -> dict[int, np.ndarray]:
    """Finished chunks of an interrupted run with the same settings (others are discarded)."""
    manifest = partial_dir / "manifest.json"
    if partial_dir.is_dir():
        same = manifest.is_file() and json.loads(manifest.read_text()) == fingerprint
        if not same:
            print(f"discarding partial results in {partial_dir} (made with other settings)")
            shutil.rmtree(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(fingerprint))
    done: dict[int, np.ndarray] = {}
    for chunk, start in enumerate(range(0, n, chunk_size)):
        path = partial_dir / f"chunk_{chunk:06d}.npy"
        if path.is_file():
            arr = np.load(path)
            if arr.shape[0] == min(chunk_size, n - start):
                done[chunk] = arr
    return done


def _save_chunk(partial_dir: Path, chunk: int, arr: np.ndarray) -> None:
    tmp = partial_dir / f"chunk_{chunk:06d}.tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, partial_dir / f"chunk_{chunk:06d}.npy")


def extract_features(
    paths: Sequence[Path],
    backbone: Backbone,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    chunk_size: int = 2048,
    partial_dir: Path | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Features ``[N, D]`` (float32) of the images at ``paths``, in order.

    With ``partial_dir`` every finished chunk of ``chunk_size`` images is saved there and a
    rerun with the same backbone and image list (``names``, default the paths) reuses them.
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    n = len(paths)
    n_chunks = -(-n // chunk_size)
    done: dict[int, np.ndarray] = {}
    if partial_dir is not None:
        fingerprint = _fingerprint(
            backbone.description, names or [str(p) for p in paths], chunk_size
        )
        done = _load_partial(partial_dir, fingerprint, n, chunk_size)
    dev = pick_device(device)
    module = backbone.module.to(dev).eval()
    loader = DataLoader(
        ImageFiles(paths, backbone.transform),
        batch_sampler=batch_plan(n, batch_size, chunk_size, set(done)),
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    pending: dict[int, list[np.ndarray]] = {}
    bar = tqdm(
        total=n,
        initial=sum(a.shape[0] for a in done.values()),
        unit="img",
        desc=backbone.description,
        disable=not progress,
    )
    with torch.inference_mode():
        for pixels, index in loader:
            out = module(pixels.to(dev, non_blocking=True)).float().cpu().numpy()
            chunk = int(index[0]) // chunk_size
            pending.setdefault(chunk, []).append(out)
            if int(index[-1]) + 1 == min((chunk + 1) * chunk_size, n):  # the chunk's last batch
                done[chunk] = np.concatenate(pending.pop(chunk)).astype(np.float32)
                if partial_dir is not None:
                    _save_chunk(partial_dir, chunk, done[chunk])
            bar.update(len(index))
    bar.close()
    return np.concatenate([done[c] for c in range(n_chunks)]).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- files


def matlab_cell(strings: Sequence[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def savemat_atomic(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        scipy.io.savemat(handle, content)
    os.replace(tmp, path)


def write_feature_file(
    path: str | Path,
    features: np.ndarray,
    labels0: np.ndarray,
    image_files: Sequence[str],
    backbone: str,
) -> None:
    """Write ``features`` [N, D] in the xlsa17 ``res101.mat`` layout (D x N, 1-based labels)."""
    features = np.asarray(features, dtype=np.float32)
    if not features.shape[0] == len(labels0) == len(image_files):
        raise ValueError(
            f"{features.shape[0]} feature rows, {len(labels0)} labels, "
            f"{len(image_files)} image files"
        )
    savemat_atomic(
        Path(path),
        {
            "features": np.ascontiguousarray(features.T),
            "labels": (np.asarray(labels0, dtype=np.int64) + 1).astype(np.float64).reshape(-1, 1),
            "image_files": matlab_cell(list(image_files)),
            "backbone": backbone,
        },
    )


def _finished(path: Path, backbone: str, image_files: Sequence[str]) -> np.ndarray:
    """The features of an existing output made with the same settings; raises otherwise."""
    from zsl.data.formats.xlsa17 import _strings

    mat = scipy.io.loadmat(str(path))
    old = str(np.asarray(mat["backbone"]).ravel()[0]) if "backbone" in mat else "<unknown>"
    same_images = "image_files" in mat and _strings(mat["image_files"]) == tuple(image_files)
    if old != backbone or not same_images:
        what = f"backbone {old!r}" if old != backbone else "another image list"
        raise FileExistsError(
            f"{path} exists and was made with {what}; pass --overwrite to replace it"
        )
    return np.ascontiguousarray(np.asarray(mat["features"], dtype=np.float32).T)


def extract_to_file(
    output: str | Path,
    paths: Sequence[Path],
    labels0: np.ndarray,
    image_files: Sequence[str],
    spec: BackboneSpec,
    *,
    overwrite: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    chunk_size: int = 2048,
    progress: bool = True,
) -> np.ndarray:
    """Extract (resumably) and write an xlsa17 feature file; returns the features [N, D].

    A finished ``output`` made with the same backbone and image list is reused as it is.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        feats = _finished(output, spec.describe(), image_files)
        print(f"{output} is complete ({spec.describe()}, {len(image_files)} images): nothing to do")
        return feats
    partial = output.with_name(output.name + ".partial")
    backbone = spec.build()
    feats = extract_features(
        paths,
        backbone,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        chunk_size=chunk_size,
        partial_dir=partial,
        names=list(image_files),
        progress=progress,
    )
    write_feature_file(output, feats, labels0, image_files, spec.describe())
    shutil.rmtree(partial, ignore_errors=True)
    n, dim = feats.shape
    print(f"wrote {output}: {dim}-d features of {n} images ({spec.describe()})")
    return feats


def write_text_semantics(
    split_file: str | Path,
    output: str | Path,
    clip_model: str | None = None,
    templates: str | Sequence[str] = "generic",
    name_map: str | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Copy ``att_splits.mat`` with ``att`` replaced by CLIP text embeddings (E x C, unit
    columns) of the class names; the attributes are kept as ``att_attributes``."""
    from zsl.data.formats.xlsa17 import _strings
    from zsl.features.clip import DEFAULT_CLIP_MODEL, class_text_embeddings, load_clip

    split_file, output = Path(split_file), Path(output)
    if output.resolve() == split_file.resolve():
        raise ValueError(f"refusing to overwrite the source {split_file}; choose another --output")
    if not split_file.is_file():
        raise DataError(str(split_file), "file not found")
    mat = {k: v for k, v in scipy.io.loadmat(str(split_file)).items() if not k.startswith("__")}
    if "att" not in mat:
        raise DataError(f"{split_file}['att']", f"missing key; the file has {sorted(mat)}")
    n_classes = int(np.asarray(mat["att"]).shape[1])
    if "allclasses_names" in mat:
        names = list(_strings(mat["allclasses_names"]))
    else:
        if name_map is None:
            raise DataError(
                f"{split_file}['allclasses_names']",
                "missing; class names are needed for text embeddings: pass --name-map with one "
                "name per line in class order",
            )
        names = [f"class_{i + 1:03d}" for i in range(n_classes)]
    model_id = clip_model or DEFAULT_CLIP_MODEL
    emb = class_text_embeddings(load_clip(model_id), names, templates, name_map, device)
    mat["att_attributes"] = mat["att"]
    mat["att"] = np.ascontiguousarray(emb.T.astype(np.float64))
    mat["semantics"] = f"clip text embeddings ({model_id})"
    savemat_atomic(output, mat)
    print(f"wrote {output}: att = {emb.shape[1]}-d CLIP text embeddings of {emb.shape[0]} classes")
    return emb


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsl-extract",
        description="Extract image features (or CLIP class-name semantics) in the xlsa17 format.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="image folder with one sub-folder per class")
    source.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        help="xlsa17 feature file whose image list (order, labels) is re-extracted",
    )
    source.add_argument(
        "--text-semantics",
        type=Path,
        metavar="ATT_SPLITS",
        help="write a copy of this att_splits.mat with att = CLIP text embeddings of class names",
    )
    parser.add_argument("--output", "-o", type=Path, required=True, help="file to write")
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="with --from: folder the stored image paths are resolved under (prefixes stripped)",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"torchvision classification model name or '{CLIP_BACKBONE}' "
        f"(default {DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision: imagenet (default) | none | /path/checkpoint.pth; clip: a Hugging Face "
        "model id (default openai/clip-vit-base-patch32) or a local directory",
    )
    parser.add_argument("--templates", default="generic", help="CLIP prompt preset or a file")
    parser.add_argument("--name-map", default=None, help="class-name map file (.json/.yaml/.txt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    parser.add_argument("--chunk-size", type=int, default=2048, help="images per resumable chunk")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``zsl-extract``; returns the written file."""
    args = build_parser().parse_args(argv)
    if args.text_semantics is not None:
        write_text_semantics(
            args.text_semantics,
            args.output,
            args.weights,
            args.templates,
            args.name_map,
            args.device,
        )
        return args.output
    if args.images is not None:
        folder = list_image_folder(args.images)
        paths = [p.resolve() for p in folder.paths]
        labels0, image_files = folder.labels, [str(p) for p in paths]
    else:
        from zsl.data.formats.xlsa17 import _read_mat, _strings

        mat = _read_mat(args.from_file)
        if "image_files" not in mat or "labels" not in mat:
            raise DataError(str(args.from_file), "needs 'image_files' and 'labels' to re-extract")
        image_files = list(_strings(mat["image_files"]))
        labels0 = np.asarray(mat["labels"]).ravel().astype(np.int64) - 1
        paths = resolve_image_paths(image_files, args.image_root, args.from_file.parent)
    extract_to_file(
        args.output,
        paths,
        labels0,
        image_files,
        BackboneSpec(args.backbone, args.weights),
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
    )
    return args.output


def run_cli(argv: Sequence[str] | None = None) -> None:
    """``zsl-extract``: :func:`main`, with bad input (missing or unreadable files,
    unknown backbones, weights that do not load or fit) reported as one line, exit status 1."""
    try:
        main(argv)
    except (DataError, ModelLoadError, FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None


if __name__ == "__main__":
    run_cli()
