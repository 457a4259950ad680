"""Ray Tune + Optuna + ASHA on a real local Ray: each trial a 2-worker gloo DDP training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segray.config import ConfigError, load_config
from segray.search.run import run_tune
from tests.conftest import TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEARCH = [
    *(o for o in TINY if not o.startswith("model.")),
    "model.name=resnet_unet",
    "model.encoder=resnet18",
    "model.decoder_channels=[16,8,8,8]",
    "train.epochs=3",
    "train.max_failures=0",
    "tune.num_samples=4",
    # Tiny 3-epoch runs barely move Dice off 0; val_loss always separates trials for ASHA.
    "tune.metric=val_loss",
    "tune.mode=min",
    "tune.grace_period=1",
    "tune.reduction_factor=2",
    "tune.space={model.dilation_rates: {choice: [[1,6,12,18],[1,2,4,8]]}, loss.bce_weight: {uniform: [0.0, 1.0]}, optim.lr: {loguniform: [1.0e-5, 3.0e-2]}}",
]


@pytest.fixture(scope="module")
def search(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "search"
    return run_tune(load_config(None, SEARCH), out)


def test_search_completes_with_a_row_per_trial(search):
    trials = pd.read_parquet(f"{search.output}/trials.parquet")
    assert len(trials) == 4
    assert trials["trial_id"].is_unique
    for key in ("param.model.dilation_rates", "param.loss.bce_weight", "param.optim.lr"):
        assert key in trials.columns
    assert (trials["status"] == "TERMINATED").all(), trials["error"].tolist()
    # Optuna really varied what it sampled.
    assert trials["param.optim.lr"].nunique() == 4


def test_asha_stops_at_least_one_trial_early(search):
    trials = search.trials
    assert trials["stopped_early"].sum() >= 1
    assert trials["epochs_run"].max() == 3 and trials["epochs_run"].min() < 3


def test_history_and_summary(search):
    history = pd.read_parquet(f"{search.output}/history.parquet")
    assert set(history["trial_id"]) == set(search.trials["trial_id"])
    assert history.groupby("trial_id")["epoch"].apply(lambda e: e.is_unique).all()
    summary = json.loads(open(f"{search.output}/summary.json").read())
    assert summary["num_trials"] == 4 and summary["best"]["val_loss"] == pytest.approx(
        search.trials["best_val_loss"].min()
    )
    assert (
        search.output
        and __import__("pathlib").Path(search.output, "plots", "optimization_history.png").is_file()
    )


def test_best_checkpoint_is_a_train_checkpoint_that_predicts(search):
    import segray

    best = json.loads(open(f"{search.output}/best/metrics.json").read())
    assert best["val_loss"] == pytest.approx(search.summary["best"]["val_loss"])
    seg = segray.load_segmenter(search.best, device="cpu")
    mask = seg.predict(np.zeros((70, 90, 3), np.uint8))
    assert mask.shape == (70, 90)
    # The checkpoint's config is the trial's config: its sampled dilation rates were applied.
    params = search.summary["best"]["params"]
    assert json.loads(params["model.dilation_rates"]) == seg.config.model.dilation_rates


def test_optuna_was_told_each_trials_best_epoch_and_which_asha_stopped(search):
    """The searcher's saved study: complete trials carry their best epoch's score (the one
    trials.parquet ranks by), trials ASHA stopped are pruned where it stopped them."""
    from segray.search.searcher import RankedOptunaSearch

    (state,) = Path(search.output, "ray", "tune").glob("searcher-state-*.pkl")
    searcher = RankedOptunaSearch(metric="val_loss", mode="min", sampler=None, max_epochs=3)
    searcher.restore(str(state))
    told = {t.params["optim.lr"]: t for t in searcher._ot_study.trials}
    assert len(told) == 4
    for _, row in search.trials.iterrows():
        trial = told[row["param.optim.lr"]]
        steps = sorted(trial.intermediate_values)
        if row["stopped_early"]:
            # Optuna hears the epochs Tune saw: a trial that ASHA stopped can finish one more
            # epoch (into history.parquet) before it is torn down, so the curve may be shorter.
            assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= row["epochs_run"]
            assert trial.state.name == "PRUNED" and trial.last_step == steps[-1]
        else:
            assert steps == list(range(1, row["epochs_run"] + 1))
            assert trial.state.name == "COMPLETE"
            assert trial.value == pytest.approx(row["best_val_loss"])


def test_a_value_a_trial_would_ignore_is_refused_before_ray_starts(tmp_path):
    # With atrous=false the decoder has no atrous branches: sampled rates would change nothing.
    cfg = load_config(
        None,
        [
            *SEARCH,
            "model.atrous=false",
            "tune.space={model.dilation_rates: {choice: [[1,6,12,18]]}}",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"tune\.space\.model\.dilation_rates: a trial would ignore"
    ):
        run_tune(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_trials_pack_by_their_workers_resources(ray_local):
    """The trial driver reserves nothing; as many whole trials run at once as the CPUs hold."""
    from segray.search.settings import search_settings

    two = search_settings(
        load_config(None, [*SEARCH, "train.num_workers=2", "train.cpus_per_worker=1"])
    )
    assert two.trial_resources == {"CPU": 2.0}
    assert two.concurrency() == 1  # 2 CPUs: one 2-worker trial
    one = load_config(None, [*SEARCH, "train.num_workers=1", "train.cpus_per_worker=1"])
    assert search_settings(one).concurrency() == 2
    pinned = load_config(None, [*SEARCH, "tune.max_concurrent_trials=3"])
    assert search_settings(pinned).concurrency() == 3


def test_a_trial_that_can_never_start_fails_at_once(ray_local, tmp_path):
    from segray.cluster import ResourceError

    cfg = load_config(None, [*SEARCH, "train.num_workers=3", "train.cpus_per_worker=1"])
    with pytest.raises(
        ResourceError, match="needs 3 CPU .* the cluster has 2.*no trial could ever start"
    ):
        run_tune(cfg, tmp_path / "impossible")


def test_an_autoscaling_cluster_is_sized_by_its_largest_shape(ray_local, capsys):
    """With an autoscaler's configuration in the GCS (as KubeRay's in-tree autoscaler
    publishes it), work that needs nodes not started yet is not refused, the log says what
    was assumed, and the search's concurrency counts the nodes the cluster can grow to; a
    bundle no node shape could hold is still refused."""
    import ray._raylet as raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put
    from ray.tune.search import Searcher

    from segray.cluster import ResourceError, check_fits
    from segray.search.cv import cv_config
    from segray.search.searcher import ClusterSizedLimiter
    from segray.search.settings import search_settings

    overrides = [*SEARCH, "train.num_workers=2", "train.cpus_per_worker=1"]
    grid = cv_config(load_config(None, overrides), 3)  # 2-CPU trials
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.max_count = "cpu-workers", 4
    group.resources["CPU"] = 4
    key = raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    namespace = raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    with pytest.raises(ResourceError, match="needs 6 CPU .* the cluster has 2"):
        check_fits({"CPU": 3.0}, 2, "one trial")  # a static 2-CPU cluster: refused
    _internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        check_fits({"CPU": 3.0}, 2, "one trial")  # 6 of the 16 CPUs it can grow to
        assert "autoscaling cluster, checked against its largest size (16 CPU)" in (
            capsys.readouterr().out
        )
        with pytest.raises(ResourceError, match="needs 8 CPU per worker but no node has"):
            check_fits({"CPU": 8.0}, 1, "one trial")
        assert ClusterSizedLimiter(Searcher(), {"CPU": 2.0}).capacity() == 8
        # a grid's concurrency (cv's folds) counts the same nodes
        assert search_settings(grid).concurrency() == 8
    finally:
        _internal_kv_del(key, namespace=namespace)
    assert ClusterSizedLimiter(Searcher(), {"CPU": 2.0}).capacity() == 1  # back to static
    assert search_settings(grid).concurrency() == 1
