"""The results of a search: tables, best checkpoint, summary and plots, published to its output.

Read from each trial's own Ray Train run (its checkpoints' history), the single source of truth
across trial retries and search resumes, then staged locally and published to the output
(a local folder or a URI) in one step:

    OUT/trials.parquet, OUT/history.parquet, OUT/best/, OUT/summary.json, OUT/plots/

With MLflow tracking on, the summary, tables, plots and best checkpoint also go to the
search's parent run.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from segray.checkpoint import (
    HISTORY_FILE,
    INFERENCE_FILES,
    STATE_FILE,
    download_checkpoint,
)
from segray.cluster import RunInterrupted
from segray.config import Config, load_config
from segray.search.settings import SearchSettings, score_key, search_settings
from segray.search.space import SearchSpace
from segray.storage import (
    Location,
    copy_file,
    copy_tree,
    publish_folder,
    read_json,
    read_text,
    subfolders,
    with_retries,
)
from segray.tracking import Tracker, metric_values

__all__ = [
    "ASHA_MARKER",
    "DONE_MARKER",
    "SEARCH_STOP",
    "TuneResult",
    "collect",
    "config_from_yaml",
]


DONE_MARKER = "segray_done.json"  # in a trial's folder: its training returned (all epochs)
ASHA_MARKER = "segray_stopped.json"  # in a trial's folder: ASHA stopped it at a rung
SEARCH_STOP = "segray_search_stop.json"  # in OUT/ray: what ended the whole search (budget ...)


@dataclass
class TuneResult:
    output: str
    trials: pd.DataFrame
    history: pd.DataFrame
    summary: dict[str, Any]
    best: str | None


def config_from_yaml(text: str) -> Config:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        os.unlink(f.name)


# --------------------------------------------------------------------------- results
def collect(
    cfg: Config, space: SearchSpace, grid, out: str, wall: float, tracker: Tracker | None = None
) -> TuneResult:
    """The finished search's tables, summary, plots and best checkpoint, from Tune's result
    ``grid`` and each trial's own Train run, published to ``out`` (and to ``tracker``'s run).
    Trials Tune stopped for no recorded reason (an interrupt) raise `RunInterrupted`, and
    nothing is published."""
    settings = search_settings(cfg)
    search_stop = read_json(f"{out}/ray/{SEARCH_STOP}") or {}
    trials, history = _tables(settings, space, grid, f"{out}/ray/trials", search_stop)
    unfinished = int((trials["status"] == "INTERRUPTED").sum()) if len(trials) else 0
    if unfinished:  # Tune stopped them for no recorded reason: an interrupt. Publish nothing.
        raise RunInterrupted(f"{unfinished} of {len(trials)} trials did not finish")
    best_row = _best_row(trials, settings)
    summary = _summary(trials, settings, wall)
    with tempfile.TemporaryDirectory() as staging:
        stage = Path(staging)
        best_local = None
        if best_row is not None:
            summary["best"] = _best_summary(best_row, settings.metric, out)
            best_local = _fetch_checkpoint(best_row["best_checkpoint"], stage / "best")
        trials.to_parquet(stage / "trials.parquet", index=False)
        history.to_parquet(stage / "history.parquet", index=False)
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _plots(trials, space, settings.metric, settings.mode, stage / "plots")
        if tracker is not None:
            _log_search_outputs(tracker, stage, summary, out)
        _publish(stage, out)
    best_path = f"{out}/best" if best_local else None
    return TuneResult(out, trials, history, summary, best_path)


def _tables(
    settings: SearchSettings,
    space: SearchSpace,
    grid,
    trials_uri: str,
    search_stop: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, history): one row per trial of ``grid``, one row per trial per epoch."""
    rows, histories = [], []
    for r in grid:
        row, hist = _trial_row(r, settings, space, trials_uri, search_stop)
        rows.append(row)
        if hist is not None:
            histories.append(hist)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return pd.DataFrame(rows), history


