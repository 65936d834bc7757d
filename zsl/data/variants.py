"""Real-data variants of CUB in the xlsa17 layout (the "transfer suite").

Each variant changes one property of CUB -- the xlsa17 ``att_splits.mat`` with the VGG fc7
image features of ``vgg_fc7.mat`` -- and is written as an ordinary xlsa17 dataset folder
``<out_root>/<NAME>``, so the library's own reader and ``train.py`` run it unchanged::

    data=xlsa17 data.name=<NAME> data.root=<out_root> data.feature_file=<spec.feature_file>

============  ==================================================================================
CUB_SENT      the 1024-d sentence embeddings of ``CUB/sent_splits.mat`` as class semantics
CUB_PCA64     VGG features PCA-projected and whitened to 64 signed dimensions
CUB_PCA256    the same with 256 dimensions
CUB_FEW10     10 training images per seen class (``train_loc``/``val_loc`` restricted to them)
CUB_ATT24     24 of the 312 attributes: the 24 that vary most across the seen classes
============  ==================================================================================

Every choice uses only what a method may look at while training: the PCA is fitted on the
``trainval_loc`` images alone, the attribute choice on the seen (trainval) classes alone, and
the test splits (``test_seen_loc``, ``test_unseen_loc``) are those of CUB in every variant.
Index arrays stay MATLAB's 1-based column vectors, in the source's integer type. Variants that
keep CUB's features link them (a symbolic link to the source ``vgg_fc7.mat``; a copy where links
are not possible) instead of writing 190 MB again.

Caching, as :func:`zsl.data.synthetic.ensure_synthetic` does it: the files written carry the
variant's JSON description (:meth:`VariantSpec.to_json`: its fields, :data:`VARIANT_VERSION` and
the sizes of the source files it reads) under the key ``variant_spec``; :func:`build_variant`
writes a folder again only when a file is missing or that description differs.

This module holds the registry, the caching and the writing; the array transforms of each
kind of variant (and the PCA whitening) are in :mod:`zsl.data.variant_transforms`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io

from zsl.data.errors import DataError
from zsl.data.formats.matfile import savemat_atomic
from zsl.data.variant_transforms import (
    SENTENCE_FILE,
    SPLIT_FILE,
    PCAWhitening,
    VariantContent,
    attribute_subset_variant,
    few_shot_variant,
    fit_pca_whitening,
    pca_variant,
    sentence_variant,
)

__all__ = [
    "SPEC_KEY",
    "VARIANTS",
    "VARIANT_VERSION",
    "PCAWhitening",
    "VariantSpec",
    "build",
    "build_variant",
    "fit_pca_whitening",
    "is_current",
]

#: bump whenever a variant is built differently: built folders are then rebuilt
VARIANT_VERSION = 1
#: key of the variant's JSON description in the files written
SPEC_KEY = "variant_spec"

Kind = Literal["sentences", "pca", "few_shot", "attribute_subset"]


@dataclass(frozen=True)
class VariantSpec:
    """One variant: what it changes (``kind`` and its one number) and what it reads.

    ``dim``: PCA dimensions (``pca``); ``shots``: training images kept per seen class
    (``few_shot``, chosen with ``np.random.default_rng(seed)``); ``n_attributes``: attributes
    kept (``attribute_subset``). ``source`` is the dataset folder under the source root and
    ``source_features`` its feature file."""

    name: str
    kind: Kind
    description: str
    dim: int | None = None
    shots: int | None = None
    n_attributes: int | None = None
    seed: int = 0
    source: str = "CUB"
    source_features: str = "vgg_fc7.mat"

    def __post_init__(self) -> None:
        needed = {"pca": "dim", "few_shot": "shots", "attribute_subset": "n_attributes"}
        field = needed.get(self.kind)
        if field is not None:
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"variant {self.name}: {self.kind} needs {field} >= 1, got {value}"
                )
        elif self.kind != "sentences":
            raise ValueError(f"variant {self.name}: unknown kind {self.kind!r}")

    @property
    def feature_file(self) -> str:
        """The feature file of the built folder (``data.feature_file``)."""
        if self.kind == "pca":
            return f"{Path(self.source_features).stem}_pca{self.dim}.mat"
        return self.source_features

    @property
    def links_features(self) -> bool:
        """True when the variant keeps the source features (linked, not written)."""
        return self.kind != "pca"

    def source_files(self) -> tuple[str, ...]:
        """The files of the source dataset folder the variant reads."""
        extra = (SENTENCE_FILE,) if self.kind == "sentences" else ()
        return (SPLIT_FILE, self.source_features, *extra)

    def to_json(self, source_root: str | Path) -> str:
        """The canonical JSON description stored in the built files: the fields, the builder
        version and the size of every source file read (a missing one raises DataError)."""
        folder = Path(source_root) / self.source
        sizes = {name: _source(folder / name).stat().st_size for name in self.source_files()}
        record = {"variant_version": VARIANT_VERSION, **asdict(self), "source_sizes": sizes}
        return json.dumps(record, sort_keys=True)


_SHARED = "VGG fc7 features"
#: the transfer suite's variants by name (the ``data.name`` of the built folder)
VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec(
            "CUB_SENT",
            "sentences",
            f"CUB, 1024-d sentence embeddings (sent_splits.mat) as class semantics; {_SHARED}",
        ),
        VariantSpec(
            "CUB_PCA64",
            "pca",
            "CUB, VGG features PCA-whitened to 64 signed dims (fitted on trainval images only)",
            dim=64,
        ),
        VariantSpec(
            "CUB_PCA256",
            "pca",
            "CUB, VGG features PCA-whitened to 256 signed dims (fitted on trainval images only)",
            dim=256,
        ),
        VariantSpec(
            "CUB_FEW10",
            "few_shot",
            "CUB, 10 training images per seen class (seed 0; train/val restricted to them)",
            shots=10,
        ),
        VariantSpec(
            "CUB_ATT24",
            "attribute_subset",
            "CUB, the 24 of 312 attributes with the largest variance across the seen classes",
            n_attributes=24,
        ),
    )
}


# ----------------------------------------------------------------------------- building


def build_variant(name: str, source_root: str | Path, out_root: str | Path) -> Path:
    """Build the registered variant ``name`` (:data:`VARIANTS`, any letter case) from the
    xlsa17 folder ``source_root`` into ``<out_root>/<NAME>``; returns that folder. A folder
    already built with the same description is left untouched."""
    key = name.upper()
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; available: {', '.join(VARIANTS)}")
    return build(VARIANTS[key], source_root, out_root)


def build(spec: VariantSpec, source_root: str | Path, out_root: str | Path) -> Path:
    """Build ``spec`` into ``<out_root>/<spec.name>`` (see :func:`build_variant`). Problems
    with the source files or the output folder raise a DataError naming the path."""
    src = Path(source_root) / spec.source
    folder = Path(out_root) / spec.name
    wanted = spec.to_json(source_root)
    if _current(spec, src, folder, wanted):
        return folder
    _writable(folder)
    splits, features = _content(spec, src)
    target = folder / spec.feature_file
    try:
        if features is None:
            _link(src / spec.source_features, target)
        else:
            savemat_atomic(target, {**features, SPEC_KEY: wanted})
        # the split file last: an interrupted build leaves no matching description behind
        savemat_atomic(folder / SPLIT_FILE, {**splits, SPEC_KEY: wanted})
    except OSError as err:
        raise DataError(str(folder), f"cannot write the variant ({err.strerror or err})") from None
    return folder


def is_current(spec: VariantSpec, source_root: str | Path, out_root: str | Path) -> bool:
    """True when ``<out_root>/<spec.name>`` holds ``spec`` built from ``source_root`` as it
    is now (:func:`build` would write nothing)."""
    src = Path(source_root) / spec.source
    return _current(spec, src, Path(out_root) / spec.name, spec.to_json(source_root))


def _current(spec: VariantSpec, src: Path, folder: Path, wanted: str) -> bool:
    if _stored_spec(folder / SPLIT_FILE) != wanted:
        return False
    target = folder / spec.feature_file
    if not spec.links_features:
        return _stored_spec(target) == wanted
    source = src / spec.source_features
    if target.is_symlink():
        return target.resolve() == source.resolve()
    return target.is_file() and target.stat().st_size == source.stat().st_size


def _stored_spec(path: Path) -> str | None:
    """The description stored in a built file (None when missing or unreadable)."""
    if not path.is_file():
        return None
    try:
        raw = scipy.io.loadmat(str(path), variable_names=[SPEC_KEY]).get(SPEC_KEY)
    except Exception:  # noqa: BLE001 - an unreadable file just means "build again"
        return None
    value = np.asarray(raw).ravel() if raw is not None else np.array([])
    return str(value[0]) if value.size else None


def _source(path: Path) -> Path:
    if not path.is_file():
        raise DataError(str(path), "source file not found (the xlsa17 source folder is wrong?)")
    return path


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            str(folder), f"cannot create the variant folder ({err.strerror or err})"
        ) from None
    if not os.access(folder, os.W_OK):
        raise DataError(str(folder), "the variant folder is not writable")


def _link(source: Path, target: Path) -> None:
    """``target`` -> ``source`` as a symbolic link (a copy where links fail), put in place whole."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.symlink(source.resolve(), tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- the variants


def _content(spec: VariantSpec, src: Path) -> VariantContent:
    """The split file's and (None: the source's kept) the feature file's content of ``spec``
    built from the source folder ``src`` (:mod:`zsl.data.variant_transforms`)."""
    if spec.kind == "sentences":
        return sentence_variant(src)
    if spec.kind == "pca":
        assert spec.dim is not None
        return pca_variant(src, spec.source_features, spec.dim)
    if spec.kind == "few_shot":
        assert spec.shots is not None
        return few_shot_variant(spec.name, src, spec.source_features, spec.shots, spec.seed)
    assert spec.n_attributes is not None
    return attribute_subset_variant(spec.name, src, spec.source_features, spec.n_attributes)
