"""Search-space parsing: forms, encoding of list-valued choices, validation against the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segray.cli import main
from segray.config import Config, ConfigError, load_config
from segray.config.usage import USED_ONLY_WHEN, unused_reason
from segray.search.space import parse_space

ROOT = Path(__file__).resolve().parents[1]
BASE = load_config(None, ["model.encoder=resnet18"])


def test_parses_every_form_and_round_trips_lists():
    space = parse_space(
        {
            "model.dilation_rates": {"choice": [[1, 6, 12, 18], [1, 2, 4, 8]]},
            "loss.bce_weight": {"uniform": [0.0, 1.0]},
            "optim.lr": {"loguniform": [1e-5, 1e-2]},
            "optim.weight_decay": {"quniform": [0.0, 0.1, 0.01]},
            "data.batch_size": {"qrandint": [4, 16, 4]},
            "train.epochs": {"randint": [1, 5]},
            "optim.name": {"choice": ["adam", "sgd"]},
        },
        BASE,
    )
    assert space.keys[0] == "model.dilation_rates"
    dil = space.params[0]
    assert dil.encoded and dil.encode([1, 2, 4, 8]) == "[1, 2, 4, 8]"
    # What Tune/Optuna store is a string; decoding restores the list the config needs.
    decoded = space.decode({"model.dilation_rates": json.dumps([1, 2, 4, 8]), "optim.name": "sgd"})
    assert decoded == {"model.dilation_rates": [1, 2, 4, 8], "optim.name": "sgd"}
    assert not space.params[-1].encoded
    tune_space = space.tune_param_space()
    assert set(tune_space) == set(space.keys)
    dists = space.optuna_distributions()
    assert dists["model.dilation_rates"].choices == ("[1, 6, 12, 18]", "[1, 2, 4, 8]")
    assert dists["train.epochs"].high == 4  # randint's high is exclusive


@pytest.mark.parametrize(
    ("space", "pattern"),
    [
        ({}, "tune.space is empty"),
        ({"optim.lr": {"gaussian": [0, 1]}}, "unknown distribution 'gaussian'"),
        ({"optim.lr": [1e-3, 1e-2]}, "expected one of"),
        ({"optim.lr": {"uniform": [1e-2, 1e-3]}}, "need low < high"),
        ({"optim.lr": {"loguniform": [0.0, 1e-3]}}, "loguniform needs low > 0"),
        ({"optim.lr": {"uniform": [1e-3]}}, r"uniform needs \[low, high\] numbers"),
        ({"data.batch_size": {"randint": [1.5, 4]}}, "randint needs integers"),
        ({"optim.lr": {"choice": []}}, "choice needs a non-empty list"),
        ({"optim.lrate": {"uniform": [0.1, 0.2]}}, "unknown key 'lrate' in optim"),
        (
            {"loss.bce_weight": {"uniform": [0.0, 1.5]}},
            r"value 1\.5 would make an invalid trial: .*less than or equal to 1",
        ),
        (
            {"model.dilation_rates": {"choice": [[1, 6, 12, 18], [0, 2, 4, 8]]}},
            r"value \[0, 2, 4, 8\] would make an invalid trial",
        ),
        ({"optim.lr": {"choice": [0.1, 0.1]}}, "values must be distinct"),
    ],
)
def test_errors_name_the_key_and_the_rule(space, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_space(space, BASE)


def test_grid_size():
    space = parse_space(
        {
            "loss.bce_weight": {"grid": [0.2, 0.8]},
            "model.dilation_rates": {"grid": [[1, 2, 4, 8], [1, 6, 12, 18]]},
        },
        Config(),
    )
    assert space.is_grid and space.grid_size() == 4


# --------------------------------------------------------------------------- keys a trial ignores
@pytest.mark.parametrize(
    ("base", "space", "pattern"),
    [
        (["loss.name=dice"], {"loss.bce_weight": {"uniform": [0.0, 1.0]}}, r"loss\.name='dice'"),
        (["loss.name=bce"], {"loss.smooth": {"uniform": [0.0, 1.0]}}, "bce_dice or dice"),
        ([], {"optim.momentum": {"uniform": [0.5, 0.9]}}, r"optim\.name='adam'"),
        ([], {"optim.plateau_factor": {"uniform": [0.1, 0.5]}}, r"optim\.scheduler='cosine'"),
        ([], {"optim.plateau_patience": {"randint": [1, 4]}}, "optim.scheduler is plateau"),
        (["optim.scheduler=none"], {"optim.min_lr": {"uniform": [0, 1e-5]}}, "cosine or plateau"),
        (
            ["model.atrous=false"],
            {"model.dilation_rates": {"choice": [[1, 6, 12, 18], [1, 2, 4, 8]]}},
            r"model\.atrous=False",
        ),
        (["model.atrous=false"], {"model.kernel_sizes": {"choice": [[1, 3, 3, 3]]}}, "atrous"),
        (["model.name=unet"], {"model.encoder": {"choice": ["resnet50"]}}, "'unet' does not take"),
        ([], {"train.gpus_per_worker": {"choice": [1, 2]}}, r"train\.use_gpu=False"),
        ([], {"data.mask_values": {"choice": [{0: 0, 255: 1}]}}, "mask_mode is values"),
        ([], {"data.trimap_uncertain": {"choice": ["ignore"]}}, "mask_mode is trimap"),
        (
            ["data.source=folder", "data.root=x"],
            {"data.synthetic.num": {"randint": [8, 9]}},
            "synth",
        ),
        ([], {"segment.batch_size": {"choice": [4, 8]}}, "segray segment runs"),
        ([], {"tune.grace_period": {"choice": [1, 2]}}, "the search itself"),
    ],
)
def test_a_key_the_trials_would_ignore_is_refused(base, space, pattern):
    with pytest.raises(ConfigError, match=r"a trial would ignore it: .*" + pattern) as info:
        parse_space(space, load_config(None, base))
    assert str(info.value).startswith(f"tune.space.{next(iter(space))}: ")
    assert "\n" not in str(info.value)


def test_used_keys_pass_and_other_searched_keys_count():
    sgd = load_config(None, ["optim.name=sgd", "optim.scheduler=plateau"])
    parse_space(
        {
            "optim.momentum": {"uniform": [0.5, 0.9]},
            "optim.plateau_factor": {"uniform": [0.1, 0.5]},
        },
        sgd,
    )
    # bce_weight is used by every trial only if every sampled loss uses it
    with pytest.raises(ConfigError, match=r"tune\.space\.loss\.bce_weight: a trial would ignore"):
        parse_space(
            {"loss.name": {"choice": ["bce_dice", "dice"]}, "loss.bce_weight": {"uniform": [0, 1]}},
            BASE,
        )
    parse_space(
        {"optim.name": {"choice": ["sgd"]}, "optim.momentum": {"uniform": [0.5, 0.9]}}, BASE
    )


def test_combinations_of_values_are_validated_together():
    multi = load_config(None, ["data.mask_mode=index"])
    space = {
        "data.classes": {"choice": [["bg", "fg"], ["bg", "a", "b"]]},
        "loss.name": {"choice": ["bce_dice", "bce"]},  # each value is valid on its own
    }
    with pytest.raises(
        ConfigError,
        match=r"^tune\.space: data\.classes=\['bg', 'a', 'b'\], loss\.name='bce' would make an "
        r"invalid trial: .*needs 2 classes",
    ):
        parse_space(space, multi)
    with pytest.raises(ConfigError, match=r"^tune\.space\.model\.kernel_sizes: value \[1, 3\] "):
        parse_space({"model.kernel_sizes": {"choice": [[1, 3, 3, 3], [1, 3]]}}, BASE)


def test_unused_reason_table():
    assert unused_reason("loss.bce_weight", Config()) is None
    assert unused_reason("optim.lr", Config()) is None
    assert unused_reason("model.base_width", load_config(None, ["model.name=unet"])) is None
    assert "does not take it" in unused_reason("model.base_width", Config())
    assert set(USED_ONLY_WHEN) >= {"loss.bce_weight", "optim.momentum", "model.dilation_rates"}


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/tune_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_parses(path):
    cfg = load_config(path)
    assert parse_space(cfg.tune.space, cfg).keys


# --------------------------------------------------------------------------- before Ray starts
BAD_SPACE = ["loss.name=dice", "tune.space={loss.bce_weight: {uniform: [0.0, 1.0]}}"]


def test_config_show_refuses_a_bad_space_in_one_line(capsys):
    import ray

    assert main(["config", "show", *BAD_SPACE]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segray: error: tune.space.loss.bce_weight: a trial would ignore it")
    assert "\n" not in err
    assert not ray.is_initialized()


def test_tune_refuses_a_bad_space_before_ray_starts(tmp_path, capsys):
    import ray

    assert main(["tune", "--output", str(tmp_path / "s"), *BAD_SPACE]) == 2
    assert "tune.space.loss.bce_weight" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- applied == sampled
def _built(overrides):
    from segray.checkpoint import build_model
    from segray.engine import build_optimizer
    from segray.train import applied_hparams, build_loss

    cfg = load_config(
        None, ["model.encoder=resnet18", "model.decoder_channels=[8,8,8,8]", *overrides]
    )
    model = build_model(cfg)
    return cfg, applied_hparams(
        model, build_optimizer(model.parameters(), cfg.optim), build_loss(cfg)
    )


def test_check_applied_reads_back_and_refuses_ignored_values():
    from segray.train import AppliedMismatchError, check_applied

    cfg, applied = _built(
        ["optim.name=sgd", "optim.momentum=0.8", "model.dilation_rates=[1,2,4,8]"]
    )
    assert applied["optim.name"] == "sgd" and applied["optim.momentum"] == 0.8
    check_applied({"optim.momentum": 0.8, "model.dilation_rates": [1, 2, 4, 8]}, applied, cfg)
    with pytest.raises(AppliedMismatchError, match=r"optim\.momentum: sampled 0\.7 but built 0\.8"):
        check_applied({"optim.momentum": 0.7}, applied, cfg)

    cfg, applied = _built(["loss.name=dice", "model.atrous=false"])
    assert "loss.bce_weight" not in applied and applied["model.dilation_rates"] is None
    with pytest.raises(AppliedMismatchError) as info:
        check_applied(
            {"loss.bce_weight": 0.5, "model.dilation_rates": [1, 6, 12, 18]}, applied, cfg
        )
    msg = str(info.value)
    assert "loss.bce_weight: sampled 0.5 but this trial ignores it" in msg
    assert "model.dilation_rates: sampled [1, 6, 12, 18] but this trial ignores it" in msg
