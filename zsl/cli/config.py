"""Config composition: ``zsl/conf/train.yaml`` + one YAML per group + dot-list overrides.

``group=name`` picks ``zsl/conf/<group>/<name>.yaml``; ``a.b=value`` overrides an existing key
(unknown keys fail listing the valid ones); ``+a.b=value`` adds a new key. An
``experiment=name`` file may pick groups in its own ``defaults`` and override any key; the
command line wins over it. Everything is validated before any data is loaded: key names,
value types (an override must have the type of the value it replaces), names, enums, ranges and
the model's constructor parameters.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("data", "model", "trainer", "logger")
#: handed to Lightning as they are; it accepts several types for them (devices=2/auto/[0, 1])
UNTYPED_KEYS = frozenset(
    {"trainer.devices", "trainer.precision", "trainer.deterministic", "trainer.strategy"}
)
#: the leading constructor arguments of every model, read from the data (never in params)
SHAPE_ARGS = ("self", "feature_dim", "n_attributes", "n_classes")


class ConfigError(ValueError):
    """A bad config name, key or override."""


def available(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs of one group (``zsl/conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _load_group(group: str, name: str, config_dir: Path) -> DictConfig:
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {group} config {name!r}; available: {', '.join(available(group, config_dir))}"
        )
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def _split_overrides(argv: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    groups: dict[str, str] = {}
    sets: list[str] = []
    adds: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"bad override {arg!r}: expected key=value (e.g. model=ale)")
        key, value = arg.split("=", 1)
        if key in (*GROUPS, "experiment"):
            groups[key] = value
        elif key.startswith("+"):
            adds.append(arg[1:])
        else:
            sets.append(arg)
    return groups, sets, adds


def _check_key(cfg: DictConfig, dotted: str) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i]) or "<top level>"
            valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
            raise ConfigError(
                f"unknown config key {dotted!r}: {where} has no {part!r}; valid keys there: "
                f"{', '.join(map(str, valid))} (use +{dotted}=... to add a new key)"
            )
        node = node[part]


def compose(argv: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Compose the run config from ``train.yaml``, groups, an experiment and overrides."""
    argv = list(argv or [])
    groups, sets, adds = _split_overrides(argv)
    base = OmegaConf.load(config_dir / "train.yaml")
    assert isinstance(base, DictConfig)
    choices: dict[str, str] = dict(base.pop("defaults"))
    experiment: DictConfig | None = None
    if groups.get("experiment"):
        experiment = _load_group("experiment", groups["experiment"], config_dir)
        choices.update(dict(experiment.pop("defaults", {})))
        choices["experiment"] = groups["experiment"]
    choices.update({k: v for k, v in groups.items() if k != "experiment"})
    cfg = base
    for group in GROUPS:
        cfg[group] = _load_group(group, choices[group], config_dir)
    defaults = cfg.copy()  # what the overrides replace: their values fix the types
    changed: list[str] = []
    if experiment is not None:
        changed = _leaf_keys(experiment)
        for dotted in changed:
            _check_key(cfg, dotted)
        cfg = OmegaConf.merge(cfg, experiment)
    for item in sets:
        changed.append(item.split("=", 1)[0])
        _check_key(cfg, changed[-1])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(sets), OmegaConf.from_dotlist(adds))
    assert isinstance(cfg, DictConfig)
    cfg.choices = choices
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:  # noqa: BLE001 - omegaconf raises several types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = getattr(err, "full_key", None)
        raise ConfigError(
            f"cannot resolve config interpolation{f' in {where}' if where else ''}: {first}"
        ) from None
    for dotted in dict.fromkeys(changed):
        _check_type(cfg, dotted, OmegaConf.select(defaults, dotted, default=None))
    validate(cfg)
    return cfg


def _type_problem(default: Any, value: Any) -> str | None:
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


def _check_type(cfg: DictConfig, dotted: str, default: Any) -> None:
    """An override must have the type of the value it replaces (``a.b=abc`` for a number
    fails here, not deep inside training); numbers given for a string become strings."""
    if dotted in UNTYPED_KEYS:
        return
    value = OmegaConf.select(cfg, dotted, default=None)
    if isinstance(default, str) and isinstance(value, int | float) and not isinstance(value, bool):
        OmegaConf.update(cfg, dotted, str(value))  # data.name=2017 means the string "2017"
        return
    problem = _type_problem(default, value)
    if problem:
        raise ConfigError(f"{dotted}: {problem}")


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig) and len(value) and key not in ("params", "grid"):
            out.extend(_leaf_keys(value, dotted + "."))
        else:
            out.append(dotted)
    return out


def validate(cfg: DictConfig) -> None:
    """Semantic checks that need no data: names, enums and numeric ranges."""
    from zsl.models import MODELS

    if cfg.model.name not in MODELS:
        raise ConfigError(
            f"unknown model {cfg.model.name!r}; available: {', '.join(sorted(MODELS))}"
        )
    _check_model_params(cfg.model)
    if cfg.data.protocol not in ("val", "test"):
        raise ConfigError(f"data.protocol must be 'val' or 'test', got {cfg.data.protocol!r}")
    if cfg.data.preprocess not in ("none", "l2", "minmax"):
        raise ConfigError(
            f"data.preprocess must be none, l2 or minmax, got {cfg.data.preprocess!r}"
        )
    fraction = cfg.data.get("val_seen_fraction")
    if fraction is not None and not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"data.val_seen_fraction must be in (0, 1), got {fraction}")
    if int(cfg.trainer.max_epochs) < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}")
    accelerator = cfg.trainer.get("accelerator")
    if isinstance(accelerator, str):
        from pytorch_lightning.accelerators import AcceleratorRegistry

        names = sorted({"auto", "gpu", *AcceleratorRegistry.available_accelerators()})
        if accelerator not in names:
            raise ConfigError(
                f"trainer.accelerator {accelerator!r} is unknown; available: {', '.join(names)}"
            )
    search = cfg.model.get("search")
    if search is not None:
        if search.get("metric", "zsl_t1") not in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
            raise ConfigError("model.search.metric must be zsl_t1, gzsl_h or gzsl_h_cal")
        from zsl.run.selection import TRANSFER_RULES

        if search.get("transfer", "epochs") not in TRANSFER_RULES:
            raise ConfigError(
                f"model.search.transfer must be 'epochs' or 'steps', got {search.transfer!r}"
            )
        for key, values in (search.get("grid") or {}).items():
            if key not in cfg.model.params:
                raise ConfigError(
                    f"model.search.grid.{key} is not a parameter of {cfg.model.name}; "
                    f"parameters: {', '.join(cfg.model.params)}"
                )
            if not isinstance(values, ListConfig) or len(values) == 0:
                raise ConfigError(f"model.search.grid.{key} must be a non-empty list")
            for value in values:
                problem = _type_problem(cfg.model.params[key], value)
                if problem:
                    raise ConfigError(f"model.search.grid.{key}: {problem}")


def _check_model_params(model: DictConfig) -> None:
    """``model.params`` must be constructor arguments of the model (listed when not)."""
    from zsl.models import get_model_class

    cls = get_model_class(str(model.name))
    sig = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        name
        for name, p in sig.parameters.items()
        if name not in SHAPE_ARGS and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
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
        if sig.parameters[name].default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise ConfigError(f"model.params.{missing[0]} is required by {model.name}")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
