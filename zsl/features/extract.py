"""``zsl-extract``: image features and CLIP class-name semantics in the xlsa17 format.

Three sources, one output format (what :func:`zsl.data.formats.xlsa17.read` reads):

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

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch.utils.data import DataLoader

from zsl.data.errors import DataError
from zsl.data.formats.matfile import matlab_cell, savemat_atomic
from zsl.features.backbones import Backbone, BackboneSpec
from zsl.features.images import (
    ImageFiles,
    batch_plan,
    collate_images,
    pick_device,
    raise_unreadable,
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
        collate_fn=collate_images,
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
            batch = raise_unreadable(pixels)
            out = module(batch.to(dev, non_blocking=True)).float().cpu().numpy()
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
    from zsl.data.formats.matfile import strings

    mat = scipy.io.loadmat(str(path))
    old = str(np.asarray(mat["backbone"]).ravel()[0]) if "backbone" in mat else "<unknown>"
    same_images = "image_files" in mat and strings(mat["image_files"]) == tuple(image_files)
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
    from zsl.data.formats.matfile import strings
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
        names = list(strings(mat["allclasses_names"]))
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
