"""Config: precedence, overrides, and one clear line per rule violation."""

from __future__ import annotations

import pytest
import yaml

from segray.config import Config, ConfigError, apply_overrides, load_config, parse_overrides


def write(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_are_valid_and_binary():
    cfg = Config()
    assert cfg.num_classes == 1
    assert cfg.model.dilation_rates == [1, 6, 12, 18]
    assert cfg.model.kernel_sizes == [1, 3, 3, 3]


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = write(tmp_path, {"optim": {"lr": 0.01, "name": "sgd"}, "loss": {"bce_weight": 0.2}})
    cfg = load_config(path, ["optim.lr=3e-4", "model.dilation_rates=[1,2,4,8]"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # override beats YAML
    assert cfg.optim.name == "sgd"  # YAML beats default
    assert cfg.loss.bce_weight == pytest.approx(0.2)
    assert cfg.model.dilation_rates == [1, 2, 4, 8]
    assert cfg.train.epochs == Config().train.epochs  # default kept


def test_roundtrip_yaml(tmp_path):
    cfg = load_config(None, ["data.classes=[bg,a,b]", "data.mask_mode=index", "loss.name=ce"])
    path = cfg.save(tmp_path / "out.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.num_classes == 3


def test_apply_overrides_revalidates():
    cfg = Config()
    new = apply_overrides(cfg, {"loss.bce_weight": 0.9, "optim.lr": 0.5})
    assert (new.loss.bce_weight, new.optim.lr) == (0.9, 0.5)
    assert cfg.loss.bce_weight == 0.5  # the original is untouched
    with pytest.raises(ConfigError, match=r"loss\.bce_weight=2"):
        apply_overrides(cfg, {"loss.bce_weight": 2})


def test_dict_field_override_takes_rest_of_path():
    cfg = load_config(None, ["tune.space.optim.lr={loguniform: [1.0e-5, 1.0e-2]}"])
    assert cfg.tune.space == {"optim.lr": {"loguniform": [1e-5, 1e-2]}}


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["loss.bce_weight=1.5"],
            r"^invalid config: loss\.bce_weight=1\.5: .*less than or equal to 1",
        ),
        (["loss.bce_weight=-0.1"], r"loss\.bce_weight=-0\.1: .*greater than or equal to 0"),
        (["optim.lr=0"], r"optim\.lr=0: .*greater than 0"),
        (["optim.lr=-1e-3"], r"optim\.lr=-0\.001: .*greater than 0"),
        (
            ["model.dilation_rates=[1,0,12,18]"],
            r"model\.dilation_rates=\[1, 0, 12, 18\]: .*each >= 1",
        ),
        (["model.dilation_rates=[]"], r"model\.dilation_rates=\[\]: need a non-empty list"),
        (["data.classes=[]"], r"data\.classes=\[\]: need at least 2 class names"),
        (["optim.lr=fast"], r"optim\.lr='fast': .*valid number"),
        (["train.epochs=2.5"], r"train\.epochs=2\.5: .*valid integer"),
        (["model.kernel_sizes=[1,3,3]"], r"model: dilation_rates .* same length"),
        (["model.kernel_sizes=[1,2,3,3]"], r"odd kernel sizes"),
        (["model.name=vit"], r"unknown model 'vit'; valid: .*resnet_unet"),
        (
            ["model.name=unet", "model.dilation_rates=[1,2,3,4]"],
            r"model\.dilation_rates is not a parameter of model 'unet'",
        ),
        (["data.split=[0.5,0.5,0.5]"], r"data\.split=.*summing to 1"),
        (["loss.name=ce"], r"'ce' is for more than 2 classes"),
        (
            [
                "data.source=folder",
                "data.root=x",
                "data.classes=[a,b,c]",
                "data.mask_mode=threshold",
            ],
            r"mask_mode=.threshold. makes binary masks",
        ),
        (["data.source=folder"], r"source 'folder' needs data\.root"),
    ],
)
def test_rule_violations_name_key_value_and_rule(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)  # one line


def test_unknown_keys_are_rejected_with_valid_keys(tmp_path):
    with pytest.raises(
        ConfigError, match=r"optim\.learning_rate=0\.1: unknown key; valid keys here: name, lr"
    ):
        load_config(write(tmp_path, {"optim": {"learning_rate": 0.1}}))
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in optim; valid: name, lr"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key 'modle' in the top level"):
        load_config(None, ["modle.name=unet"])


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["optim.lr"])


def test_override_values_are_yaml():
    assert parse_overrides(["a=1e-3", "b=[1,2]", "c=true", "d=null", "e=text"]) == {
        "a": 1e-3,
        "b": [1, 2],
        "c": True,
        "d": None,
        "e": "text",
    }


def test_model_kwargs_only_pass_what_the_model_takes():
    cfg = load_config(None, ["model.name=unet", "model.base_width=16"])
    kwargs = cfg.model.kwargs(cfg.num_classes)
    assert kwargs["base_width"] == 16 and kwargs["num_classes"] == 1
    assert "dilation_rates" not in kwargs


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (
            "model:\n  name: unet\n  dilation_rates: [1, 2\ntrain:\n  epochs: 3\n",
            "4:6",
            "expected ','",
        ),
        ("model:\n  name: unet\n   bad: 1\n", "3:7", "mapping values are not allowed here"),
        ("model:\n\tname: unet\n", "2:1", "found character '\\t'"),
    ],
)
def test_a_yaml_syntax_error_is_one_line_with_file_line_column(tmp_path, text, where, what):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{where}: not valid YAML: ") and what in msg
    assert "\n" not in msg


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["model.dilation_rates=[1,2"])
    msg = str(info.value)
    assert msg.startswith("override 'model.dilation_rates=[1,2': value is not valid YAML: ")
    assert "expected ',' or ']'" in msg and msg.endswith("at character 26") and "\n" not in msg


def test_atrous_rates_with_a_plain_decoder_are_refused():
    with pytest.raises(
        ConfigError, match=r"model\.dilation_rates is unused with model\.atrous=false"
    ):
        load_config(None, ["model.atrous=false", "model.dilation_rates=[1,2,4,8]"])
    with pytest.raises(
        ConfigError, match=r"model\.kernel_sizes is unused with model\.atrous=false"
    ):
        load_config(None, ["model.atrous=false", "model.kernel_sizes=[1,3,3,5]"])
    plain = load_config(None, ["model.atrous=false"])  # the default rates: nothing was asked for
    assert load_config(None, base=plain.to_dict()) == plain  # a saved full config reloads
