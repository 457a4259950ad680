"""`segray cv`: k-fold cross-validation as parallel DDP trials, then the fold ensemble.

config -> K folds of train + val (`segray.data.split.data_splits`; test stays held out; groups
of stems by ``data.group_by`` stay in one fold) -> one Ray Tune trial per fold, each a DDP
``TorchTrainer`` exactly as in `segray tune` (parallel as the cluster allows, resumable) ->
out-of-fold predictions of every fold's best checkpoint (one Ray task per fold, on a worker's
resources) -> the threshold and post-processing chosen on them, each step kept only where it
raises the mean out-of-fold Dice (nnU-Net's rule) -> outputs:

- ``cv.parquet``: one row per fold (its validation score and out-of-fold Dice), then the mean
  and the std over folds;
- ``oof.parquet``: per-image metrics of the out-of-fold predictions, before and after the
  chosen post-processing;
- ``ensemble/``: the K fold models and that choice, a checkpoint that `load_segmenter`,
  `segray evaluate`, `segray segment` and `segray export` take like any other;
- ``cv_summary.json`` beside the search's own files (trials.parquet, history.parquet, ...).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segray.cluster import interruptible, map_remote
from segray.config import Config
from segray.search.settings import search_settings
from segray.storage import where

__all__ = ["CVResult", "cv_config", "run_cv"]


@dataclass
class CVResult:
    output: str
    folds: pd.DataFrame  # cv.parquet
    oof: pd.DataFrame  # oof.parquet
    summary: dict[str, Any]
    ensemble: str  # the ensemble checkpoint (path or URI)


def cv_config(cfg: Config, folds: int) -> Config:
    """``cfg`` as a K-fold search: a grid over ``data.fold``, every fold trained in full.

    The config's own search space is dropped (cross-validation evaluates one configuration),
    and so are ASHA, the search's time budget and its plateau stop: a fold stopped early would
    bias the estimate and weaken the ensemble.
    """
    if folds < 2:
        raise ValueError(f"--folds must be >= 2, got {folds}")
    tree = cfg.to_dict()
    tree["data"].update(folds=folds, fold=None)
    tree["tune"].update(
        space={"data.fold": {"grid": list(range(folds))}},
        scheduler="none",
        num_samples=1,
        time_budget_s=None,  # a search's budget and plateau stop would cut folds short
        plateau_trials=None,
    )
    return Config.from_dict(tree)


def run_cv(
    cfg: Config | None,
    output: str | Path,
    *,
    folds: int = 5,
    resume: bool = False,
    address: str | None = None,
    continue_with: str | None = None,
    fingerprint: Any = None,
) -> CVResult:
    """Cross-validate ``cfg`` over ``folds`` folds into ``output`` (module docstring).

    ``resume=True`` continues an interrupted run in ``output`` with its saved config; folds
    that finished are not trained again; a config given then may change only what a resumed
    search may (`segray.search.run.SEARCH_RESUME_MUTABLE`). Interrupted (Ctrl-C), it publishes
    nothing and raises `RunInterrupted`, whose message ends with ``continue_with`` (default
    ``segray cv --resume OUT``). ``fingerprint``: the caller's of ``cfg``'s dataset (`segray
    auto`), so that nothing fingerprints or lists it again.
    """
    from segray.data import inspect_data, list_samples, prepared_with
    from segray.data.split import data_splits
    from segray.search.run import run_tune

    started = time.time()
    out = where(output)
    how = continue_with or f"segray cv --resume {out}"
    with interruptible(f"the cross-validation in {out}", how):
        if not resume:
            if cfg is None:
                raise ValueError("run_cv needs a config unless resuming")
            cfg = cv_config(cfg, folds)
            if not prepared_with(cfg, fingerprint):
                cfg, fingerprint = inspect_data(cfg, echo=True)
            # Too few images (or groups) for K folds fails here, before any trial starts.
            samples = list_samples(cfg.data, check=False, listing=fingerprint.listing)
            data_splits(samples, cfg.data.model_copy(update={"fold": 0}))
        if resume and cfg is not None:  # the resume compares it with the saved cv config
            cfg = cv_config(cfg, int(_saved_config(out).data.folds or folds))
        search = run_tune(
            cfg,
            out,
            resume=resume,
            address=address,
            continue_with=how,
            fingerprint=None if resume else fingerprint,
        )
        cfg = _saved_config(out)
        k = int(cfg.data.folds or folds)
        trials = search.trials.copy()
        fold_col = "param.data.fold"
        finished = (trials["status"] == "TERMINATED") & trials["stopped_by"].isna()
        done = trials[finished & trials["best_checkpoint"].notna()]
        missing = sorted(set(range(k)) - {int(f) for f in done[fold_col]})
        if missing:
            raise RuntimeError(
                f"{out}: fold{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} of {k} did not "
                f"finish (see trials.parquet); continue with: {how}"
            )
        done = done.sort_values(fold_col)
        checkpoints = [str(c) for c in done["best_checkpoint"]]
        print(f"cv: {k} folds trained; out-of-fold predictions of each fold's best checkpoint")
        listing = None if resume or fingerprint is None else fingerprint.listing
        predictions = _out_of_fold(cfg, checkpoints, listing)
        return _finish(cfg, out, done, checkpoints, predictions, time.time() - started)


# --------------------------------------------------------------------------- out-of-fold
def _out_of_fold(cfg: Config, checkpoints: list[str], listing: Any = None) -> list[dict[str, Any]]:
    """Every fold's validation images predicted by that fold's model, one Ray task a fold
    (``listing``: the dataset as the run listed it; without, each task lists it)."""
    from segray.train import worker_resources

    per = worker_resources(cfg)
    folds = map_remote(
        _predict_fold,
        [(c, listing) for c in checkpoints],
        num_cpus=per.get("CPU", 1),
        num_gpus=per.get("GPU", 0),
        max_retries=2,
    )
    return [row for fold_rows in folds for row in fold_rows]


def _predict_fold(checkpoint: str, listing: Any = None) -> list[dict[str, Any]]:
    """(key, fold, float16 probabilities, target) of every validation image of a fold model.
    The fold's config was prepared by the run; with its ``listing`` it is used as it is."""
    from segray.data import MaskMapper, list_samples, prepare_data
    from segray.data.split import data_splits
    from segray.inference.segmenter import load_segmenter

    segmenter = load_segmenter(checkpoint)
    cfg = segmenter.config if listing is not None else prepare_data(segmenter.config)
    samples = list_samples(cfg.data, check=False, listing=listing)
    samples = data_splits(samples, cfg.data)["val"]
    mapper = MaskMapper.from_config(cfg.data)
    rows = []
    for i, proba in segmenter.iter_batch_proba([s.image for s in samples]):
        sample = samples[i]
        assert sample.mask is not None
        target = mapper.read(sample.mask, sample.key, name=sample.mask)
        rows.append(
            {
                "key": sample.key,
                "fold": int(cfg.data.fold),
                "proba": proba.astype(np.float16),
                "target": target,
            }
        )
    return rows


