"""Checks of a composed run config that need no data: names, enums, ranges, value types
and the model's constructor parameters. The CLI runs them before any data is read; the
engine's builders turn the model's and Lightning's own checks into :class:`ConfigError` too.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from zsl.errors import ConfigError
from zsl.run.spec import TRANSFER_RULES, ModelSpec, RunSpec, check_folds

__all__ = [
    "BOOL_OR_WORD_PARAMS",
    "ConfigError",
    "fix_grid_axes",
    "run_spec",
    "to_container",
    "type_problem",
    "validate",
]

#: the leading constructor arguments of every model, read from the data (never in params)
SHAPE_ARGS = ("self", "feature_dim", "n_attributes", "n_classes")
_MISSING = object()


#: model parameters that take ``true``/``false`` or a word (``unit_norm_output``: auto,
#: signed): their values are checked by :func:`zsl.models.hparams.check_common_hparams`
#: instead of against the type of the config's value
BOOL_OR_WORD_PARAMS = frozenset({"unit_norm_output"})


def type_problem(default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace ``default`` (``None``: it can). Integers pass for floats;
    nothing is checked against a ``null`` default or a string one (the caller converts)."""
    if default is None or value is None or isinstance(default, str):
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, ListConfig | list):
        ok = isinstance(value, ListConfig | list)
        expected = "a list [a,b,...]"
    elif isinstance(default, DictConfig | dict):
        ok = isinstance(value, DictConfig | dict)
        expected = "a mapping {k: v}"
    else:
        return None
    return None if ok else f"expected {expected} (the default is {_show(default)}), got {value!r}"


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        return str(OmegaConf.to_container(value))
    return repr(value)


def run_spec(cfg: DictConfig, check: bool = True, strict: bool = True) -> RunSpec:
    """The typed spec of a composed run config (:meth:`RunSpec.parse`), validated once
    (:func:`validate`) unless ``check`` is False; ``strict=False`` for a saved run's config
    (keys no part of a run reads are left out, listed in ``spec.ignored``)."""
    spec = RunSpec.parse(cfg, strict)
    if check:
        validate(spec)
    return spec


def validate(spec: RunSpec) -> None:
    """Semantic checks that need no data: names, enums and numeric ranges."""
    from zsl.models import MODELS

    model, data = spec.model, spec.data
    if model.name not in MODELS:
        raise ConfigError(f"unknown model {model.name!r}; available: {', '.join(sorted(MODELS))}")
    if data.protocol not in ("val", "test"):
        raise ConfigError(f"data.protocol must be 'val' or 'test', got {data.protocol!r}")
    if data.preprocess not in ("none", "l2", "minmax"):
        raise ConfigError(f"data.preprocess must be none, l2 or minmax, got {data.preprocess!r}")
    _check_synthetic(data.synthetic)
    if not 0.0 < float(data.val_seen_fraction) < 1.0:
        raise ConfigError(f"data.val_seen_fraction must be in (0, 1), got {data.val_seen_fraction}")
    for key, value in (("seed", spec.seed), ("data.split_seed", data.split_seed)):
        if isinstance(value, int) and not 0 <= value < 2**32:
            raise ConfigError(f"{key} must be in [0, 2^32) (a random seed), got {value}")
    if int(spec.trainer.max_epochs) < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1, got {spec.trainer.max_epochs}")
    _check_param_values(model)
    _check_search(model)
    # last: these import the model's class and Lightning (seconds), the checks above do not
    _check_model_params(model)
    accelerator = spec.trainer.accelerator
    if isinstance(accelerator, str):
        from pytorch_lightning.accelerators import AcceleratorRegistry

        names = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        if accelerator not in names:
            raise ConfigError(
                f"trainer.accelerator {accelerator!r} is unknown; available: {', '.join(names)}"
            )


