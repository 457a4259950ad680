"""The report of a training run (`segray train` output) and of an evaluation (`segray evaluate`
output).

A training run: learning curves, the per-epoch metrics table and the best epoch's metrics
(``history.parquet``, ``checkpoints/best/metrics.json``; never the weights).
An evaluation: the metrics (overall and per class), ROC and PR curves, the per-image scores
and the overlays of the worst images, whose false positives and false negatives are drawn in
two distinct colours (`segray.overlay.ERROR_COLOURS`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from segray.overlay import ERROR_LEGEND, IGNORED
from segray.report import html
from segray.report.plots import curves
from segray.report.rundir import RunDir

__all__ = ["evaluation_section", "training_section"]

_EPOCH_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_roc_auc",
    "val_pr_auc",
    "epoch_time_s",
]
_HEADLINE = ("dice", "iou", "accuracy", "precision", "recall", "roc_auc", "pr_auc")
_PER_CLASS = ("dice", "iou", "precision", "recall", "f1", "specificity", "roc_auc", "pr_auc")


def training_section(run: RunDir, page: html.Page, *, anchor: str = "training") -> None:
    """Add a training run's section to ``page``."""
    history = run.parquet("history.parquet")
    best = _best_metrics(run)
    parts = []
    if not history.empty and "val_dice" in history:
        i = int(history["val_dice"].astype(float).idxmax())
        parts.append(
            html.cards(
                {
                    "epochs": len(history),
                    "best val_dice": float(history.loc[i, "val_dice"]),
                    "at epoch": int(history.loc[i, "epoch"]),
                    "last val_loss": float(history["val_loss"].iloc[-1])
                    if "val_loss" in history
                    else None,
                }
            )
        )
    parts.append(html.note(run.uri))
    if not history.empty and "epoch" in history:
        parts.append(html.heading("Learning curves"))
        png = curves(
            history,
            [
                ["train_loss", "val_loss"],
                ["val_dice", "val_iou", "val_accuracy", "val_roc_auc", "val_pr_auc"],
                ["lr"],
            ],
        )
        parts.append(html.image(png, "learning curves"))
        columns = [c for c in _EPOCH_COLUMNS if c in history]
        rows = [{c: _num(r[c]) for c in columns} for _, r in history.iterrows()]
        parts += [html.heading("Metrics per epoch"), html.table(rows, columns, table_id="epochs")]
    if best:
        shown = {k: v for k, v in best.items() if k.startswith("val_") and "_" not in k[4:]}
        shown = {"epoch": best.get("epoch"), **shown}
        parts += [html.heading("Best checkpoint"), html.kv_table(shown)]
    page.section(anchor, "Training run", parts)


def evaluation_section(run: RunDir, page: html.Page, *, anchor: str = "evaluation") -> None:
    """Add an evaluation's section to ``page``."""
    metrics = run.json("metrics.json")
    per_image = run.parquet("per_image.parquet")
    parts = [
        html.cards(
            {
                **{k: metrics.get(k) for k in _HEADLINE if k in metrics},
                "images": metrics.get("num_images"),
            }
        ),
        html.note(
            f"{run.uri} · split {metrics.get('split', '?')} of {metrics.get('data', '?')} · "
            f"checkpoint {metrics.get('checkpoint', '?')}"
        ),
    ]
    classes = _per_class(metrics)
    if classes:
        parts += [
            html.heading("Metrics per class"),
            html.table(classes, ["class", *_PER_CLASS], sortable=False),
        ]
    if run.exists("roc_pr.png"):
        parts += [
            html.heading("ROC and precision-recall"),
            html.image(run.bytes("roc_pr.png"), "ROC and PR curves"),
        ]
    overlays = run.files("overlays", ".png")
    if overlays:
        parts += [
            html.heading(f"Worst {len(overlays)} images by Dice"),
            html.note("image | ground truth | prediction | errors, worst first"),
            html.legend([*ERROR_LEGEND, ("ignored", IGNORED)]),
            *(html.image(run.bytes(f"overlays/{name}"), name, cls="wide") for name in overlays),
        ]
    if not per_image.empty:
        rows = [{c: _num(v) for c, v in r.items()} for _, r in per_image.iterrows()]
        columns = [c for c in per_image.columns if c != "image"]
        parts += [
            html.heading("Per-image scores"),
            html.note("click a column header to sort"),
            *_boundary_note(metrics),
            html.table(rows, columns, table_id="per-image"),
        ]
    page.section(anchor, "Evaluation", parts)


def _per_class(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``<metric>_<class>`` keys, one per class, in the order they appear."""
    names: list[str] = []
    pattern = re.compile(rf"^({'|'.join(_PER_CLASS)})_(.+)$")
    for key in metrics:
        m = pattern.match(key)
        if m and m.group(2) not in names and not m.group(2).startswith("auc"):
            names.append(m.group(2))
    rows = []
    for name in names:
        rows.append({"class": name, **{k: metrics.get(f"{k}_{name}") for k in _PER_CLASS}})
    return rows


def _boundary_note(metrics: dict[str, Any]) -> list[str]:
    """How many images the boundary means penalised or left out (`segray.structure`)."""
    penalised = metrics.get("num_images_boundary_penalised")
    if penalised is None:
        return []
    return [
        html.note(
            f"boundary metrics: {penalised} images with foreground in only one of target and "
            "prediction scored the worst case (hd95 = msd = the image diagonal, boundary_f1 0) "
            f"and count in the means; {metrics.get('num_images_boundary_empty', 0)} with "
            "foreground in neither are undefined and left out"
        )
    ]


def _num(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is pd.NA:
        return None
    return value


def _best_metrics(run: RunDir) -> dict[str, Any]:
    """``checkpoints/best/metrics.json``; on object storage, of the version its pointer names."""
    from segray.storage import resolve_published, with_retries

    loc = resolve_published(run.loc.join("checkpoints", "best")).join("metrics.json")
    if not with_retries(loc.exists, what="stat"):
        return {}
    return json.loads(with_retries(loc.read_bytes, what="read report input"))
