"""Using a trained model: classify features into a class set.

A run's ``model.ckpt`` holds the model, its class names, the feature preprocessing of its
data and the calibration gamma chosen on validation classes. :func:`predict_top_k` scores
features against the checkpoint's classes, optionally extended by new classes given only by
their semantic vectors (zero-shot: classes never seen in training), and returns the top-k
classes of every row (:mod:`zsl.run.replay` repeats a run's test evaluation from its
checkpoint). Feature generators
train their final classifier for the class set at inference time, on the real seen-class
features of the run's data, so they need the run's ``config.yaml`` (found beside the
checkpoint or given).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from zsl.data.errors import DataError
from zsl.data.formats.matfile import check_finite, get_key, numeric, read_mat
from zsl.errors import CheckpointError, ConfigError
from zsl.models.base import ZSLModule
from zsl.models.checkpoint import load_model
from zsl.run.config import run_spec
from zsl.run.spec import RunSpec

__all__ = [
    "Prediction",
    "image_features",
    "image_paths",
    "extend_classes",
    "load_for_inference",
    "predict_top_k",
    "read_class_file",
    "read_features",
    "run_config_of",
]


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes of one input row."""

    row: int
    rank: int
    name: str
    score: float
    split: str  # seen | unseen | new


def run_config_of(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to (its folder or a parent)."""
    for folder in Path(checkpoint).resolve().parents:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def load_run_config(path: Path, overrides: list[str] | None = None) -> DictConfig:
    """A saved run config with ``key=value`` overrides (e.g. ``data.root=...``) applied."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml raises several types
        raise ConfigError(f"{path} is not a readable run config ({err})") from None
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "model" not in cfg:
        raise ConfigError(f"{path} is not a run config (no data and model sections)")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"bad override {item!r}: expected key=value")
        if OmegaConf.select(cfg, key.lstrip("+"), default=None) is None and not key.startswith("+"):
            known = OmegaConf.select(cfg, key.rpartition(".")[0] or key, default=None)
            if known is None:
                raise ConfigError(f"unknown config key {key!r} in {path}")
        OmegaConf.update(cfg, key.lstrip("+"), OmegaConf.from_dotlist([f"v={value}"]).v)
    cfg.resume = None
    return cfg


def load_for_inference(
    checkpoint: Path, config: Path | None = None, overrides: list[str] | None = None
) -> tuple[ZSLModule, RunSpec | None]:
    """The checkpoint's model (eval mode) and its run's spec (None when there is no config)."""
    model = load_model(checkpoint)
    path = config or run_config_of(checkpoint)
    spec = run_spec(load_run_config(path, overrides), strict=False) if path is not None else None
    for key in spec.ignored if spec is not None else ():
        warnings.warn(f"{key} in {path} is not read by this version: ignored", stacklevel=2)
    if spec is not None and spec.model.name not in _names_of(type(model)):
        raise CheckpointError(
            f"{checkpoint} holds a {type(model).__name__} model but {path} configures "
            f"model={spec.model.name}"
        )
    return model, spec


def _names_of(cls: type) -> set[str]:
    from zsl.models import MODELS

    target = f"{cls.__module__}.{cls.__qualname__}"
    return {name for name, path in MODELS.items() if path == target}


# ----------------------------------------------------------------------------- inputs


