"""Hyperparameter search: Ray Tune + Optuna (TPE) + ASHA, every trial a DDP TorchTrainer.

Each trial's driver is a Tune function trainable that reserves no CPU or GPU (its Train
workers need them all) and calls `segray.train.run_training` with a run name derived from
the trial id, so a retried trial resumes from its own last checkpoint. ASHA schedules on the
reported ``epoch`` (monotone across retries), not on Tune's iteration count.

    OUT/config.yaml            the base config, search space included
    OUT/splits.json            the keys of train, val and test (and of each fold, for cv)
    OUT/ray/tune/              Tune's experiment state (``--resume OUT`` restores it)
    OUT/ray/trials/trial_ID/   each trial's Ray Train run and checkpoints
    OUT/trials.parquet         one row per trial: params, status, best/last metrics, epochs ...
    OUT/history.parquet        one row per trial per epoch
    OUT/best/                  the best trial's best checkpoint (the `segray train` format)
    OUT/summary.json, OUT/plots/{optimization_history,param_importances}.png
    OUT/tracking.json          the MLflow parent run (``cfg.tracking``), which a resume reattaches to

(the tables, best/, summary and plots: `segray.search.results`).

With MLflow tracking on, the search is a parent run (the config and search space, at the end
the summary, tables, plots and best checkpoint) and every trial a nested run whose params are
exactly its sampled values and whose metrics its rank 0 logs each epoch.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from segray.cluster import ResourceError, RunInterrupted, check_fits, ensure_ray
from segray.config import Config, apply_overrides
from segray.data import Fingerprint, Listing, inspect_data, prepared_with
from segray.data.split import write_splits
from segray.search.results import (
    DONE_MARKER,
    SEARCH_STOP,
    TuneResult,
    collect,
    config_from_yaml,
)
from segray.search.searcher import (
    BestPlateauStopper,
    ClusterSizedLimiter,
    RankedOptunaSearch,
    RecordingASHA,
    SearchStop,
)
from segray.search.settings import search_settings
from segray.search.space import SearchSpace, parse_space
from segray.storage import (
    Location,
    list_entries,
    read_json,
    read_text,
    where,
    write_json,
    write_text,
)
from segray.timeline import mark
from segray.tracking import (
    TRIAL_TAG,
    Tracker,
    flatten_params,
    save_run_id,
    saved_run_id,
    settings_from_config,
)
from segray.train import run_training, worker_resources

__all__ = ["TuneResult", "run_tune"]

logger = logging.getLogger(__name__)
EXPERIMENT = "tune"
DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's driver


# --------------------------------------------------------------------------- trial driver
def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    space: SearchSpace,
    trials_uri: str,
    tracking: dict[str, Any] | None = None,
    listing: Listing | None = None,
) -> None:
    """One trial: decode the sample, re-validate, train with DDP, report every epoch to Tune.

    ``tracking`` (the parent run's `Tracker.worker_spec`): the trial's nested MLflow run, found
    again by its ``segray.trial_id`` tag when Tune retries the trial. ``listing``: the dataset
    as the search listed it (the trial neither fingerprints nor lists it again)."""
    trial_id = tune.get_context().get_trial_id()
    name = f"trial_{trial_id}"
    mark("trial_start", run=name)
    sampled = space.decode(config)
    cfg = apply_overrides(Config.from_dict(base), sampled)
    settings = search_settings(cfg)
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
            monitor=(settings.metric, settings.mode),
            tracker=tracker,
            listing=listing,
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    write_json(marker, {"last": last, "best": result.best_metrics})
    mark("trial_end", run=name)


# --------------------------------------------------------------------------- driver
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
    s = search_settings(cfg)
    searcher = RankedOptunaSearch(
        metric=s.metric, mode=s.mode, sampler=sampler, max_epochs=s.max_epochs
    )
    return ClusterSizedLimiter(searcher, s.trial_resources, s.max_concurrent_trials)


def _scheduler(cfg: Config, trials_uri: str):
    if cfg.tune.scheduler == "none":
        return None
    s = search_settings(cfg)
    return RecordingASHA(
        trials_uri=trials_uri,
        time_attr="epoch",  # monotone across trial retries (training_iteration restarts at 1)
        metric=s.metric,
        mode=s.mode,
        max_t=s.max_epochs,
        grace_period=cfg.tune.grace_period,
        reduction_factor=cfg.tune.reduction_factor,
    )


def _stopper(cfg: Config, out: str) -> SearchStop | None:
    plateau = None
    if cfg.tune.plateau_trials is not None:
        s = search_settings(cfg)
        plateau = BestPlateauStopper(
            s.metric, s.mode, patience=cfg.tune.plateau_trials, max_epochs=s.max_epochs
        )
    return SearchStop(
        f"{out}/ray/{SEARCH_STOP}", plateau, cfg.tune.time_budget_s, f"{out}/config.yaml"
    )


@contextmanager
def _watch_sigint() -> Iterator[Callable[[], bool]]:
    """Around `Tuner.fit`: whether Tune caught a SIGINT (Ctrl-C) and returned early.

    Tune replaces the SIGINT handler while it runs, and on the first SIGINT it stops the
    search gracefully, puts back the handler it found and returns as if finished. So the
    handler installed here is in place again after the fit exactly when Tune caught one.
    """
    catching = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")
    )
    if not catching:  # Tune installs no handler (and a SIGINT raises KeyboardInterrupt)
        yield lambda: False
        return
    before = signal.getsignal(signal.SIGINT)

    def mine(signum, frame):  # a SIGINT outside Tune's loop: what it did before
        if callable(before):
            before(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, mine)
    caught = [False]
    try:
        yield lambda: caught[0]
    finally:
        caught[0] = signal.getsignal(signal.SIGINT) is mine
        signal.signal(signal.SIGINT, before)


def _trainable(
    cfg: Config,
    space: SearchSpace,
    trials_uri: str,
    tracking: dict[str, Any] | None = None,
    listing: Listing | None = None,
):
    fn = tune.with_parameters(  # the arguments go into Ray's object store once
        _trial,
        base=cfg.to_dict(),
        space=space,
        trials_uri=trials_uri,
        tracking=tracking,
        listing=listing,
    )
    # The trial driver only orchestrates: it must not hold a CPU its own workers need (on a
    # 2-CPU machine, 1 driver CPU + 2 worker CPUs waits forever). Tune needs a non-empty
    # bundle, so the driver reserves a little memory, which it does use, and no CPU.
    return tune.with_resources(fn, {"CPU": 0, "memory": DRIVER_MEMORY})


def search_exists(output: str | Path) -> bool:
    """Whether ``output`` (path or URI) holds a search that ``--resume`` can continue."""
    out = where(output)
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
    continue_with: str | None = None,
    fingerprint: Fingerprint | None = None,
) -> TuneResult:
    """Run (or with ``resume=True`` continue) the search described by ``cfg.tune``.

    ``fingerprint``: the caller's of ``cfg``'s dataset (``cfg`` prepared with it: `segray
    auto`, `segray cv`); the search then neither fingerprints nor lists the dataset again.

    Resuming, ``cfg`` (None: the saved config) may change only `SEARCH_RESUME_MUTABLE`, and the
    dataset must still match the saved ``fingerprint.json``. Interrupted (Ctrl-C), it
    publishes nothing and raises `RunInterrupted`, whose message ends with ``continue_with``
    (default ``segray tune --resume OUT``)."""
    started = time.time()
    out = where(output)
    cfg, saved_cfg = _config_to_run(cfg, out, resume)
    space = parse_space(cfg.tune.space, cfg)  # a bad space fails before Ray starts
    tracking = settings_from_config(cfg)  # a tracking URI without mlflow: fails here too
    ensure_ray(address)
    cfg, listing = _prepare(cfg, saved_cfg, out, resume, fingerprint)
    parent = _open_search_run(tracking, cfg, out, resume)
    tuner = _tuner(cfg, saved_cfg, space, out, resume, parent.worker_spec(), listing)
    try:
        with _watch_sigint() as interrupted:
            grid = tuner.fit()
        if interrupted():
            raise RunInterrupted("Ctrl-C")
        result = collect(cfg, space, grid, out, time.time() - started, tracker=parent)
    except KeyboardInterrupt as e:
        parent.end("KILLED")
        how = continue_with or f"segray tune --resume {out}"
        raise RunInterrupted(
            f"the search in {out} stopped before it finished ({e or 'Ctrl-C'}); nothing was "
            f"published; continue it with: {how}"
        ) from None
    except BaseException:
        parent.end("FAILED")
        raise
    _close_trial_runs(parent, result.trials)
    parent.end("FINISHED")
    return result


def _config_to_run(cfg: Config | None, out: str, resume: bool) -> tuple[Config, Config | None]:
    """(the config to run, the saved one when resuming): a resume without a config runs the
    saved one; a new search refuses an output that already holds one."""
    if resume:
        saved = read_text(f"{out}/config.yaml")
        if saved is None:
            raise FileNotFoundError(f"{out}: no config.yaml: not a segray tune output")
        saved_cfg = config_from_yaml(saved)
        return (saved_cfg if cfg is None else cfg), saved_cfg
    if cfg is None:
        raise ValueError("run_tune needs a config unless resuming")
    if _can_restore(f"{out}/ray/{EXPERIMENT}"):
        raise FileExistsError(
            f"{out} already holds a search: continue it with --resume {out} or choose another --output"
        )
    return cfg, None


def _prepare(
    cfg: Config,
    saved_cfg: Config | None,
    out: str,
    resume: bool,
    fingerprint: Fingerprint | None = None,
) -> tuple[Config, Listing]:
    """Before any trial (Ray running): the data inspected (``mask_mode: auto`` resolved) unless
    the caller's ``fingerprint`` is of this config's dataset, a resume checked against the saved
    config and data, a trial checked to fit the cluster; a new search writes its config.yaml,
    fingerprint.json and splits.json. Returns the config and the dataset's listing."""
    if resume or not prepared_with(cfg, fingerprint):
        cfg, fingerprint = inspect_data(cfg, echo=True)  # one summary line
    assert fingerprint is not None
    if saved_cfg is not None:
        _check_resume(saved_cfg, cfg, out, fingerprint.to_dict())
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
        write_splits(cfg, out, listing=fingerprint.listing)  # splits.json: split/fold keys
    return cfg, fingerprint.listing


def _tuner(
    cfg: Config,
    saved_cfg: Config | None,
    space: SearchSpace,
    out: str,
    resume: bool,
    tracking: dict[str, Any] | None,
    listing: Listing | None = None,
) -> tune.Tuner:
    """A new Tuner for the search, or with ``resume`` the one restored from ``OUT/ray/tune``."""
    exp_uri = f"{out}/ray/{EXPERIMENT}"
    trials_uri = f"{out}/ray/trials"
    trainable = _trainable(cfg, space, trials_uri, tracking, listing)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # lose little if the driver dies
    if resume:
        if not _can_restore(exp_uri):
            raise FileNotFoundError(f"{out}: no search state to resume under {exp_uri}")
        if saved_cfg is not None and not space.is_grid:
            _reopen_search(exp_uri, saved_cfg, cfg)
        exp = Location.parse(exp_uri)
        return tune.Tuner.restore(
            exp.path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=exp.fs,
        )
    return tune.Tuner(
        trainable,
        param_space=space.tune_param_space(),
        tune_config=tune.TuneConfig(
            search_alg=_searcher(cfg, space),
            scheduler=_scheduler(cfg, trials_uri),
            num_samples=1 if space.is_grid else cfg.tune.num_samples,
            # A searcher's concurrency follows the cluster (ClusterSizedLimiter); a grid
            # (no searcher) runs as many trials as the cluster holds at the start.
            max_concurrent_trials=search_settings(cfg).concurrency() if space.is_grid else None,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=Location.parse(f"{out}/ray").path,
            storage_filesystem=Location.parse(out).fs,
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            stop=_stopper(cfg, out),
        ),
    )


# Keys a resumed search may change: what each trial's training reads when it starts (its
# config comes from the search's config at every start), none of which changes a trial's
# trajectory. Everything else would make the restored trials and searcher state disagree.
SEARCH_RESUME_MUTABLE = (
    "data.loader_workers",
    "data.eval_batch_size",
    "train.max_failures",
    "train.heap_reuse",
    "tracking.",
    "segment.",
    "tune.num_samples",
    "tune.time_budget_s",
)
# The parts of fingerprint.json that describe the data (not the segray version or where
# the data lives).
_FINGERPRINT_KEYS = ("pairs", "images", "masks", "mask_histogram", "mapping", "class_fraction")


def _check_resume(saved: Config, cfg: Config, out: str, fingerprint: dict[str, Any]) -> None:
    """Refuse, in one line, a resume whose config changes more than `SEARCH_RESUME_MUTABLE`
    or whose dataset no longer matches ``OUT/fingerprint.json``; apply and print the rest."""
    from segray.config import ConfigError
    from segray.train import check_resume_config

    applied = check_resume_config(saved, cfg, out, mutable=SEARCH_RESUME_MUTABLE, what="search")
    before = read_json(f"{out}/fingerprint.json")
    if before is not None:
        now = json.loads(json.dumps(fingerprint, default=str))  # as fingerprint.json holds it
        differ = [k for k in _FINGERPRINT_KEYS if k in before and before.get(k) != now.get(k)]
        if differ:
            pairs = f" ({before.get('pairs')} -> {now.get('pairs')} pairs)" * ("pairs" in differ)
            raise ConfigError(
                f"--resume {out}: the dataset changed since the search started: "
                f"{', '.join(differ)} differ from {out}/fingerprint.json{pairs}; start a new "
                "search in another --output"
            )
    if applied:
        print(f"resume: applying {', '.join(applied)}", flush=True)
        write_text(f"{out}/config.yaml", cfg.to_yaml())


def _reopen_search(exp_uri: str, saved: Config, cfg: Config) -> None:
    """A resume that changes ``tune.num_samples`` or the time budget: Tune restores the trial
    count, and whether the search has finished, from its searcher's saved state, so they are
    set there (a larger budget or count reopens a search that had ended)."""
    import ray.cloudpickle as cloudpickle

    if (saved.tune.num_samples, saved.tune.time_budget_s) == (
        cfg.tune.num_samples,
        cfg.tune.time_budget_s,
    ):
        return
    folder = Location.parse(exp_uri)
    names = [i.base_name for i in list_entries(folder, what="list search state")]
    for name in fnmatch.filter(names, "search_gen_state-*.json"):
        loc = folder.join(name)
        state = cloudpickle.loads(loc.read_bytes())
        state["total_samples"] = cfg.tune.num_samples
        state["finished"] = state["counter"] >= cfg.tune.num_samples
        loc.write(cloudpickle.dumps(state))


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
