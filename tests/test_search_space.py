"""Search-space parsing: forms, encoding of list-valued choices, validation against the schema."""

from __future__ import annotations

import json

import pytest

from segray.config import Config, ConfigError, load_config
from segray.search_space import parse_space

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