def _trial_row(
    r,
    settings: SearchSettings,
    space: SearchSpace,
    trials_uri: str,
    search_stop: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """One trial's row of trials.parquet (params, status, best and last scores, epochs ...)
    and its history (None if it never reported an epoch), from its Tune result ``r``."""
    metric = settings.metric
    trial_id = (r.metrics or {}).get("trial_id") or _trial_id_from_path(r.path)
    params = space.decode(r.config or {})
    hist = _trial_history(trials_uri, trial_id)
    row: dict[str, Any] = {
        "trial_id": trial_id,
        **{f"param.{k}": _cell(v) for k, v in params.items()},
    }
    row["status"] = "ERROR" if r.error else "TERMINATED"
    row["stopped_by"] = None
    row["error"] = str(r.error).strip().splitlines()[-1][:500] if r.error else None
    row["wall_time_s"] = float((r.metrics or {}).get("time_total_s", math.nan))
    history = None
    if not hist.empty and metric in hist:
        sign = 1.0 if settings.mode == "max" else -1.0
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
        history = hist.assign(trial_id=trial_id)
    else:
        row.update({f"best_{metric}": math.nan, "epochs_run": 0, "best_checkpoint": None})
    if not r.error and row["epochs_run"] < settings.max_epochs:
        row["status"], row["stopped_by"] = _why_unfinished(trials_uri, trial_id, search_stop)
    row["stopped_early"] = row["stopped_by"] == "asha"  # by ASHA, at a rung
    return row, history


def _best_row(trials: pd.DataFrame, settings: SearchSettings) -> pd.Series | None:
    """The trial with the best finite score (a trial that diverged is never the best)."""
    col, mode = f"best_{settings.metric}", settings.mode
    ok = trials[trials[col].map(lambda v: score_key(v, mode) > -math.inf)] if col in trials else []
    if not len(ok):
        return None
    return ok.loc[ok[col].map(lambda v: score_key(v, mode)).idxmax()]


def _summary(trials: pd.DataFrame, settings: SearchSettings, wall: float) -> dict[str, Any]:
    """summary.json, its ``best`` left None (`_best_summary`)."""
    return {
        "num_trials": len(trials),
        "completed": int((trials["status"] == "TERMINATED").sum()) if len(trials) else 0,
        "errored": int((trials["status"] == "ERROR").sum()) if len(trials) else 0,
        "stopped_early": int(trials["stopped_early"].sum()) if len(trials) else 0,
        "stopped_by_budget": _count(trials, "stopped_by", "time budget"),
        "stopped_by_plateau": _count(trials, "stopped_by", "plateau"),
        "metric": settings.metric,
        "mode": settings.mode,
        "trial_epochs_total": int(trials["epochs_run"].sum()) if len(trials) else 0,
        "wall_time_s": round(wall, 1),
        "best": None,
    }


def _best_summary(best_row: pd.Series, metric: str, out: str) -> dict[str, Any]:
    """summary.json's ``best``: the best trial, its score, epoch and params, where it went."""
    return {
        "trial_id": best_row["trial_id"],
        metric: float(best_row[f"best_{metric}"]),
        "epoch": int(best_row["best_epoch"]),
        "params": {k[6:]: v for k, v in best_row.items() if k.startswith("param.")},
        "checkpoint": f"{out}/best",
    }


def _why_unfinished(
    trials_uri: str, trial_id: str | None, search_stop: dict[str, Any]
) -> tuple[str, str | None]:
    """(status, stopped_by) of a trial that ran fewer than all its epochs and did not fail.

    Its training returned (its own early stopping): finished. ASHA stopped it: the marker ASHA
    left. The whole search stopped (time budget, plateau): what stopped it. Otherwise Tune
    stopped it for no recorded reason: the search was interrupted."""
    folder = f"{trials_uri}/trial_{trial_id}"
    if trial_id is not None and read_text(f"{folder}/{DONE_MARKER}") is not None:
        return "TERMINATED", None
    if trial_id is not None and read_text(f"{folder}/{ASHA_MARKER}") is not None:
        return "TERMINATED", "asha"
    if search_stop.get("by"):
        return "TERMINATED", str(search_stop["by"])
    return "INTERRUPTED", None


def _count(trials: pd.DataFrame, column: str, value: Any) -> int:
    return int((trials[column] == value).sum()) if column in trials else 0


def _kept_epochs(trials_uri: str, trial_id: str | None) -> set[int]:
    """Epochs whose checkpoint Ray Train kept for the trial (it keeps the latest and the best
    by the metric, ``num_to_keep`` in all, and deletes the rest)."""
    try:
        names = subfolders(f"{trials_uri}/trial_{trial_id}", what="list trial")
    except OSError:
        return set()
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
    trial = Location.parse(f"{trials_uri}/trial_{trial_id}")
    names = subfolders(trial, what="list trial")
    ckpts = [n for n in names if n.startswith("checkpoint_epoch_")]
    for ckpt in reversed(ckpts):  # the newest readable one (a kill can cut the newest short)
        loc = trial.join(ckpt)
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
    """Copy the staged outputs to ``out`` (local folder or URI), replacing older ones.

    best/ first, published whole (`segray.storage.publish_folder`: on object storage behind a
    pointer written last), so a kill mid-publish never pairs one trial's model.pt with
    another's config.yaml; then the other files. Local disk: plots/ replaced whole too."""
    target = Location.parse(out)
    if (stage / "best").is_dir():
        publish_folder(stage / "best", target.join("best"))
    for item in sorted(stage.iterdir()):
        if item.name == "best":
            continue
        if not item.is_dir():
            copy_file(item, target.join(item.name))
        elif target.atomic_rename:
            publish_folder(item, target.join(item.name))
        else:
            copy_tree(item, target.join(item.name))


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
