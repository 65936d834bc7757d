"""Config composition: groups, dot-list overrides, interpolation and validation."""

from __future__ import annotations

import re

import pytest
from omegaconf import DictConfig, OmegaConf

from zsl.cli.compose import compose, compose_spec
from zsl.conf import CONFIG_DIR, available
from zsl.errors import ConfigError
from zsl.run.selection import transfer_epochs


def _selected(cfg: DictConfig, group: str, name: str) -> bool:
    """Whether ``cfg[group]`` is ``<group>/<name>.yaml``: every plain (non-interpolated) value
    of that file is in the composed group (the composed config records no choices)."""
    shipped = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"))
    assert isinstance(shipped, dict)
    shipped.pop("defaults", None)

    def same(shipped: object, composed: object) -> bool:
        if isinstance(shipped, dict):
            return isinstance(composed, dict) and all(
                k in composed and same(v, composed[k]) for k, v in shipped.items()
            )
        if isinstance(shipped, str) and ("${" in shipped or shipped == "???"):
            return True  # interpolations are resolved, the base's name is filled in
        return bool(composed == shipped)

    return same(shipped, OmegaConf.to_container(cfg[group], resolve=False))


def test_compose_defaults() -> None:
    cfg = compose()
    expected = {"data": "synthetic", "model": "ale", "trainer": "cpu", "logger": "wandb"}
    for group, name in expected.items():
        assert _selected(cfg, group, name), group
    assert cfg.data.name == "SYNTHETIC" and cfg.model.name == "ale"
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.name == "wandb"
    assert cfg.data.root is None  # the built-in data: generated in a temporary folder
    assert cfg.seed == 0 and cfg.output_dir is None
    # the composed config is fully resolved: no interpolation left anywhere
    assert "${" not in OmegaConf.to_yaml(cfg)


def test_group_selection() -> None:
    cfg = compose(["data=cub", "model=ale", "logger=csv"])
    assert cfg.data.name == "CUB"
    assert cfg.data.root == "data/xlsa17"
    assert cfg.data.synthetic is None
    assert cfg.model.name == "ale" and cfg.logger.name == "csv"
    assert _selected(cfg, "data", "cub") and _selected(cfg, "logger", "csv")
    assert not _selected(cfg, "data", "synthetic") and not _selected(cfg, "logger", "wandb")


def test_every_config_in_every_group_composes() -> None:
    for group in ("data", "model", "trainer", "logger"):
        names = available(group)
        assert names, f"no configs in {CONFIG_DIR / group}"
        for name in names:
            if (group, name) == ("data", "xlsa17"):
                continue  # the base of the xlsa17 benchmarks: see the next test
            assert _selected(compose([f"{group}={name}"]), group, name), (group, name)
    assert "xlsa17" in available("data")


def test_xlsa17_base_composes_with_a_dataset_name() -> None:
    # what zsl/conf/data/xlsa17.yaml documents for a dataset of one's own in that layout
    with pytest.raises(ConfigError, match="data.name"):
        compose_spec(["data=xlsa17"])  # the base alone has no dataset name (???)
    cfg = compose(["data=xlsa17", "data.name=MINE", "data.root=/datasets"])
    assert _selected(cfg, "data", "xlsa17")
    assert cfg.data.name == "MINE" and cfg.data.root == "/datasets"
    assert _selected(compose(["data=cub"]), "data", "xlsa17")  # cub inherits the base


def test_dotlist_override_changes_value() -> None:
    cfg = compose(["model.params.lr=0.05", "data.batch_size=7", "seed=3", "data.protocol=val"])
    assert cfg.model.params.lr == 0.05
    assert cfg.data.batch_size == 7 and cfg.seed == 3 and cfg.data.protocol == "val"
    shipped = OmegaConf.load(CONFIG_DIR / "model" / "ale.yaml").params.lr
    assert compose().model.params.lr == shipped  # nothing global was changed


