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

With MLflow tracking on, the search is a parent run (the config and search space, at the end
the summary, tables, plots and best checkpoint) and every trial a nested run whose params are
exactly its sampled values and whose metrics its rank 0 logs each epoch.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from segray.checkpoint import (
    HISTORY_FILE,
    INFERENCE_FILES,
    STATE_FILE,
    copy_checkpoint,
    download_checkpoint,
)
from segray.cluster import ResourceError, check_fits, ensure_ray
from segray.config import Config, apply_overrides, load_config
from segray.data import inspect_data
from segray.search_space import SearchSpace, parse_space
from segray.searcher import ClusterSizedLimiter, RankedOptunaSearch, score_key
from segray.storage import Location, with_retries
from segray.tracking import (
    TRIAL_TAG,
    Tracker,
    flatten_params,
    metric_values,
    save_run_id,
    saved_run_id,
    settings_from_config,
)
from segray.train import run_training, worker_resources

__all__ = ["TuneResult", "run_tune"]

EXPERIMENT = "tune"
DONE_MARKER = "segray_done.json"
DRIVER_MEMORY = 256 * 1024**2  # bytes reserved by each trial's driver


@dataclass
class TuneResult:
    output: str
    trials: pd.DataFrame
    history: pd.DataFrame
    summary: dict[str, Any]
    best: str | None


