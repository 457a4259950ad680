"""`segray auto` after the configure stage: search, cross-validate, test, segment, report.

Each stage records what the later ones need in the run's state (`segray.auto.progress`), so a
resumed run skips the stages that finished: ``state["summary"]`` holds their outcomes,
``state["times"]`` their wall times and ``state["model"]`` the model the test scores.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from segray.auto.plan import CV_FOLD_FACTOR, TRIAL_STARTUP_S, Plan
from segray.auto.progress import finished_search, save_state
from segray.auto.result import SUMMARY, AutoResult
from segray.config import Config

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["print_summary", "run_stages", "stage"]


def run_stages(
    prep: AutoResult, out: str, state: dict[str, Any], started: float, *, address: str | None
) -> AutoResult:
    """Search, cross-validate, test and segment with the configured ``prep``; a stage that
    finished before (``state["summary"]`` holds it) is not run again, and the progress is
    saved after each."""
    summary = state["summary"]
    fp = prep.fingerprint  # None when resumed: each stage then prepares its own
    search = _search(prep.config, out, address, state["times"], done="search" in summary, fp=fp)
    summary["search"] = _search_summary(search, prep.config)
    save_state(out, state)
    if "cv" in summary and state.get("model"):  # cross-validated before
        model, model_kind = state["model"]
    else:
        model, model_kind = search.best, "best trial"
    if prep.plan.folds >= 2 and "cv" not in summary:
        model, model_kind = _cross_validate(search, prep, out, state, started, address)
    state["model"] = [model, model_kind]
    save_state(out, state)
    _test(model, model_kind, out, state, fp.listing if fp is not None else None)
    if state["inputs"]["unlabelled"]:
        _segment(model, out, state)
    return _finish(prep, out, state, model, started)


def _search_summary(search, cfg: Config) -> dict[str, Any]:
    best = search.summary["best"]
    return {
        "trials": search.summary["num_trials"],
        "stopped_early": search.summary["stopped_early"],
        "best_params": best["params"],
        "best_val": best[cfg.tune.metric],
        "metric": cfg.tune.metric,
    }


def _search(
    cfg: Config,
    out: str,
    address: str | None,
    times: dict[str, float],
    *,
    done: bool = False,
    fp: Any = None,
):
    """The search in OUT/tune: read back if it finished before (``done``), resumed from its
    saved state if it started, else started."""
    from segray.search.run import run_tune, search_exists

    if done:
        print(f"\n== search: finished before, read from {out}/tune", flush=True)
        return finished_search(f"{out}/tune")
    stage(
        "search",
        f"Optuna TPE + ASHA over {', '.join(cfg.tune.space)} "
        + (
            f"within {cfg.tune.time_budget_s:.0f}s"
            if cfg.tune.time_budget_s is not None
            else f"in {cfg.tune.num_samples} trials"
        )
        + f", {cfg.train.num_workers} DDP worker(s) a trial",
    )
    t0 = time.time()
    how = f"segray auto --resume {out}"
    resume = search_exists(f"{out}/tune")
    search = run_tune(
        None if resume else cfg,
        f"{out}/tune",
        resume=resume,
        address=address,
        continue_with=how,
        fingerprint=None if resume else fp,
    )
    times["search"] = round(times.get("search", 0.0) + time.time() - t0, 1)
    if search.best is None:
        raise RuntimeError(f"no trial of the search finished: see {out}/tune/trials.parquet")
    return search


def _cross_validate(
    search, prep: AutoResult, out: str, state: dict[str, Any], started: float, address: str | None
) -> tuple[str, str]:
    """The CV of the best config over the folds that still fit the budget, and the model to
    test: their ensemble, or the best trial when not even 2 folds fit."""
    cfg, plan, summary = prep.config, prep.plan, state["summary"]
    left = state["inputs"]["time_budget_s"] - (time.time() - started)
    cost = measured_cost(search.trials, plan, state["times"].get("search"))
    summary["measured"] = {"trial_startup_s": round(cost[0], 1), "epoch_s": round(cost[1], 2)}
    folds = _folds_that_fit(cfg, plan, cost, left)
    if folds < 2:
        need = _cv_s(2, cost, plan)
        print(
            f"\ncross-validation skipped: 2 folds need ~{need:.0f}s, "
            f"{max(left, 0):.0f}s of the budget is left",
            flush=True,
        )
        summary["cv"] = {"skipped": f"2 folds need ~{need:.0f}s, {max(left, 0):.0f}s left"}
        return search.best, "best trial"
    if folds < plan.folds:
        print(f"\n{folds} folds instead of {plan.folds}: what the budget holds", flush=True)
    cv = _cv(search.best, out, folds, address, state["times"], prep.fingerprint)
    metric = cfg.tune.metric
    keys = ("folds", f"{metric}_mean", f"{metric}_std", "oof_dice", "oof_dice_postprocessed")
    summary["cv"] = {k: cv.summary.get(k) for k in (*keys, "postprocessing")}
    return cv.ensemble, f"{folds}-fold ensemble"


def _folds_that_fit(cfg: Config, plan: Plan, cost: tuple[float, float], left: float) -> int:
    """The planned folds, fewer while they overrun what is ``left`` of the budget, at the
    trial ``cost`` the search measured: it may have ended early (plateau) or late (a trial
    that overran). Fixed work (no time budget) keeps the planned folds."""
    folds = plan.folds
    while cfg.tune.time_budget_s is not None and folds >= 2 and _cv_s(folds, cost, plan) > left:
        folds -= 1
    return folds


def measured_cost(trials: pd.DataFrame, plan: Plan, search_s: float | None) -> tuple[float, float]:
    """(start-up, epoch) seconds of a trial as the search measured them: an epoch, the median
    of the trials' (``train_time_s / epochs_run``); the start-up, everything else the search's
    wall clock paid per trial (worker processes, imports, checkpoints, teardown, the gaps
    between trials: ``search_s x concurrency - the trials' epochs``, over the trials). The
    plan's estimates where no trial trained."""
    cols = {"train_time_s", "epochs_run"}
    if not len(trials) or not cols <= set(trials.columns):
        return TRIAL_STARTUP_S, plan.epoch_s
    done = trials[(trials["epochs_run"] > 0) & trials["train_time_s"].notna()]
    if not len(done):
        return TRIAL_STARTUP_S, plan.epoch_s
    epoch_s = float((done["train_time_s"] / done["epochs_run"]).median())
    if not search_s:
        return TRIAL_STARTUP_S, epoch_s
    outside = search_s * plan.concurrency - float(trials["train_time_s"].fillna(0).sum())
    return max(0.0, outside / len(trials)), epoch_s


def _cv_s(folds: int, cost: tuple[float, float], plan: Plan) -> float:
    """Seconds of a ``folds``-fold CV at a trial ``cost`` of (start-up, epoch) seconds: rounds
    of parallel folds, each the start-up plus the plan's epochs, a little longer than a search
    trial's (a fold trains on more images)."""
    startup, epoch = cost
    return -(-folds // plan.concurrency) * (startup + plan.epochs * epoch * CV_FOLD_FACTOR)


def _cv(
    best: str,
    out: str,
    folds: int,
    address: str | None,
    times: dict[str, float],
    fp: Any = None,
):
    from segray.checkpoint import fetch_checkpoint, load_checkpoint_config
    from segray.search.cv import run_cv
    from segray.search.run import search_exists

    stage(
        "cross-validate", f"the best config over {folds} folds of train + val, then their ensemble"
    )
    t0 = time.time()
    how = f"segray auto --resume {out}"
    if search_exists(f"{out}/cv"):  # started before: its saved folds and state
        cv = run_cv(None, f"{out}/cv", resume=True, address=address, continue_with=how)
    else:
        cfg = load_checkpoint_config(fetch_checkpoint(best))
        cv = run_cv(
            cfg, f"{out}/cv", folds=folds, address=address, continue_with=how, fingerprint=fp
        )
    times["cv"] = round(time.time() - t0, 1)
    return cv


def _test(
    model: str, model_kind: str, out: str, state: dict[str, Any], listing: Any = None
) -> None:
    """The model on the held-out test split, which nothing was selected on (``listing``: the
    dataset as the run listed it)."""
    from segray.evaluate import evaluate_checkpoint

    stage("test", f"the {model_kind} on the held-out test split (never searched on)")
    t0 = time.time()
    metrics = evaluate_checkpoint(
        model, split="test", output=f"{out}/eval", progress=True, listing=listing
    )
    state["times"]["test"] = round(time.time() - t0, 1)
    state["summary"]["model"] = {"kind": model_kind, "checkpoint": str(model)}
    state["summary"]["test"] = {
        "num_images": metrics.get("num_images"),
        **{k: metrics.get(k) for k in ("dice", "iou", "accuracy", "roc_auc", "pr_auc")},
    }


def _segment(model: str, out: str, state: dict[str, Any]) -> None:
    """Bulk segmentation of --unlabelled into OUT/segment."""
    from segray.segment import run_segment

    inputs = state["inputs"]
    unlabelled = list(map(str, inputs["unlabelled"]))
    stage("segment", f"{', '.join(unlabelled)} -> Parquet")
    t0 = time.time()
    seg = run_segment(model, unlabelled, f"{out}/segment", masks=inputs["unlabelled_masks"])
    state["times"]["segment"] = round(time.time() - t0, 1)
    state["summary"]["segment"] = {
        k: seg.get(k)
        for k in ("ok", "error", "skipped", "images_per_s", "rows", "parquet", "metrics")
    }


def _finish(
    prep: AutoResult, out: str, state: dict[str, Any], model: str, started: float
) -> AutoResult:
    """The wall times and paths, OUT/auto_summary.json, the printed summary and the report."""
    from segray.report import write_report
    from segray.storage import Location, write_json

    summary, times = state["summary"], state["times"]
    times["total"] = round(time.time() - started, 1)
    summary["wall_time_s"] = times
    summary["within_budget"] = times["total"] <= state["inputs"]["time_budget_s"]
    summary["paths"] = {
        "config": f"{out}/config.yaml",
        "plan": f"{out}/plan.json",
        "search": f"{out}/tune",
        "model": str(model),
        "evaluation": f"{out}/eval",
        **({"segment": f"{out}/segment"} if state["inputs"]["unlabelled"] else {}),
        "report": f"{out}/report.html",
    }
    write_json(f"{out}/{SUMMARY}", summary)
    print_summary(summary)
    report = write_report(out, Location.parse(out).join("report.html").uri)
    print(f"\nreport -> {report}", flush=True)
    prep.summary.update(summary)
    return prep


def stage(name: str, what: str) -> None:
    print(f"\n== {name}: {what}", flush=True)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def print_summary(s: dict[str, Any]) -> None:
    """The run's outcome in a few lines."""
    se, te = s["search"], s["test"]
    params = ", ".join(f"{k}={v}" for k, v in se["best_params"].items())
    print("\n== segray auto summary", flush=True)
    print(
        f"search: {se['trials']} trials ({se['stopped_early']} stopped early); best "
        f"{se['metric']} {se['best_val']:.4f} with {params}"
    )
    cv = s.get("cv") or {}
    if cv.get("skipped"):
        print(f"cross-validation: skipped ({cv['skipped']})")
    elif cv:
        print(
            f"cross-validation: {cv.get('folds')} folds, out-of-fold Dice "
            f"{_num(cv.get('oof_dice')):.4f} -> {_num(cv.get('oof_dice_postprocessed')):.4f} "
            "post-processed"
        )
    print(
        f"test split ({te['num_images']} images, never seen by the search): Dice {te['dice']:.4f}  "
        f"IoU {te['iou']:.4f}  accuracy {te['accuracy']:.4f}  ({s['model']['kind']})"
    )
    seg = s.get("segment")
    if seg:
        print(
            f"bulk segmentation: {seg['ok']} ok, {seg['error']} error rows, "
            f"{seg['images_per_s']:.1f} images/s"
        )
        gt = seg.get("metrics") or {}
        if gt.get("dice") is not None:
            print(
                f"  on the archive ({gt['images_with_ground_truth']} images with ground truth): "
                f"mean per-image Dice {gt['dice']:.4f}"
            )
    for k, v in s["paths"].items():
        print(f"  {k:12s} {v}")
    t = s["wall_time_s"]
    print(
        f"done in {t['total']:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in t.items() if k != 'total')})"
    )