def read_features(path: Path) -> np.ndarray:
    """Image features [N, D] from a ``.npy`` (N x D rows) or an xlsa17 ``.mat`` feature file
    (``features``: D x N), as float32."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(str(path), f"cannot read features ({err})") from None
        where = str(path)
    else:
        raw = get_key(read_mat(path), "features", path)
        array = np.asarray(raw).T
        where = f"{path}['features']"
    features = numeric(array, where)
    if features.ndim == 1:
        features = features[None]
    if features.ndim != 2:
        raise DataError(where, f"expected a 2-D feature matrix, got shape {features.shape}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    check_finite(features, where)
    return features


def image_paths(inputs: list[Path]) -> list[Path]:
    """The images named by ``inputs``: image files as given, folders by their images (all
    depths, sorted)."""
    from zsl.features.images import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(str(item), "no such image or folder")
    if not found:
        raise DataError(", ".join(map(str, inputs)), "no images found")
    return found


def recorded_backbone(spec: RunSpec | None) -> str | None:
    """The backbone the run's feature file records (``zsl-extract``/``zsl-custom`` write it
    as ``<name> weights=<weights>``); None when the file records none."""
    if spec is None or spec.data.synthetic is not None or spec.data.root is None:
        return None
    folder = Path(spec.data.root) / spec.data.name
    path = Path(spec.data.feature_file)
    path = path if path.is_absolute() else folder / path
    if path.suffix != ".mat" or not path.is_file():
        return None
    import scipy.io

    try:
        raw = scipy.io.loadmat(str(path), variable_names=["backbone"]).get("backbone")
    except Exception:  # noqa: BLE001 - unreadable: nothing recorded
        return None
    if raw is None or np.asarray(raw).size == 0:
        return None
    return str(np.asarray(raw).ravel()[0]).strip()


def image_features(
    paths: list[Path], run: RunSpec | None, backbone: str | None, weights: str | None
) -> tuple[np.ndarray, str]:
    """Features [N, D] of the images at ``paths`` and the backbone that made them: the one
    given, else the one the run's feature file records (the model's own inputs)."""
    from zsl.features.backbones import BackboneSpec
    from zsl.features.extract import extract_features

    if backbone is None:
        recorded = recorded_backbone(run)
        if recorded is None:
            raise CheckpointError(
                "the run's features record no backbone (benchmark features): pass --backbone "
                "NAME [--weights W], the network that extracted them"
            )
        name, _, rest = recorded.partition(" weights=")
        spec = BackboneSpec(name, rest or None)
    else:
        spec = BackboneSpec(backbone, weights)
    features = extract_features(paths, spec.build(), device="cpu", progress=False)
    return features, spec.describe()


def read_class_file(path: Path) -> tuple[list[str], np.ndarray]:
    """New classes: a CSV ``name,v1,...,vA`` (one class per line; a first line whose values
    are not numbers is a header) or a ``.npy`` [C, A] (named ``new_1`` ...)."""
    path = Path(path)
    if path.suffix == ".npy":
        vectors = numeric(np.load(path, allow_pickle=False), str(path))
        vectors = vectors[None] if vectors.ndim == 1 else vectors
        names = [f"new_{i + 1}" for i in range(vectors.shape[0])]
    else:
        try:
            rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(r)]
        except OSError as err:
            raise DataError(str(path), f"cannot read ({err.strerror})") from None
        if rows and not _numbers(rows[0][1:]):
            rows = rows[1:]  # a header
        bad = [i for i, r in enumerate(rows) if len(r) < 2 or not _numbers(r[1:])]
        if not rows or bad:
            line = (bad[0] + 1) if bad else 1
            raise DataError(
                str(path), f"line {line}: expected 'name,v1,...,vA' with numbers, one per class"
            )
        names = [r[0].strip() for r in rows]
        vectors = np.asarray([[float(v) for v in r[1:]] for r in rows])
    if vectors.ndim != 2 or len({len(v) for v in vectors}) != 1:
        raise DataError(str(path), "every class needs a vector of the same length")
    vectors = vectors.astype(np.float64)
    check_finite(vectors, str(path))
    zero = np.flatnonzero(~np.any(vectors != 0, axis=1))
    if zero.size:
        raise DataError(str(path), f"class {names[zero[0]]!r} has an all-zero semantic vector")
    return names, vectors


def _numbers(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return bool(values)


def extend_classes(
    model: ZSLModule, names: list[str], vectors: np.ndarray, only_new: bool = False
) -> None:
    """Add classes given by semantic vectors to the model's class set, as unseen classes
    (``only_new``: the new classes are the only candidates of :func:`predict_top_k`, plain
    zero-shot among them). The vectors are
    L2-normalised like the model's own when those are (xlsa17 ``att``)."""
    if vectors.shape[1] != model.n_attributes:
        raise DataError(
            "classes",
            f"the new classes have {vectors.shape[1]}-d semantic vectors; the model was trained "
            f"with {model.n_attributes}-d ones",
        )
    old = model.semantics.detach().cpu().double()
    known = set(model.class_names)
    clash = [n for n in names if n in known]
    if clash:
        raise DataError("classes", f"class {clash[0]!r} is already a class of the checkpoint")
    new = torch.as_tensor(vectors, dtype=torch.float64)
    used = torch.cat([model.seen_ids, model.unseen_ids]).cpu()
    norms = old[used].norm(dim=1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        new = new / new.norm(dim=1, keepdim=True)
    first = old.shape[0]
    added = torch.arange(first, first + new.shape[0])
    unseen = torch.cat([model.unseen_ids.cpu(), added])
    model.use_classes(
        torch.cat([old, new]).float(),
        [*model.class_names, *names],
        model.seen_ids.cpu(),
        unseen.sort().values,
    )
    model.first_new_class = first  # type: ignore[assignment]
    # only_new: every class still scores (a generator's classifier is trained on all of
    # them, its real seen features included); the candidates are the new ones
    model.candidates = added if only_new else None  # type: ignore[assignment]


def preprocess(features: np.ndarray, model: ZSLModule, spec: RunSpec | None) -> np.ndarray:
    """The feature preprocessing the model was trained with (``data.preprocess``): L2 rows,
    none, or min-max scaling fitted again on the run's training features."""
    from zsl.data.splits import FeatureScaler

    kind = model.preprocess or (spec.data.preprocess if spec is not None else None)
    if kind is None:
        raise CheckpointError(
            "the checkpoint does not record its feature preprocessing and no run config was "
            "found: pass --config <run>/config.yaml"
        )
    if kind != "minmax":
        return FeatureScaler.fit(kind, features).transform(features)  # type: ignore[arg-type]
    if spec is None:
        raise CheckpointError("data.preprocess=minmax needs the run's data: pass --config")
    from zsl.data.splits import make_split
    from zsl.run.builders import load_data

    data = load_data(spec, "test")  # fitted on the raw trainval features, as in the run
    split = make_split(data, "test")
    return FeatureScaler.fit("minmax", data.features[split.train_idx]).transform(features)


# ----------------------------------------------------------------------------- predict


def bind_training_data(model: ZSLModule, spec: RunSpec | None) -> None:
    """Hand a model that learns at inference time (feature generators) its run's training
    examples: the test protocol's seen-class features."""
    from zsl.models.generative.base import GenerativeZSL

    if not isinstance(model, GenerativeZSL):
        return
    if spec is None:
        raise CheckpointError(
            f"{type(model).__name__} trains its classifier on the run's real seen features at "
            "inference time: the run's config.yaml was not found, pass --config"
        )
    from zsl.run.builders import make_datamodule

    dm = make_datamodule(spec, "test")
    model._training_examples = dm.training_examples()


def predict_top_k(
    model: ZSLModule,
    features: np.ndarray,
    top_k: int = 5,
    calibrate: bool = True,
    batch_size: int = 4096,
) -> list[Prediction]:
    """The ``top_k`` classes of every row of ``features`` (already preprocessed), best first,
    with their (calibrated) scores; call :meth:`ZSLModule.prepare_inference` first."""
    if features.shape[1] != model.feature_dim:
        raise DataError(
            "features",
            f"{features.shape[1]}-d features; the model was trained on {model.feature_dim}-d ones",
        )
    seen = set(model.seen_ids.tolist())
    first_new = int(getattr(model, "first_new_class", model.n_classes))
    out: list[Prediction] = []
    candidates = getattr(model, "candidates", None)
    n_candidates = len(seen) + model.unseen_ids.numel() if candidates is None else len(candidates)
    k = min(top_k, n_candidates)
    for start in range(0, features.shape[0], batch_size):
        x = torch.from_numpy(features[start : start + batch_size])
        scores = model.predict_scores(x, calibrate)
        if candidates is not None:
            keep = torch.full_like(scores, float("-inf"))
            keep[:, candidates] = scores[:, candidates]
            scores = keep
        values, ids = scores.topk(k, dim=1)
        for r in range(ids.shape[0]):
            for rank, (c, v) in enumerate(zip(ids[r].tolist(), values[r].tolist()), 1):
                split = "new" if c >= first_new else ("seen" if c in seen else "unseen")
                out.append(Prediction(start + r, rank, model.class_names[c], float(v), split))
    return out


def write_predictions(
    predictions: list[Prediction], path: Path, inputs: list[str] | None = None
) -> None:
    """``row,input,rank,class,score,split`` per line (0-based rows of the input; ``input``:
    the image file of the row, empty for feature rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "input", "rank", "class", "score", "split"])
        for p in predictions:
            name = inputs[p.row] if inputs is not None else ""
            writer.writerow([p.row, name, p.rank, p.name, f"{p.score:.6g}", p.split])