# --------------------------------------------------------------------------- storage
def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow filesystem + path for a local path or any URI (`segray.storage`)."""
    loc = Location.parse(uri)
    return loc.fs, loc.path


def _write_json(uri: str, data: Any) -> None:
    _write_text(uri, json.dumps(data, indent=2, default=str))


def _read_json(uri: str) -> Any | None:
    text = _read_text(uri)
    return None if text is None else json.loads(text)


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
    done = _read_json(marker)
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
    _write_json(marker, {"last": last, "best": result.best_metrics})


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
    return _read_text(f"{out}/config.yaml") is not None and _can_restore(f"{out}/ray/{EXPERIMENT}")


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
        saved = _read_text(f"{out}/config.yaml")
        if saved is None:
            raise FileNotFoundError(f"{out}: no config.yaml: not a segray tune output")
        cfg = _config_from_yaml(saved)
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
        _write_text(f"{out}/config.yaml", cfg.to_yaml())
        _write_text(f"{out}/fingerprint.json", fingerprint.to_json())

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
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=Location.parse(f"{out}/ray").path,
                storage_filesystem=Location.parse(out).fs,
                failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
            ),
        )
    try:
        grid = tuner.fit()
        result = _collect(cfg, space, grid, out, time.time() - started, tracker=parent)
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


def _log_search_outputs(parent: Tracker, stage: Path, summary: dict[str, Any], out: str) -> None:
    """The summary of a finished search on its parent run: counts and best score as metrics,
    the best trial and its params as tags, the tables, plots and best checkpoint as artefacts
    (on object storage, the best checkpoint only linked, by a tag)."""
    if not parent.active:
        return
    counts = {k: summary[k] for k in ("num_trials", "completed", "errored", "stopped_early")}
    best = summary.get("best") or {}
    metric = summary["metric"]
    if metric in best:
        counts[f"best_{metric}"] = best[metric]
    parent.log_metrics(metric_values(counts))
    tags: dict[str, Any] = {f"best.{k}": v for k, v in (best.get("params") or {}).items()}
    if best:
        tags.update({"segray.best_trial_id": best["trial_id"], "segray.best_epoch": best["epoch"]})
    parent.set_tags(tags)
    for name in ("summary.json", "trials.parquet", "history.parquet", "plots"):
        parent.log_artifact(stage / name, "plots" if name == "plots" else None)
    if (stage / "best").is_dir():
        if Location.parse(out).is_local:
            for file in INFERENCE_FILES:
                parent.log_artifact(stage / "best" / file, "best")
        else:
            parent.set_tags({"segray.best_checkpoint": f"{out}/best"})


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


# --------------------------------------------------------------------------- results
def _collect(
    cfg: Config, space: SearchSpace, grid, out: str, wall: float, tracker: Tracker | None = None
) -> TuneResult:
    metric, mode = cfg.tune.metric, cfg.tune.mode
    sign = 1.0 if mode == "max" else -1.0
    max_epochs = cfg.tune.max_epochs or cfg.train.epochs
    rows, histories = [], []
    trials_uri = f"{out}/ray/trials"
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or _trial_id_from_path(r.path)
        params = space.decode(r.config or {})
        hist = _trial_history(trials_uri, trial_id)
        row: dict[str, Any] = {
            "trial_id": trial_id,
            **{f"param.{k}": _cell(v) for k, v in params.items()},
        }
        row["status"] = "ERROR" if r.error else "TERMINATED"
        row["error"] = str(r.error).strip().splitlines()[-1][:500] if r.error else None
        row["wall_time_s"] = float((r.metrics or {}).get("time_total_s", math.nan))
        if not hist.empty and metric in hist:
            best_i = _best_kept_epoch(hist, metric, sign, _kept_epochs(trials_uri, trial_id))
            best_epoch = int(hist.loc[best_i, "epoch"])
            row.update(
                {
                    f"best_{metric}": float(hist.loc[best_i, metric]),
                    "best_epoch": best_epoch,
                    "best_checkpoint": f"{trials_uri}/trial_{trial_id}/checkpoint_epoch_{best_epoch:04d}",
                    f"last_{metric}": float(hist[metric].iloc[-1]),
                    "last_val_loss": float(hist["val_loss"].iloc[-1])
                    if "val_loss" in hist
                    else math.nan,
                    "epochs_run": int(hist["epoch"].max()),
                    "train_time_s": float(hist["epoch_time_s"].sum()),
                }
            )
            row["stopped_early"] = bool(
                not r.error
                and row["epochs_run"] < max_epochs
                and not bool(hist["stopped_early"].iloc[-1])
            )
            histories.append(hist.assign(trial_id=trial_id))
        else:
            row.update(
                {
                    f"best_{metric}": math.nan,
                    "epochs_run": 0,
                    "stopped_early": False,
                    "best_checkpoint": None,
                }
            )
        rows.append(row)
    trials = pd.DataFrame(rows)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()

    best_row = None
    col = f"best_{metric}"
    ok = trials[trials[col].map(lambda v: score_key(v, mode) > -math.inf)] if col in trials else []
    if len(ok):  # a trial with no finite score (diverged) is never the best
        best_row = ok.loc[ok[col].map(lambda v: score_key(v, mode)).idxmax()]
    summary = {
        "num_trials": len(trials),
        "completed": int((trials["status"] == "TERMINATED").sum()) if len(trials) else 0,
        "errored": int((trials["status"] == "ERROR").sum()) if len(trials) else 0,
        "stopped_early": int(trials["stopped_early"].sum()) if len(trials) else 0,
        "metric": metric,
        "mode": mode,
        "trial_epochs_total": int(trials["epochs_run"].sum()) if len(trials) else 0,
        "wall_time_s": round(wall, 1),
        "best": None,
    }
    with tempfile.TemporaryDirectory() as staging:
        stage = Path(staging)
        best_local = None
        if best_row is not None:
            params = {k[6:]: v for k, v in best_row.items() if k.startswith("param.")}
            summary["best"] = {
                "trial_id": best_row["trial_id"],
                metric: float(best_row[f"best_{metric}"]),
                "epoch": int(best_row["best_epoch"]),
                "params": params,
                "checkpoint": f"{out}/best",
            }
            best_local = _fetch_checkpoint(best_row["best_checkpoint"], stage / "best")
        trials.to_parquet(stage / "trials.parquet", index=False)
        history.to_parquet(stage / "history.parquet", index=False)
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _plots(trials, space, metric, mode, stage / "plots")
        if tracker is not None:
            _log_search_outputs(tracker, stage, summary, out)
        _publish(stage, out)
    best_path = f"{out}/best" if best_local else None
    return TuneResult(out, trials, history, summary, best_path)


def _kept_epochs(trials_uri: str, trial_id: str | None) -> set[int]:
    """Epochs whose checkpoint Ray Train kept for the trial (it keeps the latest and the best
    by the metric, ``num_to_keep`` in all, and deletes the rest)."""
    fs, path = _fs(f"{trials_uri}/trial_{trial_id}")
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return set()
    names = (i.base_name for i in infos if i.type == pafs.FileType.Directory)
    return {int(m.group(1)) for n in names if (m := re.fullmatch(r"checkpoint_epoch_(\d+)", n))}


def _best_kept_epoch(hist: pd.DataFrame, metric: str, sign: float, kept: set[int]) -> Any:
    """The history row of the best epoch that still has its checkpoint; ties go to the later
    epoch (a model stuck on one prediction scores the same every epoch, and Ray keeps the
    later checkpoints of a tie). Without any kept checkpoint: the best epoch by the metric.
    NaN and infinite values rank below every finite one (a diverged epoch is never best)."""
    mode = "max" if sign > 0 else "min"
    score = hist[metric].map(lambda v: score_key(v, mode))
    ranked = hist.assign(_score=score).sort_values(["_score", "epoch"], kind="stable")
    with_ckpt = ranked[ranked["epoch"].astype(int).isin(kept)]
    return (with_ckpt if len(with_ckpt) else ranked).index[-1]


def _trial_id_from_path(path: str | None) -> str | None:
    """A trial that never reported: its id from Tune's trial folder name (``_trial_<id>_...``)."""
    m = re.search(r"_trial_([0-9a-f]+)_", Path(path or "").name)
    return m.group(1) if m else None


