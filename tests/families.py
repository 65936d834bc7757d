"""Model families found through the registry, for tests that must cover every member.

Every model is found through :data:`zsl.models.MODELS` (the ``name`` and ``_target_`` of every
``zsl/conf/model/*.yaml``) and classified by its class:

- *generative*: a subclass of :class:`zsl.models.generative.base.GenerativeZSL`;
- *scorer*: a closed-form model that scores without training data: its inputs are replaced
  (``feature_preparation``) and its fit learns nothing from the benchmark (CLIP);
- *classical*: every other model.

A new model (a module and a config) is therefore tested by every contract of its family without
editing a test. Tests that check one model's own math select it by a capability (a constructor
parameter, a class attribute, a module function) rather than by its name.

``tiny_params(name)`` gives small networks for fast CPU tests, derived from the constructor's
parameter names, never from the model's name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zsl.conf import CONFIG_DIR

MODEL_CONFIG_DIR: Path = CONFIG_DIR / "model"

GENERATIVE, SCORER, CLASSICAL = "generative", "scorer", "classical"

#: second-stage settings of the tiny tests: a short classifier on few synthetic examples
TINY_SECOND_STAGE: dict[str, Any] = dict(n_synth=20, cls_epochs=10, cls_lr=0.1, cls_batch_size=64)
#: tiny values by constructor parameter name (applied where a model takes the parameter)
TINY_BY_PARAM: dict[str, Any] = {
    "regressor_hidden": 16,
    "decoder_hidden": 16,
    "feature_hidden": (32, 32),
    "attribute_hidden": (16, 16),
    "latent_dim": 4,
    "lr": 3e-3,
    "decoder_lr": 3e-3,
    "adv_weight": 1.0,
    "pretrain_epochs": 20,
    "pretrain_lr": 0.1,
    "warmup_scale": 1.0,
    "n_seen_per_class": 10,
}
#: the width of every other hidden layer (a parameter named ``hidden`` or ``*_hidden``)
TINY_HIDDEN = 32


# ----------------------------------------------------------------------------- registry


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    from zsl.models import MODELS

    return sorted(MODELS)


def model_class(name: str) -> type:
    from zsl.models import get_model_class

    return get_model_class(name)


def model_module(name: str) -> ModuleType:
    """The module that defines the model's class."""
    return importlib.import_module(model_class(name).__module__)


def family(name: str) -> str:
    """``generative``, ``scorer`` or ``classical`` (see the module docstring)."""
    from zsl.models.base import ZSLModule
    from zsl.models.generative.base import GenerativeZSL

    cls = model_class(name)
    if issubclass(cls, GenerativeZSL):
        return GENERATIVE
    if cls.closed_form and cls.feature_preparation != ZSLModule.feature_preparation:
        return SCORER
    return CLASSICAL


def _members(kind: str) -> list[str]:
    return [n for n in model_names() if family(n) == kind]


def generative_models() -> list[str]:
    """Names of every registered feature-generating model, sorted."""
    return _members(GENERATIVE)


def scorer_models() -> list[str]:
    """Names of every registered training-free scorer (CLIP), sorted."""
    return _members(SCORER)


def classical_models() -> list[str]:
    """Names of every other registered model, sorted."""
    return _members(CLASSICAL)


# ----------------------------------------------------------------------------- configs


@functools.cache
def _config_files() -> dict[str, tuple[str, ...]]:
    """``model name -> config file stems naming it`` (the file named like the model first)."""
    found: dict[str, list[str]] = {}
    for path in sorted(MODEL_CONFIG_DIR.glob("*.yaml")):
        name = str(OmegaConf.load(path).get("name"))
        found.setdefault(name, []).append(path.stem)
    return {n: tuple(sorted(stems, key=lambda s: (s != n, s))) for n, stems in found.items()}


def config_stems(name: str) -> tuple[str, ...]:
    """Stems of every config file naming model ``name`` (its default config first)."""
    return _config_files().get(name, ())


def paper_config_stems(name: str) -> tuple[str, ...]:
    """The ``_paper`` configs of model ``name`` (found by the config files naming it)."""
    return tuple(s for s in config_stems(name) if s.endswith("_paper"))


