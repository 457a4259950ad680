"""`segray auto`: from a folder of images and masks to a tuned model and a segmented archive.

    fingerprint (`segray inspect`) -> derived config (`derive`) -> one-batch probe and plan
    (`plan`) -> search within the budget (Tune ``time_budget_s`` + plateau stop) -> K-fold CV
    of the best config and its fold ensemble (`segray cv`), when the budget holds it -> the
    held-out test split, which nothing was selected on -> bulk segmentation of ``--unlabelled``
    -> the report.

    OUT/fingerprint.json   the dataset's fingerprint
    OUT/config.yaml        the derived config (the search space included)
    OUT/splits.json        the keys of train, val and test (`segray.data.split`)
    OUT/plan.json          why each setting has its value, the probe and the plan
    OUT/tune/              the search (`segray tune`'s outputs)
    OUT/cv/                the cross-validation and OUT/cv/ensemble (`segray cv`'s outputs)
    OUT/eval/              the final model on the test split (`segray evaluate`'s outputs)
    OUT/segment/           the bulk segmentation of --unlabelled (`segray segment`'s outputs)
    OUT/auto_summary.json  the winning params, the scores, the wall times and these paths
    OUT/report.html        all of it on one page

The test split is fixed before anything trains (``data.split``, stable per file stem): the
search ranks trials on val, the CV deals folds from train + val only, so the test score is the
first the final model has seen of those images.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from segray.auto.derive import AutoOptions, Derived, Resources, derive_config, find_layout
from segray.auto.plan import CV_FOLD_FACTOR, Plan, cluster, make_plan, probe_on_worker
from segray.auto.progress import (
    STATE,
    check_inputs,
    check_splits,
    configured,
    finished_search,
    load_state,
    save_state,
)
from segray.config import Config, ConfigError, apply_overrides

__all__ = ["AutoResult", "parse_duration", "prepare_auto", "run_auto"]

SUMMARY = "auto_summary.json"
_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass
class AutoResult:
    output: str
    config: Config
    derived: Derived
    plan: Plan
    summary: dict[str, Any]


def parse_duration(text: str | float) -> float:
    """Seconds of ``"90"``, ``"90s"``, ``"15m"``, ``"1h30m"``; a clear error otherwise."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        parts = re.fullmatch(
            r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
        )
        if not text.strip() or parts is None or not any(parts.groups()):
            raise ConfigError(
                f"--time-budget {text!r}: expected a duration like 300, 90s, 15m or 1h30m"
            )
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ConfigError(f"--time-budget must be > 0, got {text!r}")
    return seconds


def _base_config(data: str, overrides: Sequence[str]) -> Config:
    """The data layout of ``data``: its image and mask folders (found by name), as a folder
    source; ``data.*`` overrides (folders, classes, explicit splits) apply here already."""
    from segray.data.remote import is_remote

    tree: dict[str, Any] = {"data.source": "folder", "data.root": data}
    if not is_remote(data):
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {data}: not a folder")
        tree["data.root"] = str(root)
        layout = find_layout([p.name for p in root.iterdir() if p.is_dir()])
        if layout is not None:
            tree["data.images_dir"], tree["data.masks_dir"] = layout
    data_overrides = [o for o in overrides if o.startswith("data.")]
    return apply_overrides(apply_overrides(Config(), tree), data_overrides)


def _fingerprint(cfg: Config, options: AutoOptions):
    """inspect's fingerprint, as `segray inspect` takes it: ``data.mask_mode: auto`` resolved
    (`segray.data.inspect.resolve_mask_mode`; masks whose values are class indices 0..K-1
    with K > 2 get K classes, named class_1 ... unless --classes names them)."""
    from segray.data import inspect_data

    prepared, fp = inspect_data(cfg, strict=False)
    fp.raise_if_unusable()
    print(fp.summary(), flush=True)
    return prepared, fp


