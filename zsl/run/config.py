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

__all__ = ["ConfigError", "fix_grid_axes", "to_container", "type_problem", "validate"]

#: the leading constructor arguments of every model, read from the data (never in params)
SHAPE_ARGS = ("self", "feature_dim", "n_attributes", "n_classes")
_MISSING = object()


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


def validate(cfg: DictConfig) -> None:
    """Semantic checks that need no data: names, enums and numeric ranges."""
    from zsl.models import MODELS

    if cfg.model.name not in MODELS:
        raise ConfigError(
            f"unknown model {cfg.model.name!r}; available: {', '.join(sorted(MODELS))}"
        )
    if cfg.data.protocol not in ("val", "test"):
        raise ConfigError(f"data.protocol must be 'val' or 'test', got {cfg.data.protocol!r}")
    if cfg.data.preprocess not in ("none", "l2", "minmax"):
        raise ConfigError(
            f"data.preprocess must be none, l2 or minmax, got {cfg.data.preprocess!r}"
        )
    _check_synthetic(cfg.data)
    fraction = cfg.data.get("val_seen_fraction")
    if fraction is not None and not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"data.val_seen_fraction must be in (0, 1), got {fraction}")
    for key in ("seed", "data.split_seed"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int) and not 0 <= value < 2**32:
            raise ConfigError(f"{key} must be in [0, 2^32) (a random seed), got {value}")
    if int(cfg.trainer.max_epochs) < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}")
    _check_param_values(cfg.model)
    _check_search(cfg)
    # last: these import the model's class and Lightning (seconds), the checks above do not
    _check_model_params(cfg.model)
    accelerator = cfg.trainer.get("accelerator")
    if isinstance(accelerator, str):
        from pytorch_lightning.accelerators import AcceleratorRegistry

        names = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        if accelerator not in names:
            raise ConfigError(
                f"trainer.accelerator {accelerator!r} is unknown; available: {', '.join(names)}"
            )


def _check_search(cfg: DictConfig) -> None:
    """``model.search``: metric, transfer rule, patience and the grid's keys and values."""
    search = cfg.model.get("search")
    if search is not None:
        if search.get("metric", "zsl_t1") not in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
            raise ConfigError("model.search.metric must be zsl_t1, gzsl_h or gzsl_h_cal")
        from zsl.run.selection import TRANSFER_RULES  # noqa: PLC0415

        if search.get("transfer", "epochs") not in TRANSFER_RULES:
            raise ConfigError(
                f"model.search.transfer must be 'epochs' or 'steps', got {search.transfer!r}"
            )
        patience = search.get("patience")
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ConfigError(
                f"model.search.patience must be an integer >= 1 or null, got {patience!r}"
            )
        for key, values in (search.get("grid") or {}).items():
            default = OmegaConf.select(cfg.model.params, str(key), default=_MISSING)
            if default is _MISSING:
                raise ConfigError(
                    f"model.search.grid.{key} is not a parameter of {cfg.model.name}; "
                    f"parameters: {', '.join(cfg.model.params)}"
                )
            if not isinstance(values, ListConfig) or len(values) == 0:
                raise ConfigError(f"model.search.grid.{key} must be a non-empty list")
            if isinstance(default, int) and not isinstance(default, bool):
                default = float(default)  # a number: an integer default takes float grid values
            for value in values:
                problem = type_problem(default, value)
                if problem:
                    raise ConfigError(f"model.search.grid.{key}: {problem}")


def _check_synthetic(data: DictConfig) -> None:
    """``data.synthetic``, the spec of the built-in benchmark, must describe a valid one."""
    spec = data.get("synthetic")
    if spec is None:
        return
    from zsl.data.synthetic import SyntheticSpec

    try:
        SyntheticSpec(**to_container(spec)).validate()
    except TypeError as err:  # unknown key, or a value of the wrong type
        text = str(err).replace("SyntheticSpec.__init__() ", "")
        raise ConfigError(f"data.synthetic: {text}") from None
    except ValueError as err:
        raise ConfigError(f"data.synthetic: {err}") from None


def _check_param_values(model: DictConfig) -> None:
    """Every value a run could use, ``model.params`` and each grid value alike, must be a
    valid one: learning rates positive, decays and margins >= 0, no NaN or infinity in any
    number (a grid covering a key does not excuse a bad value typed for it)."""
    from zsl.models import MODELS
    from zsl.models.hparams import check_common_hparams

    params: Any = OmegaConf.to_container(model.get("params") or {}, resolve=True)
    candidates: list[tuple[str, dict[str, Any]]] = [("model.params", dict(params))]
    search = model.get("search")
    grid = (search.get("grid") or {}) if search is not None else {}
    for key, values in grid.items():
        if isinstance(values, ListConfig):
            for value in values:
                candidates.append((f"model.search.grid.{key}", {str(key).split(".")[-1]: value}))
    for where, values in candidates:
        for name, value in _numbers(values):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: {name} must be a finite number, got {value}")
        try:
            named = {k.split(".")[-1]: v for k, v in _numbers(values)}
            check_common_hparams(MODELS[str(model.name)].rpartition(".")[2], named)
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


def _check_model_params(model: DictConfig) -> None:
    """``model.params`` must be constructor arguments of the model (listed when not)."""
    from zsl.models import get_model_class

    cls = get_model_class(str(model.name))
    parameters = constructor_parameters(cls)
    if parameters is None:
        return
    accepted = [name for name in parameters if name not in SHAPE_ARGS]
    params = model.get("params") or {}
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
    stage = params.get("second_stage")
    if stage is not None and "second_stage" in accepted:
        from zsl.models.generative.second_stage import SecondStage

        options = SecondStage.field_names()
        unknown = [key for key in stage if key not in options]
        if unknown:
            raise ConfigError(
                f"model.params.second_stage.{unknown[0]} is not a second-stage option of "
                f"{model.name}; options: {', '.join(options)}"
            )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