def model_config(name: str, stem: str | None = None) -> DictConfig:
    """The model's config file: its default one (``<name>.yaml``, else the first file naming
    it), or the file ``<stem>.yaml``, which must name the model."""
    stems = config_stems(name)
    if not stems:
        raise KeyError(f"no config names model {name!r}")
    stem = stems[0] if stem is None else stem
    if stem not in stems:
        raise KeyError(f"{stem}.yaml does not name model {name!r} (those that do: {stems})")
    cfg = OmegaConf.load(MODEL_CONFIG_DIR / f"{stem}.yaml")
    assert isinstance(cfg, DictConfig)
    return cfg


def config_params(name: str, stem: str | None = None) -> dict[str, Any]:
    """The constructor arguments of a model config (``params``), as plain containers."""
    params = OmegaConf.to_container(model_config(name, stem).get("params") or {}, resolve=True)
    assert isinstance(params, dict)
    return params


def search_grid(name: str, stem: str | None = None) -> dict[str, list[Any]]:
    """The config's ``search.grid`` (dotted keys name second-stage options)."""
    grid = OmegaConf.select(model_config(name, stem), "search.grid")
    if grid is None:
        return {}
    out = OmegaConf.to_container(grid, resolve=True)
    assert isinstance(out, dict)
    return out


def family_configs(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(model name, config stem)`` of every config of the given models."""
    return [(n, s) for n in names for s in config_stems(n)]


# ----------------------------------------------------------------------------- capabilities


def constructor_params(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters a model's constructor takes, following ``**kwargs`` that are
    passed on to a base class (as tf-VAEGAN passes f-VAEGAN's)."""
    out: dict[str, inspect.Parameter] = {}
    for cls in model_class(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for key, param in params.items():
            if key != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                out.setdefault(key, param)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def takes(name: str, *params: str) -> bool:
    """Whether the model's constructor takes every one of ``params``."""
    found = constructor_params(name)
    return all(p in found for p in params)


def with_params(names: Iterable[str], *params: str) -> list[str]:
    """The models among ``names`` whose constructor takes every one of ``params``."""
    return [n for n in names if takes(n, *params)]


def with_class(names: Iterable[str], check: Callable[[type], bool]) -> list[str]:
    """The models among ``names`` whose class passes ``check``."""
    return [n for n in names if check(model_class(n))]


def with_module_attr(names: Iterable[str], *attrs: str) -> list[str]:
    """The models among ``names`` whose defining module has every one of ``attrs``."""
    return [n for n in names if all(hasattr(model_module(n), a) for a in attrs)]


# ----------------------------------------------------------------------------- tiny models


def _tiny_value(key: str, default: Any, width: int) -> Any:
    scale = width / TINY_HIDDEN
    if key in TINY_BY_PARAM:
        value = TINY_BY_PARAM[key]
        if key.endswith("_hidden") and scale != 1:  # the narrower networks grow in proportion
            return (
                tuple(int(v * scale) for v in value)
                if isinstance(value, tuple)
                else int(value * scale)
            )
        return value
    if key == "hidden" or key.endswith("_hidden"):
        if isinstance(default, (tuple, list)):
            return tuple(width for _ in default)
        return width
    return inspect.Parameter.empty


def tiny_params(name: str, width: int = TINY_HIDDEN, **overrides: Any) -> dict[str, Any]:
    """Constructor arguments of a small version of model ``name``: the class defaults (the
    paper's settings) with every network shrunk (hidden layers of ``width`` units, the
    narrower ones in proportion) and a short second stage. ``overrides`` win; second-stage
    options among them go into ``second_stage``."""
    params: dict[str, Any] = {}
    found = constructor_params(name)
    for key, param in found.items():
        value = _tiny_value(key, param.default, width)
        if value is not inspect.Parameter.empty:
            params[key] = value
    if "second_stage" in found:
        from zsl.models.generative.second_stage import SecondStage

        stage = dict(TINY_SECOND_STAGE)
        for key in list(overrides):
            if key in SecondStage.field_names():
                stage[key] = overrides.pop(key)
        stage.update(overrides.pop("second_stage", None) or {})
        params["second_stage"] = stage
    params.update(overrides)
    return params


def build_model(name: str, source: Any, params: Mapping[str, Any]) -> Any:
    """Model ``name`` built for the class space of datamodule ``source`` and bound to it."""
    space = source.class_space
    model = model_class(name)(space.feature_dim, space.n_attributes, space.n_classes, **params)
    model.bind(source)
    return model


def build_tiny(name: str, source: Any, **overrides: Any) -> Any:
    """:func:`tiny_params` of model ``name``, built and bound to datamodule ``source``."""
    return build_model(name, source, tiny_params(name, **overrides))