def derive_for(
    data: str, resources: Resources, options: AutoOptions, overrides: Sequence[str] = ()
) -> tuple[Derived, dict[str, Any]]:
    """The fingerprint of ``data`` and the config derived from it (no Ray needed)."""
    base = _base_config(data, overrides)
    if options.classes:
        base = apply_overrides(base, {"data.classes": options.classes})
    prepared, fp = _fingerprint(base, options)
    fpd = fp.to_dict()
    if (Path(prepared.data.root or "") / "synth.json").is_file():
        fpd["source"] = "synthetic"  # segray's own scenes: orientation-free by construction
    return derive_config(fpd, resources, root=data, options=options, base=prepared), fpd


def prepare_auto(
    data: str,
    *,
    time_budget_s: float,
    folds: int = 5,
    options: AutoOptions | None = None,
    overrides: Sequence[str] = (),
    address: str | None = None,
) -> AutoResult:
    """Fingerprint, derive, probe and plan (what ``--dry-run`` prints); trains nothing."""
    from segray.cluster import ensure_ray
    from segray.data import list_samples
    from segray.data.split import data_splits, small_split_warning

    _base_config(data, overrides)  # a missing folder or a bad data.* override: before Ray starts
    print(f"Ray: {ensure_ray(address)}", flush=True)
    resources = cluster()
    derived, fpd = derive_for(data, resources, options or AutoOptions(), overrides)
    cfg = apply_overrides(derived.config, list(overrides))  # the user's key=value win
    samples = list_samples(cfg.data, check=False)
    splits = data_splits(samples, cfg.data)
    check_splits(splits, cfg.data, folds)  # the derived split: before the probe and the search
    sizes = _pixels(fpd)
    probe = probe_on_worker(cfg)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    plan = make_plan(
        cfg,
        resources,
        budget_s=time_budget_s,
        probe=probe,
        train_images=len(splits["train"]),
        val_pixels=len(splits["val"]) * sizes,
        folds=folds,
        epochs=_pinned_epochs(cfg, given),
    )
    cfg = plan.apply(cfg)
    if "tune.num_samples" in given:  # TPE's random start follows the pinned trial count
        cfg = apply_overrides(cfg, {"tune.startup_trials": None})
    for key in overrides:  # an explicit train.epochs (or other planned key) still wins
        cfg = apply_overrides(cfg, [key])
    if cfg.tune.time_budget_s is None:
        plan.notes.append(
            f"fixed work, no time budget (tune.time_budget_s is null): the search runs "
            f"{cfg.tune.num_samples} trials"
            + (f" and the CV its {plan.folds} folds" if plan.folds else "")
            + ", however long they take"
        )
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    if cfg.data.split_ids:
        derived.reasons.pop("data.split", None)
        derived.reasons["data.split_ids"] = f"given: {counts}"
    else:
        why = derived.reasons.get("data.split")
        derived.reasons["data.split"] = f"{why + '; ' if why else ''}stable per stem: {counts}"
    small = small_split_warning(splits, cfg.data)
    if small:
        print(f"warning: {small}", flush=True)
        plan.notes.append(small)
    return AutoResult(str(data), cfg, replace(derived, config=cfg), plan, {"fingerprint": fpd})


