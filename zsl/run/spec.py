"""The run spec: one typed, validated view of a composed run config.

``python train.py`` composes ``zsl/conf/train.yaml`` with its groups into an OmegaConf
config; :func:`zsl.run.config.run_spec` turns it, once, into these frozen dataclasses (the
model and its class, parameters and search, the data, the trainer, selection, the logger and
paths: :meth:`RunSpec.parse`) and validates them (:func:`zsl.run.config.validate`). The
engine, reporting and the CLI read the spec; the composed config is kept only to be saved
(``config.yaml``) and compared on ``resume=``.

A notebook does what the CLI does::

    from zsl.cli.compose import compose
    from zsl.cli.compose import compose_spec
    spec = compose_spec(["model=ale", "data=cub", "data.root=..."])
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from zsl.errors import ConfigError
from zsl.reporting.settings import LoggerSpec

if TYPE_CHECKING:
    from zsl.models.base import ZSLModule

__all__ = [
    "DataSpec",
    "LoggerSpec",
    "ModelSpec",
    "PathsSpec",
    "RunSpec",
    "SearchSpec",
    "SelectionSpec",
    "TrainerSpec",
    "TRANSFER_RULES",
    "set_param",
]

_T = TypeVar("_T")

#: how the epoch count selected on the val protocol carries over to the trainval fit
TRANSFER_RULES = ("epochs", "steps")


def check_folds(folds: object) -> int | str:
    """``model.search.folds``: ``auto`` or an integer >= 1, else a :class:`ConfigError`."""
    if folds == "auto":
        return "auto"
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ConfigError(f"model.search.folds must be auto or an integer >= 1, got {folds!r}")
    return folds


def _build(
    cls: type[_T], section: str, values: Mapping[str, Any] | None, ignored: list[str] | None
) -> _T:
    """``cls`` from a config section's mapping. A key that is not one of its fields is refused
    naming the section's settings (a value the user typed is never dropped), or, with
    ``ignored`` (a saved run's config, which earlier versions ran without reading such keys),
    left out and listed there."""
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [key for key in values if key not in names]
    for key in unknown:
        where = key if section == "run" else f"{section}.{key}"
        if ignored is None:
            shown = ", ".join(n for n in names if n not in ("config", "ignored"))
            raise ConfigError(f"{where} is not a {section} setting; settings: {shown}")
        ignored.append(where)
        del values[key]
    return cls(**values)


def set_param(params: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b`` in a nested parameter dict (copying the nested dicts it passes through)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        params[head] = value
        return
    nested = dict(params.get(head) or {})
    set_param(nested, rest, value)
    params[head] = nested


@dataclass(frozen=True)
class SearchSpec:
    """``model.search``: what selection maximises on validation classes, over which grid."""

    #: the validation metric that picks points and epochs
    metric: str = "zsl_t1"
    #: how the selected epoch count carries over to the trainval fit: ``epochs`` or ``steps``
    transfer: str = "epochs"
    #: validation epochs without a strict improvement after which a point stops (None: never)
    patience: int | None = None
    #: the share of ``max_epochs`` trained before the first validation pass (0: validate every
    #: epoch); earlier epochs are neither evaluated nor selectable (:func:`first_validated_epoch`)
    validate_from: float = 0.0
    #: ``dotted parameter -> values``; the grid is their product
    grid: dict[str, list[Any]] = field(default_factory=dict)
    #: class-wise folds of the seen classes that selection averages over (1: the files' one
    #: validation split; ``auto``: :data:`AUTO_FOLDS` folds when that split is small, see
    #: :mod:`zsl.run.folds`)
    folds: int | str = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """``model``: the model's name, class, default parameters, epoch budget and search."""

    name: str
    _target_: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    search: SearchSpec = field(default_factory=SearchSpec)
    max_epochs: int = 1
    #: the model's own training batch (a paper's recipe); None: ``data.batch_size``
    batch_size: int | None = None
    #: small training sets repeat their data to at least this many steps per epoch
    min_steps_per_epoch: int = 0

    @property
    def cls(self) -> type[ZSLModule]:
        """The model class (imported on first use: torch and the model's code)."""
        return _model_class(self.name)

    def grid_points(self, use_grid: bool = True) -> list[dict[str, Any]]:
        """Full parameter dicts for every point of the search grid (just ``params`` when there
        is no grid or ``use_grid`` is False), in the grid's order."""
        grid = self.search.grid if use_grid else {}
        if not grid:
            return [dict(self.params)]
        keys = list(grid)
        points = []
        for combo in itertools.product(*(list(grid[k]) for k in keys)):
            point = dict(self.params)
            for key, value in zip(keys, combo, strict=True):
                set_param(point, key, value)
            points.append(point)
        return points


@functools.cache
def _model_class(name: str) -> type[ZSLModule]:
    from zsl.models import get_model_class  # noqa: PLC0415 - imports torch

    return get_model_class(name)


@dataclass(frozen=True)
class DataSpec:
    """``data``: which benchmark, where, which protocol, and how it is split and scaled."""

    name: str
    format: str = "xlsa17"
    root: str | None = None
    feature_file: str = ""
    semantics_key: str = "att"
    image_root: str | None = None
    protocol: str = "test"
    exclude_test_from_val: bool = True
    preprocess: Literal["none", "l2", "minmax"] = "l2"
    batch_size: int = 128
    eval_batch_size: int = 4096
    val_seen_fraction: float = 0.2
    split_seed: int = 0
    #: the built-in benchmark's generator settings (:class:`zsl.data.synthetic.SyntheticSpec`)
    synthetic: dict[str, Any] | None = None

    def options(self) -> dict[str, Any]:
        """The section as a plain mapping (what feature preparation reads)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainerSpec:
    """``trainer``: Lightning's settings (devices, precision, determinism) and the cadence of
    progress output and ``last.ckpt`` writes."""

    max_epochs: int = 1
    strategy: str = "auto"
    accelerator: Any = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    deterministic: Any = True
    enable_progress_bar: bool = True
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    #: seconds between ``last.ckpt`` writes within a fit
    checkpoint_interval_s: float = 60.0


@dataclass(frozen=True)
class SelectionSpec:
    """``selection``: whether the grid is searched, epochs selected, points stacked, and
    which grid axes a typed value fixed (:func:`zsl.run.config.fix_grid_axes`)."""

    grid: bool = True
    select_epochs: bool = True
    stack_grid: bool = True
    fixed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathsSpec:
    """``paths``: the default data root and the folder of new run directories."""

    data_dir: str = "data"
    runs_dir: str = "runs"


@dataclass(frozen=True)
class RunSpec:
    """One run, typed: built and validated once (:func:`zsl.run.config.run_spec`)."""

    model: ModelSpec
    data: DataSpec
    trainer: TrainerSpec
    selection: SelectionSpec
    logger: LoggerSpec
    paths: PathsSpec
    seed: int = 0
    output_dir: str | None = None
    #: the directory of the run this one continues (set by :func:`zsl.run.store.resume_config`)
    resume: str | None = None
    keep_checkpoints: bool = False
    #: the composed config, kept to be saved (``config.yaml``); never read by the engine
    config: DictConfig = field(default_factory=lambda: OmegaConf.create({}), compare=False)
    #: keys of a saved run's config that no part of a run reads (left out: ``strict=False``)
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, cfg: DictConfig, strict: bool = True) -> RunSpec:
        """The spec of ``cfg`` without the semantic checks. Keys no part of a run reads are
        refused, or with ``strict=False`` (a saved run's config) left out and listed in
        :attr:`ignored`."""
        ignored: list[str] | None = None if strict else []
        values = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(values, dict)
        raw: dict[str, Any] = {str(k): v for k, v in values.items() if k != "hydra"}
        for section in ("model", "data"):
            if not isinstance(raw.get(section), dict):
                raise ConfigError(f"the run config has no {section} section")
        model = dict(raw.pop("model"))
        search = dict(model.get("search") or {})
        search["grid"] = dict(search.get("grid") or {})  # null or {}: no grid
        folds = search.get("folds")
        if isinstance(folds, str) and folds.strip().isdigit():  # a count typed beside "auto"
            search["folds"] = int(folds)
        model["search"] = _build(SearchSpec, "model.search", search, ignored)
        model["params"] = dict(model.get("params") or {})
        selection = dict(raw.pop("selection", None) or {})
        selection["fixed"] = tuple(selection.get("fixed") or ())
        spec = _build(
            cls,
            "run",
            {
                **raw,
                "model": _build(ModelSpec, "model", model, ignored),
                "data": _build(DataSpec, "data", raw.pop("data"), ignored),
                "trainer": _build(TrainerSpec, "trainer", raw.pop("trainer", None), ignored),
                "selection": _build(SelectionSpec, "selection", selection, ignored),
                "logger": _build(LoggerSpec, "logger", raw.pop("logger", None), ignored),
                "paths": _build(PathsSpec, "paths", raw.pop("paths", None), ignored),
                "config": cfg,
            },
            ignored,
        )
        return dataclasses.replace(spec, ignored=tuple(ignored or ()))

    def with_params(self, params: dict[str, Any], epochs: int) -> RunSpec:
        """This run with ``params`` and ``epochs`` as what ran (no grid, no epoch selection)."""
        return dataclasses.replace(
            self,
            model=dataclasses.replace(self.model, params=dict(params)),
            trainer=dataclasses.replace(self.trainer, max_epochs=int(epochs)),
        )
