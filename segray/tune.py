"""Hyperparameter search: Ray Tune + Optuna (TPE) + ASHA, every trial a DDP TorchTrainer.

Each trial's driver is a Tune function trainable that reserves no CPU or GPU (its Train
workers need them all) and calls `segray.train.run_training` with a run name derived from
the trial id, so a retried trial resumes from its own last checkpoint. ASHA schedules on the
reported ``epoch`` (monotone across retries), not on Tune's iteration count.

    OUT/config.yaml            the base config, search space included
    OUT/ray/tune/              Tune's experiment state (``--resume OUT`` restores it)
    OUT/ray/trials/trial_ID/   each trial's Ray Train run and checkpoints
    OUT/trials.parquet         one row per trial: params, status, best/last metrics, epochs ...
    OUT/history.parquet        one row per trial per epoch
    OUT/best/                  the best trial's best checkpoint (the `segray train` format)
    OUT/summary.json, OUT/plots/{optimization_history,param_importances}.png
    OUT/tracking.json          the MLflow parent run (``cfg.tracking``), which a resume reattaches to

(the tables, best/, summary and plots: `segray.tune_results`).

With MLflow tracking on, the search is a parent run (the config and search space, at the end
the summary, tables, plots and best checkpoint) and every trial a nested run whose params are
exactly its sampled values and whose metrics its rank 0 logs each epoch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from segray.cluster import ResourceError, check_fits, ensure_ray
from segray.config import Config, apply_overrides
from segray.data import inspect_data
from segray.search_space import SearchSpace, parse_space
from segray.searcher import BestPlateauStopper, ClusterSizedLimiter, RankedOptunaSearch
from segray.storage import Location
from segray.tracking import (
    TRIAL_TAG,
    Tracker,
    flatten_params,
    save_run_id,
    saved_run_id,
    settings_from_config,
)
from segray.train import run_training, worker_resources
from segray.tune_results import (
    TuneResult,
    collect,
    config_from_yaml,
    read_json,
    read_text,
    write_json,
    write_text,
)

__all__ = ["TuneResult", "run_tune"]

EXPERIMENT = "tune"
DONE_MARKER = "segray_done.json"
DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's driver


# --------------------------------------------------------------------------- trial driver
def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    space: SearchSpace,
    trials_uri: str,
    tracking: dict[str, Any] | None = None,
) -> None:
    """One trial: decode the sample, re-validate, train with DDP, report every epoch to Tune.

    ``tracking`` (the parent run's `Tracker.worker_spec`): the trial's nested MLflow run, found
    again by its ``segray.trial_id`` tag when Tune retries the trial."""
    sampled = space.decode(config)
    cfg = apply_overrides(Config.from_dict(base), sampled)
    trial_id = tune.get_context().get_trial_id()
    name = f"trial_{trial_id}"
    marker = f"{trials_uri}/{name}/{DONE_MARKER}"
    done = read_json(marker)
    if done is not None:  # finished before an interrupted driver could record it: don't train twice
        tune.report(done["last"])
        return
    parent = Tracker.attach(tracking)  # tracking.run_name names the parent run, not the trials
    tracker = Tracker(replace(parent.settings, run_name=None) if parent.settings else None)
    tracker.start(
        run_name=name,
        tags={"segray.kind": "trial"},
        parent_run_id=parent.run_id,
        match={TRIAL_TAG: trial_id},
    )
    tracker.log_params(sampled)  # exactly the sampled values
    try:
        result = run_training(
            cfg,
            None,
            storage_path=trials_uri,
            name=name,
            callbacks=[TuneReportCallback()],
            expect=sampled,
            monitor=(cfg.tune.metric, cfg.tune.mode),
            tracker=tracker,
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    write_json(marker, {"last": last, "best": result.best_metrics})


# --------------------------------------------------------------------------- driver
def trial_resources(cfg: Config) -> dict[str, float]:
    """Resources of one whole trial: its DDP workers (the trial driver itself reserves none)."""
    per = worker_resources(cfg)
    return {k: v * cfg.train.num_workers for k, v in per.items()}


def max_concurrent(cfg: Config) -> int:
    """``tune.max_concurrent_trials``, or how many whole trials the cluster holds at once."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    total = ray.cluster_resources()
    fits = [int(total.get(k, 0.0) // v) for k, v in trial_resources(cfg).items() if v > 0]
    return max(1, min(fits)) if fits else 1


def _searcher(cfg: Config, space: SearchSpace):
    if space.is_grid:
        return None  # Tune's grid/variant generator
    import optuna

    sampler = (
        optuna.samplers.TPESampler(
            seed=cfg.tune.seed,
            multivariate=True,
            # Optuna's default of 10 random start-up trials would make small searches pure random.
            n_startup_trials=cfg.tune.startup_trials or min(10, max(2, cfg.tune.num_samples // 3)),
            constant_liar=True,  # trials still running count as bad, so parallel ones spread out
        )
        if cfg.tune.searcher == "optuna"
        else optuna.samplers.RandomSampler(seed=cfg.tune.seed)
    )
    searcher = RankedOptunaSearch(
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        sampler=sampler,
        max_epochs=cfg.tune.max_epochs or cfg.train.epochs,
    )
    return ClusterSizedLimiter(searcher, trial_resources(cfg), cfg.tune.max_concurrent_trials)


def _scheduler(cfg: Config):
    if cfg.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",  # monotone across trial retries (training_iteration restarts at 1)
        metric=cfg.tune.metric,
        mode=cfg.tune.mode,
        max_t=cfg.tune.max_epochs or cfg.train.epochs,
        grace_period=cfg.tune.grace_period,
        reduction_factor=cfg.tune.reduction_factor,
    )


def _stopper(cfg: Config) -> BestPlateauStopper | None:
    if cfg.tune.plateau_trials is None:
        return None
    return BestPlateauStopper(
        cfg.tune.metric,
        cfg.tune.mode,
        patience=cfg.tune.plateau_trials,
        max_epochs=cfg.tune.max_epochs or cfg.train.epochs,
    )


def _trainable(
    cfg: Config, space: SearchSpace, trials_uri: str, tracking: dict[str, Any] | None = None
):
    fn = tune.with_parameters(
        _trial, base=cfg.to_dict(), space=space, trials_uri=trials_uri, tracking=tracking
    )
    # The trial driver only orchestrates: it must not hold a CPU its own workers need (on a
    # 2-CPU machine, 1 driver CPU + 2 worker CPUs waits forever). Tune needs a non-empty
    # bundle, so the driver reserves a little memory, which it does use, and no CPU.
    return tune.with_resources(fn, {"CPU": 0, "memory": DRIVER_MEMORY})


def search_exists(output: str | Path) -> bool:
    """Whether ``output`` (path or URI) holds a search that ``--resume`` can continue."""
    out = str(output) if "://" in str(output) else str(Path(output).resolve())
    return read_text(f"{out}/config.yaml") is not None and _can_restore(f"{out}/ray/{EXPERIMENT}")


def _can_restore(exp_uri: str) -> bool:
    loc = Location.parse(exp_uri)
    return tune.Tuner.can_restore(loc.path, storage_filesystem=loc.fs)


def run_tune(
    cfg: Config | None,
    output: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
) -> TuneResult:
    """Run (or with ``resume=True`` continue) the search described by ``cfg.tune``."""
    started = time.time()
    out = str(output) if "://" in str(output) else str(Path(output).resolve())
    exp_uri = f"{out}/ray/{EXPERIMENT}"
    if resume:
        saved = read_text(f"{out}/config.yaml")
        if saved is None:
            raise FileNotFoundError(f"{out}: no config.yaml: not a segray tune output")
        cfg = config_from_yaml(saved)
    elif cfg is None:
        raise ValueError("run_tune needs a config unless resuming")
    elif _can_restore(exp_uri):
        raise FileExistsError(
            f"{out} already holds a search: continue it with --resume {out} or choose another --output"
        )
    assert cfg is not None
    space = parse_space(cfg.tune.space, cfg)  # a bad space fails before Ray starts
    settings = settings_from_config(cfg)  # a tracking URI without mlflow: fails here too
    ensure_ray(address)
    cfg, fingerprint = inspect_data(cfg, echo=True)  # mask_mode: auto resolved; one summary line
    per_worker = worker_resources(cfg)
    try:
        check_fits(
            per_worker, cfg.train.num_workers, f"one trial ({cfg.train.num_workers} DDP workers)"
        )
    except ResourceError as e:
        raise ResourceError(f"{e}; no trial could ever start") from None
    if not resume:
        write_text(f"{out}/config.yaml", cfg.to_yaml())
        write_text(f"{out}/fingerprint.json", fingerprint.to_json())

    parent = _open_search_run(settings, cfg, out, resume)
    trials_uri = f"{out}/ray/trials"
    trainable = _trainable(cfg, space, trials_uri, parent.worker_spec())
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # lose little if the driver dies
    if resume:
        if not _can_restore(exp_uri):
            raise FileNotFoundError(f"{out}: no search state to resume under {exp_uri}")
        exp = Location.parse(exp_uri)
        tuner = tune.Tuner.restore(
            exp.path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=exp.fs,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space.tune_param_space(),
            tune_config=tune.TuneConfig(
                search_alg=_searcher(cfg, space),
                scheduler=_scheduler(cfg),
                num_samples=1 if space.is_grid else cfg.tune.num_samples,
                # A searcher's concurrency follows the cluster (ClusterSizedLimiter); a grid
                # (no searcher) runs as many trials as the cluster holds at the start.
                max_concurrent_trials=max_concurrent(cfg) if space.is_grid else None,
                time_budget_s=cfg.tune.time_budget_s,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=Location.parse(f"{out}/ray").path,
                storage_filesystem=Location.parse(out).fs,
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
                stop=_stopper(cfg),
            ),
        )
    try:
        grid = tuner.fit()
        result = collect(cfg, space, grid, out, time.time() - started, tracker=parent)
    except BaseException:
        parent.end("FAILED")
        raise
    _close_trial_runs(parent, result.trials)
    parent.end("FINISHED")
    return result


# --------------------------------------------------------------------------- MLflow
def _open_search_run(settings, cfg: Config, out: str, resume: bool) -> Tracker:
    """The search's MLflow parent run: the one in ``OUT/tracking.json`` when resuming, else a
    new one with the config (search space included) as params and artefacts."""
    parent = Tracker(settings)
    if settings is None:
        return parent
    parent.start(
        run_name="tune",
        tags={"segray.kind": "tune", "segray.output": out},
        run_id=saved_run_id(out, settings) if resume else None,
    )
    parent.log_params(flatten_params(cfg.to_dict()))
    if not resume:
        parent.log_bytes("config.yaml", cfg.to_yaml().encode())
        space = json.dumps(cfg.tune.space, indent=2, default=str).encode()
        parent.log_bytes("search_space.json", space)
    save_run_id(out, parent)
    return parent


def _close_trial_runs(parent: Tracker, trials: pd.DataFrame) -> None:
    """Each trial run's final state: KILLED where ASHA stopped it, FAILED where it errored."""
    runs = parent.children()
    for _, row in trials.iterrows():
        run_id = runs.get(str(row["trial_id"]))
        if run_id is None:
            continue
        if row["status"] == "ERROR":
            parent.end("FAILED", run_id=run_id)
        elif bool(row["stopped_early"]):
            parent.set_tags({"segray.stopped_early": True}, run_id=run_id)
            parent.end("KILLED", run_id=run_id)