def run_auto(
    data: str | None,
    output: str | Path = "segray-auto",
    *,
    time_budget_s: float = 1800.0,
    unlabelled: Sequence[str] = (),
    unlabelled_masks: str | None = None,
    folds: int = 5,
    options: AutoOptions | None = None,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    address: str | None = None,
    resume: bool = False,
) -> AutoResult:
    """Configure, search, cross-validate, test and segment (module docstring).

    ``unlabelled``: folders, globs, tar shards or Parquet files to bulk-segment with the final
    model (``unlabelled_masks``: their ground truth, when some exists, for per-image scores).
    Override keys, ``unlabelled``, the test split and the folds are checked before Ray starts.

    ``resume=True`` continues the unfinished run in ``output`` with the inputs it started with
    (`segray.auto.progress`): after the last finished stage, the search and the CV from their
    own saved state. Interrupted (Ctrl-C), it raises `RunInterrupted`, which says so.
    """
    from segray.cluster import interruptible
    from segray.search.results import read_text

    out = str(output) if "://" in str(output) else str(Path(output).resolve())
    if read_text(f"{out}/{SUMMARY}") is not None:
        raise FileExistsError(f"{out} holds a finished segray auto run: choose another --output")
    state = None if dry_run else load_state(out)
    if resume:
        if state is None:
            raise FileNotFoundError(f"--resume {out}: no {STATE}: not a segray auto run")
        inputs = state["inputs"]
        print(f"resuming the segray auto run in {out} (data {inputs['data']})", flush=True)
        data, time_budget_s, folds = inputs["data"], inputs["time_budget_s"], inputs["folds"]
        unlabelled, unlabelled_masks = inputs["unlabelled"], inputs["unlabelled_masks"]
        overrides, options = inputs["overrides"], AutoOptions(**inputs["options"])
    elif state is not None or (not dry_run and read_text(f"{out}/config.yaml") is not None):
        raise FileExistsError(
            f"{out} already holds a segray auto run: continue it with segray auto --resume "
            f"{out}, or choose another --output"
        )
    else:
        if data is None:
            raise ConfigError("segray auto needs --data (or --resume OUT)")
        check_inputs(_base_config(data, overrides), overrides, folds, unlabelled)  # before Ray
        options = options or AutoOptions()
        inputs = {
            "data": str(data),
            "time_budget_s": time_budget_s,
            "folds": folds,
            "unlabelled": [str(u) for u in unlabelled],
            "unlabelled_masks": unlabelled_masks,
            "overrides": list(overrides),
            "options": asdict(options),
        }
        state = {"inputs": inputs}
    assert data is not None
    with interruptible(f"segray auto in {out}", f"segray auto --resume {out}"):
        if "summary" in state:  # configured before: the config, plan and progress it wrote
            prep = configured(out, str(data))
            started = time.time() - sum(state["times"].values())
            return _stages(
                prep,
                out,
                state,
                state["summary"],
                state["times"],
                started,
                time_budget_s=time_budget_s,
                unlabelled=unlabelled,
                unlabelled_masks=unlabelled_masks,
                address=address,
            )
        return _run_auto(
            data,
            out,
            state,
            time_budget_s=time_budget_s,
            unlabelled=unlabelled,
            unlabelled_masks=unlabelled_masks,
            folds=folds,
            options=options,
            overrides=overrides,
            dry_run=dry_run,
            address=address,
        )


def _run_auto(
    data: str,
    output: str | Path,
    state: dict[str, Any],
    *,
    time_budget_s: float,
    unlabelled: Sequence[str],
    unlabelled_masks: str | None,
    folds: int,
    options: AutoOptions | None,
    overrides: Sequence[str],
    dry_run: bool,
    address: str | None,
) -> AutoResult:
    """`run_auto` from the start: configure, then `_stages`."""
    from segray.data.split import write_splits
    from segray.search.results import write_json, write_text

    started = time.time()
    out = str(output)
    _stage("configure", f"fingerprint {data}, derive the config, probe one batch")
    prep = prepare_auto(
        data,
        time_budget_s=time_budget_s,
        folds=folds,
        options=options,
        overrides=overrides,
        address=address,
    )
    cfg, plan = prep.config, prep.plan
    print(prep.derived.table())
    print(plan.text(), flush=True)
    if dry_run:
        print("\n# the derived config (segray train/tune --config takes it as it is)")
        print(cfg.to_yaml(), flush=True)
        return prep
    save_state(out, state)  # the inputs first: from here on, --resume continues the run
    write_text(f"{out}/config.yaml", cfg.to_yaml())
    write_text(f"{out}/fingerprint.json", json.dumps(prep.summary["fingerprint"], indent=2))
    write_splits(cfg, out)  # splits.json: the keys of train, val and test
    write_json(
        f"{out}/plan.json",
        {
            "reasons": prep.derived.reasons,
            "values": prep.derived.values(),
            "plan": plan.to_dict(),
            "time_budget_s": time_budget_s,
        },
    )
    summary: dict[str, Any] = {"output": out, "data": str(data), "plan": plan.to_dict()}
    times: dict[str, float] = {"configure": round(time.time() - started, 1)}
    save_state(out, {**state, "summary": summary, "times": times})
    return _stages(
        prep,
        out,
        state,
        summary,
        times,
        started,
        time_budget_s=time_budget_s,
        unlabelled=unlabelled,
        unlabelled_masks=unlabelled_masks,
        address=address,
    )


