"""The report of a search (`segray tune` output): the best trial and its parameters, the trials
table (sortable), the optimisation history and parameter importances, per-trial learning
curves, and which trials ASHA stopped early.

Reads ``summary.json``, ``trials.parquet``, ``history.parquet`` and ``plots/*.png`` only; the
trials' checkpoints are never opened.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from segray.report import html
from segray.report.plots import png_of, trial_curves
from segray.report.rundir import RunDir

__all__ = ["search_section"]

_PLOTS = (
    ("optimization_history.png", "Optimisation history"),
    ("param_importances.png", "Parameter importances"),
)


def search_section(run: RunDir, page: html.Page, *, anchor: str = "search") -> None:
    """Add the search's section to ``page``."""
    summary = run.json("summary.json")
    trials = run.parquet("trials.parquet")
    history = run.parquet("history.parquet") if run.exists("history.parquet") else pd.DataFrame()
    metric, mode = summary.get("metric", "val_dice"), summary.get("mode", "max")
    best = summary.get("best") or {}
    stopped = _stopped(trials)

    parts = [
        html.cards(
            {
                "trials": summary.get("num_trials", len(trials)),
                "completed": summary.get("completed"),
                "errored": summary.get("errored"),
                "stopped early (ASHA)": summary.get("stopped_early", len(stopped)),
                f"best {metric}": best.get(metric),
                "trial-epochs": summary.get("trial_epochs_total"),
                "wall time (s)": summary.get("wall_time_s"),
            }
        ),
        html.note(f"{run.uri} · objective: {mode}imise {metric}"),
    ]
    parts += _cross_validation(run)
    parts += _best(best, metric)
    parts += _trials(trials, metric, best.get("trial_id"), stopped)
    parts += _stopped_text(trials, stopped)
    parts += _plots(run, trials, metric, mode)
    if not history.empty and "trial_id" in history:
        metrics = [m for m in (metric, "val_loss", "train_loss") if m in history]
        parts.append(html.heading("Per-trial learning curves"))
        parts.append(
            html.note("the best trial drawn thick; trials ASHA stopped dashed, ending in a cross")
        )
        png = trial_curves(history, metrics, stopped=stopped, best=best.get("trial_id"))
        parts.append(html.image(png, "per-trial learning curves"))
    page.section(anchor, "Search", parts)


def _cross_validation(run: RunDir) -> list[str]:
    """A `segray cv` output (a search over folds): per-fold scores with their mean and std,
    the out-of-fold Dice before and after the post-processing chosen on it."""
    if not run.exists("cv.parquet"):
        return []
    folds = run.parquet("cv.parquet").drop(columns=["checkpoint"], errors="ignore")
    summary = run.json("cv_summary.json") if run.exists("cv_summary.json") else {}
    parts = [
        html.heading("Cross-validation"),
        html.table(folds.to_dict("records"), table_id="folds"),
    ]
    if summary:
        parts.append(
            html.kv_table(
                {
                    "out-of-fold Dice": summary.get("oof_dice"),
                    "with the chosen post-processing": summary.get("oof_dice_postprocessed"),
                    "chosen settings": summary.get("postprocessing"),
                    "ensemble": summary.get("ensemble"),
                }
            )
        )
    return parts


def _stopped(trials: pd.DataFrame) -> set[str]:
    if "stopped_early" not in trials:
        return set()
    return set(trials.loc[trials["stopped_early"].fillna(False).astype(bool), "trial_id"])


def _best(best: dict[str, Any], metric: str) -> list[str]:
    if not best:
        return [html.heading("Best trial"), html.note("no trial reported a metric")]
    items = {"trial": best.get("trial_id"), metric: best.get(metric), "epoch": best.get("epoch")}
    items.update(best.get("params") or {})
    items["checkpoint"] = best.get("checkpoint")
    return [html.heading("Best trial"), html.kv_table(items)]


def _trials(trials: pd.DataFrame, metric: str, best_id: str | None, stopped: set[str]) -> list[str]:
    first = ["trial_id", *[c for c in trials if c.startswith("param.")], "status"]
    wanted = [
        *first,
        f"best_{metric}",
        "best_epoch",
        "epochs_run",
        "stopped_early",
        f"last_{metric}",
        "last_val_loss",
        "train_time_s",
        "wall_time_s",
        "error",
    ]
    columns = [c for c in wanted if c in trials]
    rows = [{c: _cell(r[c]) for c in columns} for _, r in trials.iterrows()]
    classes = [
        "best"
        if r["trial_id"] == best_id
        else "error"
        if r.get("status") == "ERROR"
        else "stopped"
        if r["trial_id"] in stopped
        else ""
        for r in rows
    ]
    renamed = [{_short(c): v for c, v in r.items()} for r in rows]
    return [
        html.heading("Trials"),
        html.note("click a column header to sort; the best trial is highlighted"),
        html.table(renamed, [_short(c) for c in columns], table_id="trials", row_class=classes),
    ]


def _short(column: str) -> str:
    return column.removeprefix("param.")


def _cell(value: Any) -> Any:
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _stopped_text(trials: pd.DataFrame, stopped: set[str]) -> list[str]:
    parts = [html.heading("Stopped early by ASHA")]
    if not stopped:
        return [*parts, html.note("no trial was stopped early: every trial ran all its epochs")]
    rows = trials[trials["trial_id"].isin(stopped)]
    text = ", ".join(
        f"{r['trial_id']} after {int(r['epochs_run'])} epoch{'s' * (int(r['epochs_run']) != 1)}"
        for _, r in rows.iterrows()
    )
    return [*parts, html.note(f"{len(stopped)} of {len(trials)} trials: {text}", cls="")]


def _plots(run: RunDir, trials: pd.DataFrame, metric: str, mode: str) -> list[str]:
    """The search's own plots (plots/*.png); the history redrawn when it has none."""
    figures = []
    for name, title in _PLOTS:
        if run.exists(f"plots/{name}"):
            figures.append(html.image(run.bytes(f"plots/{name}"), title, caption=title))
    if not any(run.exists(f"plots/{name}") for name, _ in _PLOTS[:1]):
        png = _history_plot(trials, metric, mode)
        if png is not None:
            figures.insert(
                0, html.image(png, "optimisation history", caption="Optimisation history")
            )
    if not figures:
        return []
    return [html.heading("Optimisation history and parameter importances"), html.row(figures)]


def _history_plot(trials: pd.DataFrame, metric: str, mode: str) -> bytes | None:
    col = f"best_{metric}"
    if col not in trials:
        return None
    values = trials[col].astype(float).to_numpy()
    if not np.isfinite(values).any():
        return None
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    x = np.arange(len(values))
    ax.plot(x, values, "o", label=metric)
    acc = np.fmax.accumulate if mode == "max" else np.fmin.accumulate
    filled = np.where(np.isfinite(values), values, -math.inf if mode == "max" else math.inf)
    ax.step(x, acc(filled), where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="Optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return png_of(fig)
