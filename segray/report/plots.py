"""The report's figures, drawn with matplotlib's Agg canvas straight to PNG bytes (no pyplot,
no display, no global state).

    png = histogram({"foreground_fraction": values}, title="Predicted foreground")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["curves", "histograms", "png_of", "trial_curves"]

_DPI = 90


def png_of(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def histograms(columns: dict[str, np.ndarray], *, bins: int = 30) -> bytes:
    """One histogram per column side by side; NaNs are left out and counted in the title."""
    n = max(1, len(columns))
    fig = Figure(figsize=(3.6 * n, 2.9))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (name, values) in zip(axes, columns.items(), strict=False):
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        missing = len(values) - len(finite)
        if len(finite):
            ax.hist(finite, bins=bins, range=(0.0, 1.0), color="#0a66c2", alpha=0.85)
            ax.axvline(float(np.mean(finite)), color="#d62728", linewidth=1.2, label="mean")
            ax.legend(loc="upper right", fontsize=8)
        title = name + (f"  ({missing} n/a)" if missing else "")
        ax.set(title=title, xlabel="value", ylabel="images", xlim=(0, 1))
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_of(fig)


def curves(history: pd.DataFrame, panels: Sequence[Sequence[str]], *, x: str = "epoch") -> bytes:
    """Learning curves: one panel per group of columns (e.g. losses, scores), vs ``x``."""
    panels = [[c for c in group if c in history] for group in panels]
    panels = [g for g in panels if g]
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 3.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, group in zip(axes, panels, strict=False):
        for column in group:
            ax.plot(history[x], history[column], marker="o", markersize=3, label=column)
        ax.set(xlabel=x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_of(fig)


def trial_curves(
    history: pd.DataFrame,
    metrics: Sequence[str],
    *,
    stopped: set[str],
    best: str | None,
    x: str = "epoch",
) -> bytes:
    """Per-trial learning curves, one panel per metric: every trial a line, the best trial
    thick, trials ASHA stopped early dashed and ending in a cross."""
    metrics = [m for m in metrics if m in history]
    cols = min(3, max(1, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig = Figure(figsize=(5.0 * cols, 3.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    palette = [f"C{i}" for i in range(10)]
    trials = list(dict.fromkeys(history["trial_id"]))
    for ax, metric in zip(axes, metrics, strict=False):
        for i, trial in enumerate(trials):
            h = history[history["trial_id"] == trial].sort_values(x)
            is_stopped = trial in stopped
            ax.plot(
                h[x],
                h[metric],
                color=palette[i % len(palette)],
                linewidth=2.6 if trial == best else 1.2,
                linestyle="--" if is_stopped else "-",
                marker="o",
                markersize=3,
                label=f"{trial}{' (best)' if trial == best else ''}"
                f"{' (stopped)' if is_stopped else ''}",
            )
            if is_stopped and len(h):
                ax.plot(h[x].iloc[-1], h[metric].iloc[-1], "x", color="black", markersize=7)
        ax.set(title=metric, xlabel=x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if len(metrics):
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    fig.set_layout_engine("constrained")
    return png_of(fig)
