"""MLflow tracking (`segray.tracking`): the config section and params without Ray; a 2-epoch
train and a 2-trial search logging to a real ``mlflow server`` (tests/mlflow_server.py), read
back with ``MlflowClient``; an unreachable server is a warning, never a failed run."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from segray.config import Config, ConfigError, load_config
from segray.tracking import (
    ENV_URI,
    TRIAL_TAG,
    Tracker,
    TrackingWarning,
    flatten_params,
    metric_values,
    settings_from_config,
)
from tests.conftest import TINY
from tests.faults import epochs_log, fail_once_runtime_env


# --------------------------------------------------------------------------- no Ray
def test_tracking_section_defaults_overrides_and_unknown_keys():
    cfg = Config()
    assert cfg.tracking.mlflow_uri is None and cfg.tracking.run_name is None
    assert cfg.tracking.experiment == "segray" and cfg.tracking.tags == {}
    cfg = load_config(
        None,
        [
            "tracking.mlflow_uri=http://mlflow.example:5000",
            "tracking.experiment=pets",
            "tracking.run_name=baseline",
            "tracking.tags={team: vision, ticket: '42'}",
        ],
    )
    assert cfg.tracking.mlflow_uri == "http://mlflow.example:5000"
    assert (cfg.tracking.experiment, cfg.tracking.run_name) == ("pets", "baseline")
    assert cfg.tracking.tags == {"team": "vision", "ticket": "42"}
    with pytest.raises(ConfigError, match=r"tracking\.url.*valid: mlflow_uri, experiment"):
        load_config(None, ["tracking.url=http://x"])
    with pytest.raises(ConfigError, match=r"tracking\.experiment"):
        load_config(None, ["tracking.experiment=''"])


def test_tracking_is_off_without_a_uri_and_the_config_wins_over_the_env(monkeypatch):
    monkeypatch.delenv(ENV_URI, raising=False)
    assert settings_from_config(Config()) is None
    monkeypatch.setenv(ENV_URI, "http://from-env:5000")
    assert settings_from_config(Config()).uri == "http://from-env:5000"
    cfg = load_config(None, ["tracking.mlflow_uri=http://from-config:5000", "tracking.tags={a: b}"])
    settings = settings_from_config(cfg)
    assert settings.uri == "http://from-config:5000" and dict(settings.tags) == {"a": "b"}


def test_a_uri_without_mlflow_installed_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    cfg = load_config(None, ["tracking.mlflow_uri=http://127.0.0.1:5000"])
    with pytest.raises(ConfigError, match=r"pip install 'segray\[mlflow\]'") as err:
        settings_from_config(cfg)
    assert "\n" not in str(err.value) and "http://127.0.0.1:5000" in str(err.value)
    monkeypatch.delenv(ENV_URI, raising=False)
    assert settings_from_config(Config()) is None  # off: mlflow is not needed


def test_params_are_the_config_flattened_with_dotted_keys():
    params = flatten_params(
        {
            "optim": {"lr": 0.001, "grad_clip": None},
            "model": {"dilation_rates": [1, 6, 12, 18], "atrous": True, "name": "unet"},
            "data": {"mask_values": {}, "notes": "x" * 7000},
        }
    )
    assert params == {
        "optim.lr": "0.001",
        "optim.grad_clip": "null",
        "model.dilation_rates": "[1, 6, 12, 18]",
        "model.atrous": "true",
        "model.name": "unet",
        "data.mask_values": "{}",
        "data.notes": "x" * 5997 + "...",  # MLflow's 6000-character limit
    }
    full = flatten_params(Config().to_dict())
    assert float(full["optim.lr"]) == Config().optim.lr
    assert json.loads(full["model.dilation_rates"]) == Config().model.dilation_rates
    assert full["tracking.experiment"] == "segray"
    assert all(not isinstance(v, dict) for v in full.values())


def test_metric_values_keep_numbers_only():
    row = {"epoch": 3, "val_dice": 0.5, "lr": 1e-3, "stopped_early": False, "name": "x", "n": 4}
    assert metric_values(row) == {"val_dice": 0.5, "lr": 1e-3, "n": 4.0}


def test_a_tracker_that_is_off_does_nothing():
    tracker = Tracker(None)
    assert tracker.start(run_name="x") is None and not tracker.active
    tracker.log_params({"a": 1})
    tracker.log_metrics({"a": 1.0}, step=1)
    tracker.end()
    assert tracker.worker_spec() is None and tracker.logged_steps("a") == set()
    assert not Tracker.attach(None).active


def test_a_resumed_run_may_change_its_tracking_settings():
    from segray.train import check_resume_config

    saved = load_config(None, TINY)
    changed = load_config(None, [*TINY, "tracking.mlflow_uri=http://elsewhere:5000"])
    check_resume_config(saved, changed, "run")  # no ConfigError


# --------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[object]:
    from tests.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def fail_once(tmp_path_factory) -> Iterator[Path]:
    """A local Ray whose worker processes register the fault hook (`tests.faults`) as they
    start; the marker file exists (hook disarmed): a test arms it by deleting the file, and
    after the failure the file holds the name of the run that failed."""
    import ray

    from segray.cluster import local_ray_lock, start_local

    marker = tmp_path_factory.mktemp("fault") / "failed-once"
    marker.write_text("")
    with local_ray_lock():
        # the same local Ray as the other tests', its workers armed to raise once after epoch 1
        start_local(num_cpus=2, runtime_env=fail_once_runtime_env(1, marker))
        try:
            yield marker
        finally:
            ray.shutdown()


def _client(server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def _steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.integration
@pytest.mark.slow
class TestTrain:
    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, mlflow_server, fail_once, tmp_path_factory):
        from segray.train import run_training

        out = tmp_path_factory.mktemp("tracked") / "run"
        overrides = [
            *TINY,
            f"tracking.mlflow_uri={mlflow_server.uri}",
            "tracking.experiment=train-test",
            "tracking.tags={team: vision}",
            "train.max_failures=1",  # Ray Train restarts the worker group after the fault
        ]
        epochs_log(fail_once).unlink(missing_ok=True)
        fail_once.unlink()  # armed: rank 0 raises once after epoch 1
        result = run_training(load_config(None, overrides), out)
        assert fail_once.read_text() == "train"  # the run really failed once and was retried
        # and the retry resumed from epoch 1's checkpoint: no epoch trained twice
        assert epochs_log(fail_once).read_text().splitlines() == ["train 1", "train 2"]
        run_id = json.loads((out / "tracking.json").read_text())["run_id"]
        return result, out, _client(mlflow_server).get_run(run_id)

    def test_one_finished_run_with_the_resolved_config_as_params(self, trained, mlflow_server):
        result, out, run = trained
        client = _client(mlflow_server)
        exp = client.get_experiment_by_name("train-test")
        assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run.info.run_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["team"] == "vision" and run.data.tags["segray.kind"] == "train"
        resolved = load_config(str(out / "config.yaml"))
        assert run.data.params == flatten_params(resolved.to_dict())

    def test_one_point_per_epoch_per_metric_equal_to_the_history(self, trained, mlflow_server):
        result, _, run = trained
        client = _client(mlflow_server)
        history = pd.read_parquet(result.output / "history.parquet")
        assert history["epoch"].tolist() == [1, 2]
        logged = set(run.data.metrics)
        assert {"train_loss", "val_loss", "val_dice", "lr", "best_val_dice"} <= logged
        for key in ("train_loss", "val_loss", "val_dice", "lr", "epoch_time_s"):
            points = _steps(client, run.info.run_id, key)
            assert [s for s, _ in points] == [1, 2], key  # the retried epoch was not logged twice
            assert [v for _, v in points] == pytest.approx(history[key].tolist()), key

    def test_artefacts_config_history_and_best_checkpoint(self, trained, mlflow_server):
        result, out, run = trained
        client = _client(mlflow_server)
        assert {
            "config.yaml",
            "history.parquet",
            "checkpoints/best/model.pt",
            "checkpoints/best/config.yaml",
            "checkpoints/best/metrics.json",
        } <= _artifacts(client, run.info.run_id)
        local = client.download_artifacts(run.info.run_id, "checkpoints/best/model.pt")
        assert Path(local).read_bytes() == (out / "checkpoints" / "best" / "model.pt").read_bytes()


@pytest.mark.integration
@pytest.mark.slow
class TestSearch:
    @pytest.fixture(scope="class")
    @classmethod
    def search(cls, mlflow_server, fail_once, tmp_path_factory):
        from segray.search.run import run_tune
        from tests.test_tune import SEARCH

        out = tmp_path_factory.mktemp("tracked-tune") / "search"
        overrides = [
            *SEARCH,
            "train.epochs=2",
            "tune.num_samples=2",
            "tune.scheduler=none",
            "tune.max_failures=1",  # Tune retries the failed trial (train.max_failures=0)
            f"tracking.mlflow_uri={mlflow_server.uri}",
            "tracking.experiment=search-test",
        ]
        fail_once.unlink()  # armed: the first trial to finish epoch 1 fails once
        result = run_tune(load_config(None, overrides), out)
        failed = fail_once.read_text()
        assert failed.startswith("trial_"), failed
        return result, out, failed.removeprefix("trial_")

    def _runs(self, mlflow_server):
        client = _client(mlflow_server)
        exp = client.get_experiment_by_name("search-test")
        return client, client.search_runs([exp.experiment_id])

    def test_a_parent_run_and_one_nested_run_per_trial(self, search, mlflow_server):
        result, out, retried = search
        client, runs = self._runs(mlflow_server)
        parent_id = json.loads((out / "tracking.json").read_text())["run_id"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
        assert {r.info.run_id for r in runs} == {parent_id} | {r.info.run_id for r in children}
        trials = pd.read_parquet(out / "trials.parquet")
        assert (trials["status"] == "TERMINATED").all(), trials["error"].tolist()
        # One run per trial, the retried one included: no second run for its retry.
        assert sorted(r.data.tags[TRIAL_TAG] for r in children) == sorted(trials["trial_id"])
        assert retried in set(trials["trial_id"])
        assert all(r.info.status == "FINISHED" for r in runs)

    def test_trial_params_are_exactly_the_sampled_values(self, search, mlflow_server):
        result, out, _ = search
        _, runs = self._runs(mlflow_server)
        trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
        space = {"model.dilation_rates", "loss.bce_weight", "optim.lr"}
        for run in runs:
            if TRIAL_TAG not in run.data.tags:
                continue
            row = trials.loc[run.data.tags[TRIAL_TAG]]
            params = run.data.params
            assert set(params) == space
            assert json.loads(params["model.dilation_rates"]) == json.loads(
                row["param.model.dilation_rates"]
            )
            assert float(params["loss.bce_weight"]) == row["param.loss.bce_weight"]
            assert float(params["optim.lr"]) == row["param.optim.lr"]

    def test_each_trial_logged_one_point_per_epoch(self, search, mlflow_server):
        result, out, retried = search
        client, runs = self._runs(mlflow_server)
        history = pd.read_parquet(out / "history.parquet")
        for run in runs:
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is None:
                continue
            mine = history[history["trial_id"] == trial_id].sort_values("epoch")
            assert mine["epoch"].tolist() == [1, 2]
            for key in ("train_loss", "val_loss", "val_dice"):
                points = _steps(client, run.info.run_id, key)
                assert [s for s, _ in points] == [1, 2], (trial_id, trial_id == retried, key)
                assert [v for _, v in points] == pytest.approx(mine[key].tolist())

    def test_the_parent_holds_the_space_summary_and_artefacts(self, search, mlflow_server):
        result, out, _ = search
        client = _client(mlflow_server)
        parent_id = json.loads((out / "tracking.json").read_text())["run_id"]
        parent = client.get_run(parent_id)
        summary = json.loads((out / "summary.json").read_text())
        assert parent.data.metrics["num_trials"] == 2
        assert parent.data.metrics["stopped_early"] == summary["stopped_early"]
        assert parent.data.metrics["best_val_loss"] == pytest.approx(summary["best"]["val_loss"])
        assert parent.data.tags["segray.best_trial_id"] == summary["best"]["trial_id"]
        assert float(parent.data.tags["best.optim.lr"]) == summary["best"]["params"]["optim.lr"]
        assert parent.data.params["tune.num_samples"] == "2"
        assert {
            "config.yaml",
            "search_space.json",
            "summary.json",
            "trials.parquet",
            "history.parquet",
            "plots/optimization_history.png",
            "best/model.pt",
            "best/config.yaml",
            "best/metrics.json",
        } <= _artifacts(client, parent_id)
        space = json.loads(
            Path(client.download_artifacts(parent_id, "search_space.json")).read_text()
        )
        assert set(space) == {"model.dilation_rates", "loss.bce_weight", "optim.lr"}

    def test_a_resumed_search_reattaches_to_its_parent_run(self, search, mlflow_server):
        from segray.search.run import run_tune

        result, out, _ = search
        parent_id = json.loads((out / "tracking.json").read_text())["run_id"]
        run_tune(None, out, resume=True)
        assert json.loads((out / "tracking.json").read_text())["run_id"] == parent_id
        _, runs = self._runs(mlflow_server)
        assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [
            parent_id
        ]
        assert len(runs) == 3  # the parent and its two trials, nothing new
        assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.integration
def test_an_unreachable_server_is_a_warning_naming_it_and_training_succeeds(fail_once, tmp_path):
    from segray.train import run_training
    from tests.s3 import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = load_config(None, [*TINY, "train.epochs=1", f"tracking.mlflow_uri={uri}"])
    with pytest.warns(TrackingWarning, match=f"MLflow tracking at {uri} failed"):
        result = run_training(cfg, tmp_path / "run")
    assert result.history["epoch"].tolist() == [1]
    assert (tmp_path / "run" / "checkpoints" / "best" / "model.pt").is_file()
    assert not (tmp_path / "run" / "tracking.json").exists()
