"""Config composition: ``configs/train.yaml`` + one YAML per group + dot-list overrides.

``group=name`` picks ``configs/<group>/<name>.yaml``; ``a.b=value`` overrides an existing key
(unknown keys fail listing the valid ones); ``+a.b=value`` adds a new key. An
``experiment=name`` file may pick groups in its own ``defaults`` and override any key; the
command line wins over it. Everything is validated before any data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("data", "model", "trainer", "logger")


class ConfigError(ValueError):
    """A bad config name, key or override."""


def available(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Names of the configs of one group (``configs/<group>/*.yaml``)."""
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
    if experiment is not None:
        for dotted in _leaf_keys(experiment):
            _check_key(cfg, dotted)
        cfg = OmegaConf.merge(cfg, experiment)
    for item in sets:
        _check_key(cfg, item.split("=", 1)[0])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(sets), OmegaConf.from_dotlist(adds))
    assert isinstance(cfg, DictConfig)
    cfg.choices = choices
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:  # noqa: BLE001 - omegaconf raises several types
        raise ConfigError(f"cannot resolve config interpolation: {err}") from None
    validate(cfg)
    return cfg


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
    if cfg.data.protocol not in ("val", "test"):
        raise ConfigError(f"data.protocol must be 'val' or 'test', got {cfg.data.protocol!r}")
    if cfg.data.preprocess not in ("none", "l2", "minmax"):
        raise ConfigError(
            f"data.preprocess must be none, l2 or minmax, got {cfg.data.preprocess!r}"
        )
    if int(cfg.trainer.max_epochs) < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1, got {cfg.trainer.max_epochs}")
    search = cfg.model.get("search")
    if search is not None:
        if search.get("metric", "zsl_t1") not in ("zsl_t1", "gzsl_h", "gzsl_h_cal"):
            raise ConfigError("model.search.metric must be zsl_t1, gzsl_h or gzsl_h_cal")
        for key, values in (search.get("grid") or {}).items():
            if key not in cfg.model.params:
                raise ConfigError(
                    f"model.search.grid.{key} is not a parameter of {cfg.model.name}; "
                    f"parameters: {', '.join(cfg.model.params)}"
                )
            if not isinstance(values, ListConfig) or len(values) == 0:
                raise ConfigError(f"model.search.grid.{key} must be a non-empty list")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