def test_override_of_interpolation_source_propagates() -> None:
    cfg = compose(["data=cub", "paths.data_dir=/datasets"])
    assert cfg.data.root == "/datasets/xlsa17"


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        compose_spec(["model.params.lrr=0.1"])
    message = str(info.value)
    assert "'model.params.lrr'" in message
    for valid in ("lr", "margin", "weight_decay"):
        assert valid in message
    assert "+model.params.lrr=" in message  # says how to add a key on purpose


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match="<top level> has no 'sed'.*seed"):
        compose_spec(["sed=1"])


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "model",
        "trainer",
        "logger",
        "experiment",
    ],
)
def test_unknown_group_name_lists_available(group: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_spec([f"{group}=nope"])
    message = str(info.value)
    assert f"unknown {group} config 'nope'" in message
    assert f"available: {', '.join(available(group))}" in message
    if group == "data":
        assert "cub" in message and "synthetic" in message


def test_plus_adds_new_key() -> None:
    cfg = compose(["+new.key=1", "+data.extra=abc"])
    assert cfg.new.key == 1
    assert cfg.data.extra == "abc"
    # a run refuses a key no part of it reads (a typed setting is never silently dropped)
    with pytest.raises(ConfigError, match="data.extra is not a data setting; settings: name"):
        compose_spec(["+data.extra=abc"])
    with pytest.raises(ConfigError, match="new is not a run setting"):
        compose_spec(["+new.key=1"])


def test_added_model_param_must_be_a_constructor_argument() -> None:
    with pytest.raises(ConfigError, match=r"model.params.extra is not a parameter of ale .*margin"):
        compose_spec(["+model.params.extra=abc"])


def test_model_params_reach_the_parent_through_forwarded_kwargs() -> None:
    # tf-VAEGAN names its own arguments and forwards the rest (**kwargs) to f-VAEGAN: both
    # classes' arguments are accepted, anything else is refused with the whole list
    spec = compose_spec(["model=tfvaegan", "model.params.adv_weight=3.0", "model.params.lr=0.01"])
    assert spec.model.params["adv_weight"] == 3.0
    with pytest.raises(
        ConfigError,
        match=r"model.params.extra is not a parameter of tfvaegan .*decoder_hidden.*"
        r"adv_weight",
    ):
        compose_spec(["model=tfvaegan", "+model.params.extra=abc"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs: expected an integer"),
        ("seed=1.5", "seed: expected an integer (the default is 0), got 1.5"),
        ("model.params.lr=fast", "model.params.lr: expected a number (the default is 0.003)"),
        ("selection.grid=[1]", "selection.grid: expected true or false"),
        ("+model.search.grid.margin=[0.1,x]", "model.search.grid.margin: expected a number"),
    ],
)
def test_override_must_keep_the_type(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_spec([override])
    assert message in str(info.value)


def test_override_types_that_pass() -> None:
    cfg = compose(["model.params.lr=1", "data.name=2017", "trainer.devices=auto"])
    assert cfg.model.params.lr == 1 and cfg.data.name == "2017" and cfg.trainer.devices == "auto"


@pytest.mark.parametrize("value", ["true", "false", "auto", "signed"])
@pytest.mark.parametrize("model", ["segzsl", "clswgan", "fvaegan"])
def test_unit_norm_output_takes_true_false_or_a_word_whatever_the_config_holds(
    model: str, value: str
) -> None:
    """unit_norm_output is true, false, auto or signed on every generator, whether its config
    holds a boolean (SE-GZSL) or a word (f-CLSWGAN, f-VAEGAN), on the command line and in a
    grid; anything else is refused with the accepted values."""
    spec = compose_spec([f"model={model}", f"model.params.unit_norm_output={value}"])
    assert str(spec.model.params["unit_norm_output"]).lower() == value
    grid = f"+model.search.grid.unit_norm_output=[false,{value}]"
    assert compose_spec([f"model={model}", grid]).model.search.grid["unit_norm_output"][1] in (
        value,
        value == "true",
    )
    for bad in ("model.params.unit_norm_output=yes", "+model.search.grid.unit_norm_output=[2]"):
        with pytest.raises(ConfigError, match="unit_norm_output must be true, false, auto or"):
            compose_spec([f"model={model}", bad])


def test_override_without_equals_fails() -> None:
    with pytest.raises(ConfigError, match="bad override 'model.params.lr'.*key=value"):
        compose_spec(["model.params.lr"])


def test_trainer_max_epochs_follows_model() -> None:
    assert compose().trainer.max_epochs == compose().model.max_epochs
    cfg = compose(["model.max_epochs=7"])
    assert cfg.trainer.max_epochs == 7
    cfg = compose(["model.max_epochs=7", "trainer.max_epochs=3"])  # explicit value wins
    assert cfg.trainer.max_epochs == 3 and cfg.model.max_epochs == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.protocol=foo", "data.protocol must be 'val' or 'test', got 'foo'"),
        ("data.preprocess=zscore", "data.preprocess must be none, l2 or minmax"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"),
        ("model.search.metric=acc", "model.search.metric must be"),
        ("+model.search.transfer=batches", "model.search.transfer must be 'epochs' or 'steps'"),
        ("++model.search.patience=0", "model.search.patience must be an integer >= 1 or null"),
        ("++model.search.patience=2.5", "model.search.patience: expected an integer"),
        ("++model.search.validate_from=1.0", "validate_from must be a number in [0, 1)"),
        ("++model.search.validate_from=-0.1", "validate_from must be a number in [0, 1)"),
    ],
)
def test_bad_values_fail(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_spec([override])


def test_unknown_model_name_lists_registry() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'; available: .*ale"):
        compose_spec(["model.name=nope"])


def test_search_grid_key_must_be_a_model_param() -> None:
    with pytest.raises(ConfigError) as info:
        compose_spec(["+model.search.grid.momentum=[0.9,0.99]"])
    message = str(info.value)
    assert "model.search.grid.momentum is not a parameter of ale" in message
    assert "lr" in message and "margin" in message


def test_search_grid_over_model_params() -> None:
    cfg = compose(["model.search.grid.lr=[0.1,0.01]", "+model.search.grid.margin=[0.5]"])
    assert list(cfg.model.search.grid.lr) == [0.1, 0.01]
    assert list(cfg.model.search.grid.margin) == [0.5]
    with pytest.raises(ConfigError, match="model.search.grid.margin must be a non-empty list"):
        compose_spec(["+model.search.grid.margin=0.1"])
    with pytest.raises(ConfigError, match="model.search.grid.lr: expected a list"):
        compose_spec(["model.search.grid.lr=0.1"])


def test_transfer_epochs_keeps_the_number_of_updates() -> None:
    assert transfer_epochs(25, 37, 56, "epochs") == 25
    assert transfer_epochs(25, 37, 56, "steps") == 17  # 925 val batches ~ 16.5 trainval epochs
    assert transfer_epochs(10, 20, 30, "steps") == 7
    assert transfer_epochs(1, 10, 100, "steps") == 1  # never zero epochs
    with pytest.raises(ValueError, match="unknown epoch transfer rule 'updates'"):
        transfer_epochs(5, 10, 15, "updates")
    with pytest.raises(ValueError, match="batches per epoch must be >= 1"):
        transfer_epochs(5, 0, 15, "steps")


def test_transfer_rule_defaults_to_epochs() -> None:
    assert compose_spec([]).model.search.transfer == "epochs"
    assert compose_spec(["model=clswgan"]).model.search.transfer == "steps"


def test_transfer_rule_can_be_added() -> None:
    assert compose_spec(["+model.search.transfer=steps"]).model.search.transfer == "steps"


def test_cpu_bf16_trainer_is_the_cpu_trainer_with_bfloat16_products(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from zsl.models.classical.ale import ALE
    from zsl.run import builders

    cpu, fast = compose([]).trainer, compose(["trainer=cpu_bf16"]).trainer
    assert fast.precision == "bf16-mixed" and cpu.precision == "32-true"
    assert {k: v for k, v in fast.items() if k != "precision"} == {
        k: v for k, v in cpu.items() if k != "precision"
    }
    # a CPU without bfloat16 instructions: one warning line that the products are emulated
    monkeypatch.setattr(builders, "_TRAINERS_BUILT", False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    builders.make_trainer(compose_spec(["trainer=cpu_bf16"]).trainer, ALE, 1)
    assert "bf16-mixed on a CPU without AVX512-BF16/AMX" in capsys.readouterr().err
    monkeypatch.setattr(builders, "_TRAINERS_BUILT", False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    builders.make_trainer(compose_spec(["trainer=cpu_bf16"]).trainer, ALE, 1)
    assert "emulated" not in capsys.readouterr().err


def test_a_negative_loss_weight_is_refused_before_any_fit() -> None:
    """Every ``*_weight`` parameter is a loss weight: negative or NaN stops the run at once,
    typed or in a grid."""
    with pytest.raises(ConfigError, match=r"model.params \(clswgan\): CLSWGAN: gp_weight must"):
        compose_spec(["model=clswgan", "model.params.gp_weight=-1.0"])
    with pytest.raises(ConfigError, match=r"model.search.grid.d2_weight \(fvaegan\)"):
        compose_spec(["model=fvaegan", "+model.search.grid.d2_weight=[0.0,-0.5]"])
    assert (
        compose_spec(["model=clswgan", "model.params.cls_weight=0.0"]).model.params["cls_weight"]
        == 0.0
    )


def test_a_saved_run_config_with_keys_no_run_reads_still_loads() -> None:
    """resume=, zsl-predict and zsl-eval read a run's saved config.yaml leniently: a key that
    earlier versions ran without reading (e.g. added with +) is left out and listed, while a
    new run refuses it."""
    from zsl.run.config import run_spec

    cfg = compose(["+trainer.foo=1", "+logger.notes=x"])
    with pytest.raises(ConfigError, match="trainer.foo is not a trainer setting"):
        run_spec(cfg)
    spec = run_spec(cfg, strict=False)
    assert spec.ignored == ("trainer.foo", "logger.notes")
    assert spec.trainer == run_spec(compose([])).trainer