def _check_search(model: ModelSpec) -> None:
    """``model.search``: metric, transfer rule, patience, validation start and the grid's keys
    and values."""
    search = model.search
    if search.metric not in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
        raise ConfigError("model.search.metric must be zsl_t1, gzsl_h or gzsl_h_cal")
    if search.transfer not in TRANSFER_RULES:
        raise ConfigError(
            f"model.search.transfer must be 'epochs' or 'steps', got {search.transfer!r}"
        )
    patience = search.patience
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ConfigError(
            f"model.search.patience must be an integer >= 1 or null, got {patience!r}"
        )
    start = search.validate_from
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
        raise ConfigError(f"model.search.validate_from must be a number in [0, 1), got {start!r}")
    check_folds(search.folds)
    for key, values in search.grid.items():
        default = _lookup(model.params, key)
        if default is _MISSING:
            raise ConfigError(
                f"model.search.grid.{key} is not a parameter of {model.name}; "
                f"parameters: {', '.join(model.params)}"
            )
        if not isinstance(values, list) or len(values) == 0:
            raise ConfigError(f"model.search.grid.{key} must be a non-empty list")
        if isinstance(default, int) and not isinstance(default, bool):
            default = float(default)  # a number: an integer default takes float grid values
        if key.rpartition(".")[2] in BOOL_OR_WORD_PARAMS:
            continue  # true, false or a word: _check_param_values checks each
        for value in values:
            problem = type_problem(default, value)
            if problem:
                raise ConfigError(f"model.search.grid.{key}: {problem}")


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    """The value of ``a.b`` in a nested parameter dict (``_MISSING`` when it has none)."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _check_synthetic(spec: dict[str, Any] | None) -> None:
    """``data.synthetic``, the spec of the built-in benchmark, must describe a valid one."""
    if spec is None:
        return
    from zsl.data.synthetic import SyntheticSpec

    try:
        SyntheticSpec(**spec).validate()
    except TypeError as err:  # unknown key, or a value of the wrong type
        text = str(err).replace("SyntheticSpec.__init__() ", "")
        raise ConfigError(f"data.synthetic: {text}") from None
    except ValueError as err:
        raise ConfigError(f"data.synthetic: {err}") from None


def _check_param_values(model: ModelSpec) -> None:
    """Every value a run could use, ``model.params`` and each grid value alike, must be a
    valid one: learning rates positive, decays and margins >= 0, no NaN or infinity in any
    number (a grid covering a key does not excuse a bad value typed for it)."""
    from zsl.models import MODELS
    from zsl.models.hparams import check_common_hparams

    candidates: list[tuple[str, dict[str, Any]]] = [("model.params", dict(model.params))]
    for key, grid_values in model.search.grid.items():
        if isinstance(grid_values, list):
            for value in grid_values:
                candidates.append((f"model.search.grid.{key}", {key.split(".")[-1]: value}))
    for where, values in candidates:
        for name, number in _numbers(values):
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{where}: {name} must be a finite number, got {number}")
        try:
            named = {k.split(".")[-1]: v for k, v in _numbers(values)}
            for name in BOOL_OR_WORD_PARAMS & values.keys():  # true, false or a word
                named[name] = values[name]
            check_common_hparams(MODELS[model.name].rpartition(".")[2], named)
        except ValueError as err:
            raise ConfigError(f"{where} ({model.name}): {err}") from None


def _numbers(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The (dotted name, value) pairs of the numbers in a nested parameter mapping."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out.extend(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append((f"{prefix}{key}", value))
    return out


def fix_grid_axes(cfg: DictConfig, argv: list[str]) -> list[str]:
    """Apply the rule for a value typed for a parameter the search grid covers: it fixes that
    axis. ``model.params.<key>=v`` on the command line (or a sweeper's override) removes
    ``<key>`` from ``model.search.grid``, so the run uses ``v``; ``model.search.grid={}`` (or
    ``null``) means no grid. Returns one note per fixed axis (the caller prints them) and
    records the fixed keys in ``selection.fixed`` (saved with the config)."""
    search = cfg.model.get("search")
    notes: list[str] = []
    fixed: list[str] = []
    for arg in argv:
        key, sep, text = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith("~"):
            continue
        if key == "model.search.grid" and text.strip() in ("{}", "null", "None"):
            if search is not None and search.get("grid"):
                search.grid = None
                notes.append("model.search.grid={} given: no grid, model.params only")
            continue
        if not key.startswith("model.params.") or search is None or not search.get("grid"):
            continue
        name = key[len("model.params.") :]
        if name in search.grid:
            values = list(OmegaConf.to_container(search.grid[name]) or [])  # type: ignore[arg-type]
            value = OmegaConf.select(cfg.model.params, name)
            with open_dict(search.grid):
                del search.grid[name]
            fixed.append(name)
            notes.append(
                f"model.params.{name}={value} given: it fixes that grid axis "
                f"(grid values {values} not searched)"
            )
    if fixed:
        with open_dict(cfg):
            cfg.selection.fixed = sorted({*(cfg.selection.get("fixed") or []), *fixed})
    return notes


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The named constructor arguments of ``cls``: its own, and where its ``__init__`` forwards
    ``**kwargs`` to the parent class, the parent's (along the MRO); None when a ``**kwargs``
    reaches no class that names its arguments."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        for name, p in sig.parameters.items():
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return found
    return None


def _check_model_params(model: ModelSpec) -> None:
    """``model.params`` must be constructor arguments of the model (listed when not), and a
    nested option group (e.g. a generator's ``second_stage``) must hold only its options."""
    cls = model.cls
    parameters = constructor_parameters(cls)
    if parameters is None:
        return
    accepted = [name for name in parameters if name not in SHAPE_ARGS]
    params = model.params
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ConfigError(
            f"model.params.{unknown[0]} is not a parameter of {model.name} ({cls.__name__}); "
            f"parameters: {', '.join(accepted)}"
        )
    missing = [
        name
        for name in accepted
        if parameters[name].default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise ConfigError(f"model.params.{missing[0]} is required by {model.name}")
    for group, options in cls.option_groups().items():
        given = params.get(group)
        if not isinstance(given, dict) or group not in accepted:
            continue
        unknown = [key for key in given if key not in options]
        if unknown:
            raise ConfigError(
                f"model.params.{group}.{unknown[0]} is not a {group.replace('_', '-')} option "
                f"of {model.name}; options: {', '.join(options)}"
            )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