def _stages(
    prep: AutoResult,
    out: str,
    state: dict[str, Any],
    summary: dict[str, Any],
    times: dict[str, float],
    started: float,
    *,
    time_budget_s: float,
    unlabelled: Sequence[str],
    unlabelled_masks: str | None,
    address: str | None,
) -> AutoResult:
    """Search, cross-validate, test and segment; a stage that finished before (``summary``
    holds it) is not run again, and its progress is saved after each."""
    from segray.search.results import write_json
    from segray.storage import Location

    cfg, plan = prep.config, prep.plan
    search = _search(cfg, out, address, times, done="search" in summary)
    best = search.summary["best"]
    model, model_kind = search.best, "best trial"
    summary["search"] = {
        "trials": search.summary["num_trials"],
        "stopped_early": search.summary["stopped_early"],
        "best_params": best["params"],
        "best_val": best[cfg.tune.metric],
        "metric": cfg.tune.metric,
    }
    save_state(out, {**state, "summary": summary, "times": times})
    if "cv" in summary and state.get("model"):  # cross-validated before
        model, model_kind = state["model"]
    if plan.folds >= 2 and "cv" not in summary:
        # The folds that still fit, from the search's measured trial time: the search may
        # have ended early (plateau) or late (a trial that overran). Fixed work (no time
        # budget) keeps the planned folds.
        left = time_budget_s - (time.time() - started)
        trial_s = _full_trial_s(search, plan)
        folds = plan.folds
        while (
            cfg.tune.time_budget_s is not None
            and folds >= 2
            and _cv_s(folds, trial_s, plan) > left * 1.15 + 30
        ):
            folds -= 1
        if folds < 2:
            need = _cv_s(2, trial_s, plan)
            print(
                f"\ncross-validation skipped: 2 folds need ~{need:.0f}s, "
                f"{max(left, 0):.0f}s of the budget is left",
                flush=True,
            )
            summary["cv"] = {"skipped": f"2 folds need ~{need:.0f}s, {max(left, 0):.0f}s left"}
        else:
            if folds < plan.folds:
                print(f"\n{folds} folds instead of {plan.folds}: what the budget holds", flush=True)
            cv = _cv(search.best, out, folds, address, times)
            model, model_kind = cv.ensemble, f"{folds}-fold ensemble"
            summary["cv"] = {
                k: cv.summary.get(k)
                for k in (
                    "folds",
                    f"{cfg.tune.metric}_mean",
                    f"{cfg.tune.metric}_std",
                    "oof_dice",
                    "oof_dice_postprocessed",
                    "postprocessing",
                )
            }

    save_state(out, {**state, "summary": summary, "times": times, "model": [model, model_kind]})
    from segray.evaluate import evaluate_checkpoint

    _stage("test", f"the {model_kind} on the held-out test split (never searched on)")
    t0 = time.time()
    metrics = evaluate_checkpoint(model, split="test", output=f"{out}/eval", progress=True)
    times["test"] = round(time.time() - t0, 1)
    summary["model"] = {"kind": model_kind, "checkpoint": str(model)}
    summary["test"] = {
        "num_images": metrics.get("num_images"),
        **{k: metrics.get(k) for k in ("dice", "iou", "accuracy", "roc_auc", "pr_auc")},
    }
    if unlabelled:
        from segray.segment import run_segment

        _stage("segment", f"{', '.join(map(str, unlabelled))} -> Parquet")
        t0 = time.time()
        seg = run_segment(
            model, list(map(str, unlabelled)), f"{out}/segment", masks=unlabelled_masks
        )
        times["segment"] = round(time.time() - t0, 1)
        summary["segment"] = {
            k: seg.get(k)
            for k in ("ok", "error", "skipped", "images_per_s", "rows", "parquet", "metrics")
        }
    times["total"] = round(time.time() - started, 1)
    summary["wall_time_s"] = times
    summary["within_budget"] = times["total"] <= time_budget_s
    summary["paths"] = {
        "config": f"{out}/config.yaml",
        "plan": f"{out}/plan.json",
        "search": f"{out}/tune",
        "model": str(model),
        "evaluation": f"{out}/eval",
        **({"segment": f"{out}/segment"} if unlabelled else {}),
        "report": f"{out}/report.html",
    }
    write_json(f"{out}/{SUMMARY}", summary)
    print_summary(summary)
    from segray.report import write_report

    print(
        f"\nreport -> {write_report(out, Location.parse(out).join('report.html').uri)}", flush=True
    )
    prep.summary.update(summary)
    return prep


