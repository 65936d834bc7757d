"""Compose the run config the way ``train.py`` does, with one clear line per bad input.

Hydra composes ``zsl/conf/train.yaml`` with its groups, an optional ``experiment=`` and the
command-line overrides. Before a single run starts, :func:`compose` composes the same config
through Hydra's compose API and turns every problem into a :class:`ConfigError` that says
what and where: an override without ``=``, an unknown group option, an unknown key (listing
the valid keys there), a value of the wrong type, a broken interpolation, and the semantic
checks of :func:`zsl.run.config.validate` (:func:`compose_spec`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from zsl.conf import GROUPS, available
from zsl.errors import ConfigError
from zsl.run.config import BOOL_OR_WORD_PARAMS, run_spec, to_container, type_problem
from zsl.run.spec import DataSpec, RunSpec

CONFIG_MODULE = "zsl.conf"
#: handed to Lightning as they are; it accepts several types for them (devices=2/auto/[0, 1])
UNTYPED_KEYS = frozenset(
    {"trainer.devices", "trainer.precision", "trainer.deterministic", "trainer.strategy"}
)


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def _check_key(cfg: DictConfig, dotted: str) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node.keys():
            where = ".".join(parts[:i]) or "<top level>"
            valid = sorted(map(str, node.keys())) if isinstance(node, DictConfig) else []
            raise ConfigError(
                f"unknown config key {dotted!r}: {where} has no {part!r}; valid keys there: "
                f"{', '.join(map(str, valid))} (use +{dotted}=... to add a new key)"
            )
        if i < len(parts) - 1:
            node = node[part]


def _parse(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Group choices (``data=cub``, ``experiment=...``) and value overrides ``(key, text)``."""
    groups: list[str] = []
    values: list[tuple[str, str]] = []
    parser = OverridesParser.create()
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"bad override {arg!r}: expected key=value (e.g. model=ale)")
        try:
            override = parser.parse_override(arg)
        except HydraException as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"bad override {arg!r}: {first}") from None
        key = override.key_or_group
        if key in (*GROUPS, "experiment") or key.startswith("hydra"):
            value = None if override.is_sweep_override() else override.value()
            if key in (*GROUPS, "experiment") and value is not None:
                choice = str(value)
                if choice not in available(key):
                    raise ConfigError(
                        f"unknown {key} config {choice!r}; available: {', '.join(available(key))}"
                    )
            groups.append(arg)
        else:  # keep the +/++/~ prefix: an addition is not checked against existing keys
            values.append((arg, override.get_key_element()))
    return groups, values


def compose(argv: list[str] | None = None) -> DictConfig:
    """The resolved run config of ``python train.py <argv>`` (a single run): every key,
    type, group option, interpolation and data file checked; the semantic checks are the run
    spec's (:func:`compose_spec`)."""
    groups, values = _parse(list(argv or []))
    try:
        defaults = _compose(groups)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    for _, key in values:
        if not key.startswith("+") and not key.startswith("~"):
            _check_key(defaults, key)
    try:
        cfg = _compose([*groups, *(arg for arg, _ in values)])
    except HydraException as err:
        raise ConfigError(" ".join(str(err).split())) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        OmegaConf.resolve(cfg)
    except Exception as err:  # noqa: BLE001 - omegaconf raises several types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = getattr(err, "full_key", None)
        raise ConfigError(
            f"cannot resolve config interpolation{f' in {where}' if where else ''}: {first}"
        ) from None
    if missing:
        raise ConfigError(
            f"{missing[0]} has no value ('???' in the config): set it, e.g. {missing[0]}=..."
        )
    for _, key in values:
        _check_type(cfg, key.lstrip("+"), OmegaConf.select(defaults, key.lstrip("+"), default=None))
    check_data_files(cfg)
    return cfg


def compose_spec(argv: list[str] | None = None) -> RunSpec:
    """The typed, validated run spec of ``python train.py <argv>`` (:func:`compose`, then
    :func:`zsl.run.config.run_spec`)."""
    return run_spec(compose(argv))


def check_data_files(cfg: DictConfig) -> None:
    """A feature file missing from an existing xlsa17 dataset folder is named, with the
    feature files that are there (:class:`zsl.data.errors.DataError`), before the model's
    checks import torch and Lightning: the answer comes at once."""
    known = {f.name for f in dataclasses.fields(DataSpec)}  # added keys are the spec's to refuse
    data = DataSpec(**{k: v for k, v in to_container(cfg.data).items() if k in known})
    if data.synthetic is not None or data.root is None or data.format != "xlsa17":
        return
    if (Path(data.root) / data.name).is_dir():
        from zsl.data.formats.xlsa17 import check_feature_file

        check_feature_file(data.root, data.name, data.feature_file)


def _check_type(cfg: DictConfig, dotted: str, default: Any) -> None:
    """An override must have the type of the value it replaces (``a.b=abc`` for a number
    fails here, not deep inside training); numbers given for a string become strings."""
    if dotted in UNTYPED_KEYS:
        return
    if dotted.startswith("model.params.") and dotted.rpartition(".")[2] in BOOL_OR_WORD_PARAMS:
        return  # true, false or a word: the model's parameter checks say which
    value = OmegaConf.select(cfg, dotted, default=None)
    if isinstance(default, str) and isinstance(value, int | float) and not isinstance(value, bool):
        OmegaConf.set_struct(cfg, False)
        OmegaConf.update(cfg, dotted, str(value))  # data.name=2017 means the string "2017"
        return
    problem = type_problem(default, value)
    if problem:
        raise ConfigError(f"{dotted}: {problem}")