# --------------------------------------------------------------------------- outputs
def _finish(
    cfg: Config,
    out: str,
    done: pd.DataFrame,
    checkpoints: list[str],
    predictions: list[dict[str, Any]],
    wall: float,
) -> CVResult:
    """Choose the post-processing on the out-of-fold predictions, then publish the fold
    table, the out-of-fold metrics, the summary and the ensemble."""
    from segray.inference.ensemble import write_ensemble
    from segray.inference.postprocess import PostProcess, choose_postprocessing
    from segray.storage import published, published_folder

    metric = search_settings(cfg).metric
    num_classes = len(cfg.data.classes)  # for the metrics; the model has 1 logit if binary
    probas = [r["proba"].astype(np.float32) for r in predictions]
    targets = [r["target"] for r in predictions]
    # Start from the fold models' own settings; keep a step only where it raises mean Dice.
    start = PostProcess.from_config(cfg.segment, 1 if num_classes == 2 else num_classes)
    choice = choose_postprocessing(probas, targets, start=start, ignore_index=cfg.data.ignore_index)
    oof = _oof_table(cfg, predictions, probas, targets, start, choice.postprocess)
    table, stats = _fold_table(metric, done, checkpoints, oof)
    summary = {
        "folds": len(done),
        "group_by": cfg.data.group_by,
        "metric": metric,
        f"{metric}_mean": stats[0][metric],
        f"{metric}_std": stats[1][metric],
        "oof_dice": _nan_mean(oof["dice"]),
        "oof_dice_postprocessed": _nan_mean(oof["dice_postprocessed"]),
        "postprocessing": choice.settings,
        "ensemble": f"{out}/ensemble",
        "wall_time_s": round(wall, 1),
    }
    with published_folder(f"{out}/ensemble") as local:  # readers see it whole or not at all
        write_ensemble(
            checkpoints,
            local,
            inference_settings=choice.settings,
            names=[f"fold_{int(f)}" for f in done["param.data.fold"]],
            metrics={k: v for k, v in summary.items() if k not in ("ensemble", "postprocessing")},
        )
    with published(out) as local:
        table.to_parquet(local / "cv.parquet", index=False)
        oof.to_parquet(local / "oof.parquet", index=False)
        (local / "cv_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary, table)
    return CVResult(out, table, oof, summary, f"{out}/ensemble")


def _oof_table(
    cfg: Config,
    predictions: list[dict[str, Any]],
    probas: list[np.ndarray],
    targets: list[np.ndarray],
    start: Any,
    chosen: Any,
) -> pd.DataFrame:
    """oof.parquet: every validation image's metrics, with the fold models' own
    post-processing (``start``) and with the ``chosen`` one (``_postprocessed`` columns)."""
    from segray.metrics import per_image_metrics

    num_classes, ignore = len(cfg.data.classes), cfg.data.ignore_index
    rows = []
    for r, proba, target in zip(predictions, probas, targets, strict=True):
        row: dict[str, Any] = {"key": r["key"], "fold": r["fold"]}
        for tag, pred in (("", start.mask(proba)), ("_postprocessed", chosen.mask(proba))):
            scores = per_image_metrics(pred, target, num_classes=num_classes, ignore_index=ignore)
            row.update({f"{name}{tag}": v for name, v in scores.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _fold_table(
    metric: str, done: pd.DataFrame, checkpoints: list[str], oof: pd.DataFrame
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(cv.parquet: one row per fold, then the mean and std rows; those two rows)."""
    fold_rows = []
    for (_, t), ckpt in zip(done.iterrows(), checkpoints, strict=True):
        f = int(t["param.data.fold"])
        mine = oof[oof["fold"] == f]
        fold_rows.append(
            {
                "fold": str(f),
                "trial_id": t["trial_id"],
                "num_val_images": len(mine),
                metric: float(t[f"best_{metric}"]),
                "best_epoch": int(t["best_epoch"]),
                "oof_dice": float(mine["dice"].mean()),
                "oof_dice_postprocessed": float(mine["dice_postprocessed"].mean()),
                "checkpoint": ckpt,
            }
        )
    table = pd.DataFrame(fold_rows)
    numeric = [metric, "oof_dice", "oof_dice_postprocessed"]
    stats = [
        {"fold": name, **{c: float(getattr(table[c], name)()) for c in numeric}}
        for name in ("mean", "std")
    ]
    return pd.concat([table, pd.DataFrame(stats)], ignore_index=True), stats


def _nan_mean(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _saved_config(out: str) -> Config:
    from segray.search.results import config_from_yaml
    from segray.storage import read_text

    text = read_text(f"{out}/config.yaml")
    if text is None:
        raise FileNotFoundError(f"{out}: no config.yaml: not a segray cv output")
    return config_from_yaml(text)


def _print_summary(s: dict[str, Any], table: pd.DataFrame) -> None:
    m = s["metric"]
    print(
        f"cv: {s['folds']} folds, {m} {s[f'{m}_mean']:.4f} +- {s[f'{m}_std']:.4f}; "
        f"out-of-fold Dice {s['oof_dice']:.4f} -> {s['oof_dice_postprocessed']:.4f} with "
        f"post-processing {s['postprocessing']}"
    )
    print(f"ensemble of the {s['folds']} fold models -> {s['ensemble']}")