def _search(
    cfg: Config, out: str, address: str | None, times: dict[str, float], *, done: bool = False
):
    """The search in OUT/tune: read back if it finished before (``done``), resumed from its
    saved state if it started, else started."""
    from segray.search.run import run_tune, search_exists

    if done:
        print(f"\n== search: finished before, read from {out}/tune", flush=True)
        return finished_search(f"{out}/tune")
    _stage(
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
        None if resume else cfg, f"{out}/tune", resume=resume, address=address, continue_with=how
    )
    times["search"] = round(times.get("search", 0.0) + time.time() - t0, 1)
    if search.best is None:
        raise RuntimeError(f"no trial of the search finished: see {out}/tune/trials.parquet")
    return search


def _pinned_epochs(cfg: Config, given: set[str]) -> int | None:
    """A full trial's epochs when the user's overrides pin them, else None (the plan sizes
    them to the budget)."""
    if "tune.max_epochs" in given and cfg.tune.max_epochs is not None:
        return cfg.tune.max_epochs
    return cfg.train.epochs if "train.epochs" in given else None


def _full_trial_s(search, plan: Plan) -> float:
    """Measured seconds of a full trial: the trials that trained the most epochs (ASHA's
    short ones are mostly start-up), else the plan's estimate."""
    trials = search.trials
    if len(trials) and {"wall_time_s", "epochs_run"} <= set(trials.columns):
        done = trials[(trials["epochs_run"] > 0) & trials["wall_time_s"].notna()]
        if len(done):
            longest = done[done["epochs_run"] == done["epochs_run"].max()]
            per_epoch = float((longest["wall_time_s"] / longest["epochs_run"]).median())
            return per_epoch * plan.epochs
    return plan.trial_s


def _cv_s(folds: int, trial_s: float, plan: Plan) -> float:
    """Seconds of a ``folds``-fold CV: rounds of parallel folds, each a little longer than a
    search trial (it trains on more images)."""
    return -(-folds // plan.concurrency) * trial_s * CV_FOLD_FACTOR


def _cv(best: str, out: str, folds: int, address: str | None, times: dict[str, float]):
    from segray.checkpoint import fetch_checkpoint, load_checkpoint_config
    from segray.search.cv import run_cv

    _stage(
        "cross-validate", f"the best config over {folds} folds of train + val, then their ensemble"
    )
    from segray.search.run import search_exists

    t0 = time.time()
    how = f"segray auto --resume {out}"
    if search_exists(f"{out}/cv"):  # started before: its saved folds and state
        cv = run_cv(None, f"{out}/cv", resume=True, address=address, continue_with=how)
    else:
        cfg = load_checkpoint_config(fetch_checkpoint(best))
        cv = run_cv(cfg, f"{out}/cv", folds=folds, address=address, continue_with=how)
    times["cv"] = round(time.time() - t0, 1)
    return cv


def _pixels(fp: dict[str, Any]) -> float:
    im = fp["images"]
    return float(im["width"]["median"] * im["height"]["median"])


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _stage(name: str, what: str) -> None:
    print(f"\n== {name}: {what}", flush=True)


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