def _trial_history(trials_uri: str, trial_id: str | None) -> pd.DataFrame:
    """A trial's per-epoch history as its Train run recorded it: the single source of truth.

    It lives in the latest checkpoint's train state, so it survives trial retries and search
    resumes (Tune's own result stream restarts with them) and covers trials ASHA stopped.
    """
    if trial_id is None:
        return pd.DataFrame()
    fs, root = _fs(f"{trials_uri}/trial_{trial_id}")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    ckpts = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_epoch_")
    )
    for ckpt in reversed(ckpts):  # the newest readable one (a kill can cut the newest short)
        loc = Location(fs, ckpt, ckpt)
        try:  # the small history file; a checkpoint of an older segray: its train state
            if with_retries(loc.join(HISTORY_FILE).exists, what="stat"):
                rows = json.loads(with_retries(loc.join(HISTORY_FILE).read_bytes, what="read"))
            else:
                data = with_retries(loc.join(STATE_FILE).read_bytes, what="read")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                rows = state.get("history", [])
        except (OSError, RuntimeError, EOFError, ValueError):
            continue
        return pd.DataFrame(rows)
    return pd.DataFrame()


def _cell(v: Any) -> Any:
    """Parquet-friendly: lists become their JSON text, so every row of a column has one type."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _fetch_checkpoint(uri: Any, dst: Path) -> Path | None:
    """The files of a trial's checkpoint that inference and reports need (not its optimizer
    state), copied to the local folder ``dst``."""
    if not isinstance(uri, str) or not uri:
        return None
    return download_checkpoint(uri, dst, (*INFERENCE_FILES, HISTORY_FILE))


def _publish(stage: Path, out: str) -> None:
    """Copy the staged outputs to ``out`` (local folder or URI), replacing older ones."""
    fs, path = _fs(out)
    if isinstance(fs, pafs.LocalFileSystem):
        dst = Path(path)
        dst.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():
            if item.is_dir():
                copy_checkpoint(item, dst / item.name) if item.name == "best" else _replace_dir(
                    item, dst / item.name
                )
            else:
                os.replace(item, dst / item.name)
        return
    pafs.copy_files(
        str(stage), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def _replace_dir(src: Path, dst: Path) -> None:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def _write_text(uri: str, text: str) -> None:
    """Publish a small file atomically (single PUT on object stores), retried."""
    with_retries(Location.parse(uri).write, text.encode(), what="write")


def _read_text(uri: str) -> str | None:
    loc = Location.parse(uri)
    if with_retries(loc.info, what="stat").type != pafs.FileType.File:
        return None
    return with_retries(loc.read_bytes, what="read").decode()


def _config_from_yaml(text: str) -> Config:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        os.unlink(f.name)


def _plots(trials: pd.DataFrame, space: SearchSpace, metric: str, mode: str, folder: Path) -> None:
    """Optuna's optimisation-history and parameter-importance plots, from the finished trials."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    col = f"best_{metric}"
    if col not in trials:
        return
    done = trials[trials[col].map(lambda v: score_key(v, mode) > -math.inf)]  # finite only
    if done.empty:
        return
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = space.optuna_distributions()
    for _, row in done.iterrows():
        params = {p.key: row[f"param.{p.key}"] for p in space.params}  # encoded like the space
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(row[col]))
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = ovm.plot_optimization_history(study)
        ax.figure.savefig(folder / "optimization_history.png", dpi=110, bbox_inches="tight")
        if len(done) >= 2 and len(space.params) >= 1:
            try:
                ax = ovm.plot_param_importances(study)
                ax.figure.savefig(folder / "param_importances.png", dpi=110, bbox_inches="tight")
            except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. all values equal
                pass
    import matplotlib.pyplot as plt

    plt.close("all")
