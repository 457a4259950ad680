"""Search efficiency: Optuna TPE + ASHA vs random search vs a small grid, equal epoch budgets.

Usage::

    python benchmarks/search_efficiency.py [--quick] [--epochs 3] [--samples-per-image 4]
                                           [--num-images 200] [--size 64] [--workers 1]
                                           [--workdir DIR]
                                           [--output benchmarks/results/search_efficiency.json]

Data and model (``configs/tune_local.yaml``-like; the default run, 9 + 9 + 16 trials, takes
about 25 minutes on a quiet 2-core machine): the built-in synthetic set (textured scenes whose
large objects need long-range context), generated in a temporary folder, split 70/30
train/val, four augmented passes over each training image an epoch (so that one epoch already
trains far enough to rank a configuration); a ResNet18-U-Net with a
small atrous decoder ([64, 32, 16, 8]), Adam with a cosine schedule over ``--epochs``, batch 4.
Every trial is one segray training (``segray.search.run.run_tune``, Ray Train inside Ray Tune), one
trial at a time (``--workers`` 1 worker x 2 CPUs by default, or 2 gloo workers x 1 CPU), so
trials never compete for the cores and their start-up costs can be read off cleanly.

Methods, all over the same three keys: ``model.dilation_rates`` (3 choices: none
[1, 1, 1, 1], segray's default [1, 6, 12, 18], large [1, 12, 24, 36]), ``optim.lr``
(1e-4 .. 1e-1) and ``loss.bce_weight`` (0 .. 1):

* **grid**: every dilation choice x lr in {3e-4, 3e-3, 3e-2} (the middle of each decade) at
  bce_weight 0.5, 9 configs, each for E epochs; its budget G = 9 x E trial-epochs, and its
  best val Dice is the reference.
* **random**: Optuna's RandomSampler over choice x loguniform x uniform, no early stopping,
  G / E trials, so exactly G trial-epochs.
* **tpe_asha**: Optuna TPE (``tune.searcher: optuna``) + ASHA (grace period 1, reduction
  factor 3, max E epochs), with enough trials to spend at least G trial-epochs in expectation;
  epochs past G are not counted (the curve stops at G). segray's TPE sampler starts with
  ``tune.startup_trials`` random trials (default: a third of ``num_samples``, 2 to 10).

Curves: trials in start order (Tune's trial counter; trials run one at a time), each trial's
epochs in order from its history; after every trial-epoch, the best val Dice seen so far. The
table prints that best at fractions of G. For each method: the best val Dice within G, and the
cumulative trial-epochs at which the best first came within 0.01 of the grid's best. Target:
tpe_asha gets there with <= 40% of G.

Fixed cost per trial: Tune's ``time_total_s`` of the trial (its function trainable's start to
its last report: trial driver, Train controller and worker start-up, data and model set-up) minus
the sum of its ``epoch_time_s`` (train + eval); the median over all trials is the headline.
Also reported: the amortised cost, (a method's wall time - the sum of all its epoch times) / its
trials, which adds what ``time_total_s`` cannot see (starting the trial's actor, persisting the
last checkpoint, Tune's bookkeeping, collecting the results). Ray's own start-up is timed once,
on its own. The Ray part holds the machine-wide lock of ``tests/conftest.py``
(``$SEGRAY_RAY_LOCK``), since two local Rays at once break Ray Train.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import publish, ray_lock

from segray.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "search_efficiency.json"

WITHIN = 0.01  # "reaches the grid's best" = best val Dice >= grid best - WITHIN
BUDGET_FRACTION = 0.40  # ... with at most this fraction of the grid's trial-epochs
CHECKPOINTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)  # curve table columns, fractions of G
METHODS = ("grid", "random", "tpe_asha")

DILATIONS = [[1, 1, 1, 1], [1, 6, 12, 18], [1, 12, 24, 36]]  # none, segray's default, large
LR_RANGE = [1e-4, 1e-1]  # loguniform for random and TPE
LR_GRID = [3e-4, 3e-3, 3e-2]  # the grid: the middle of each decade of LR_RANGE
BCE_GRID = [0.5]  # the grid leaves bce_weight at the middle of its range
QUICK_DILATIONS = [[1, 1, 1, 1], [1, 6, 12, 18]]
QUICK_LR_GRID = [3e-3]
ASHA = {"grace_period": 1, "reduction_factor": 3.0}


# --------------------------------------------------------------------------- configs
def base_config(args: argparse.Namespace, data_root: Path) -> Config:
    """Everything but the search: data, model, loss, optimiser, training, one trial at a time."""
    cpus = 2 // args.workers
    return load_config(
        None,
        {
            "data.source": "synthetic",
            "data.root": str(data_root),
            "data.synthetic": {"num": args.num_images, "size": args.size, "seed": 0},
            "data.split": [0.7, 0.3, 0.0],
            "data.image_size": args.size,
            "data.train_transform": "resize",
            "data.hflip": 0.5,
            "data.vflip": 0.5,
            "data.rotate90": 0.5,
            "data.batch_size": 4,
            "data.samples_per_image": args.samples_per_image,
            "model.name": "resnet_unet",
            "model.encoder": "resnet18",
            "model.decoder_channels": [64, 32, 16, 8],
            "loss.name": "bce_dice",
            "optim.name": "adam",
            "optim.lr": 2e-3,
            "optim.scheduler": "cosine",
            "train.epochs": args.epochs,
            "train.num_workers": args.workers,
            "train.cpus_per_worker": cpus,
            "train.torch_threads": cpus,
            "train.max_failures": 0,
            "train.seed": 0,
            "tune.metric": "val_dice",
            "tune.mode": "max",
            "tune.seed": 0,
            "tune.max_failures": 0,
            "tune.max_concurrent_trials": 1,
        },
    )


def expected_asha_epochs(max_t: int, grace: int, rf: float) -> float:
    """Trial-epochs a trial spends under synchronous successive halving (1/rf pass each rung)."""
    rungs = []
    r = grace
    while r < max_t:
        rungs.append(r)
        r = int(math.ceil(r * rf))
    stops = [*rungs, max_t]
    expected, survive = 0.0, 1.0
    for i, stop in enumerate(stops):
        prev = stops[i - 1] if i else 0
        expected += survive * (stop - prev)
        survive /= rf
    return expected


def grid_axes(quick: bool) -> dict[str, list[Any]]:
    """The grid: every combination of these values (dotted key -> values)."""
    return {
        "model.dilation_rates": QUICK_DILATIONS if quick else DILATIONS,
        "optim.lr": QUICK_LR_GRID if quick else LR_GRID,
        "loss.bce_weight": BCE_GRID,
    }


def grid_size(axes: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in axes.values())


def method_overrides(method: str, axes: dict[str, list[Any]], epochs: int) -> dict[str, Any]:
    budget = grid_size(axes) * epochs
    if method == "grid":
        return {"tune.space": {k: {"grid": v} for k, v in axes.items()}, "tune.scheduler": "none"}
    space = {
        "model.dilation_rates": {"choice": axes["model.dilation_rates"]},
        "optim.lr": {"loguniform": LR_RANGE},
        "loss.bce_weight": {"uniform": [0.0, 1.0]},
    }
    if method == "random":
        return {
            "tune.space": space,
            "tune.searcher": "random",
            "tune.scheduler": "none",
            "tune.num_samples": grid_size(axes),
        }
    per_trial = expected_asha_epochs(epochs, ASHA["grace_period"], ASHA["reduction_factor"])
    return {
        "tune.space": space,
        "tune.searcher": "optuna",
        "tune.scheduler": "asha",
        "tune.grace_period": ASHA["grace_period"],
        "tune.reduction_factor": ASHA["reduction_factor"],
        "tune.max_epochs": epochs,
        "tune.num_samples": int(math.ceil(budget / per_trial)),
    }


# --------------------------------------------------------------------------- analysis
def start_order(result) -> dict[str, int]:
    """Trial id -> creation counter, read from Tune's trial folder names.

    Tune names each trial folder ``<trainable>_<trial id>_<counter>_<params>`` (the counter is
    the experiment tag that both the searcher and the grid generator assign in creation order);
    with one trial at a time, creation order is start order. Trials without a folder keep the
    order of ``result.trials``, after the others.
    """
    ids = [str(t) for t in result.trials["trial_id"].dropna()]
    order: dict[str, int] = {}
    folder = Path(result.output) / "ray" / "tune"
    names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    for trial_id in ids:
        for name in names:
            m = re.search(rf"_{re.escape(trial_id)}_(\d+)(?:_|$)", name)
            if m:
                order[trial_id] = int(m.group(1))
                break
    last = max(order.values(), default=0)
    for i, trial_id in enumerate(ids):
        order.setdefault(trial_id, last + 1 + i)
    return order


def curve(
    trials: pd.DataFrame, history: pd.DataFrame, order: dict[str, int], budget: int
) -> pd.DataFrame:
    """One row per trial-epoch within ``budget``: cumulative epochs and the best val Dice so far."""
    rows = []
    cumulative, best = 0, -math.inf
    for trial_id in sorted(trials["trial_id"].dropna(), key=lambda t: order[str(t)]):
        h = (
            history[history["trial_id"] == trial_id].sort_values("epoch")
            if len(history)
            else history
        )
        for _, r in h.iterrows():
            cumulative += 1
            if cumulative > budget:
                break
            best = max(best, float(r["val_dice"])) if not math.isnan(r["val_dice"]) else best
            rows.append(
                {
                    "trial_epochs": cumulative,
                    "best_val_dice": best,
                    "trial_id": trial_id,
                    "epoch": int(r["epoch"]),
                }
            )
    return pd.DataFrame(rows, columns=["trial_epochs", "best_val_dice", "trial_id", "epoch"])


def best_at(c: pd.DataFrame, epochs: int) -> float:
    """Best val Dice after ``epochs`` cumulative trial-epochs (NaN before the first)."""
    seen = c[c["trial_epochs"] <= epochs]
    return float(seen["best_val_dice"].iloc[-1]) if len(seen) else math.nan


def first_within(c: pd.DataFrame, target: float) -> int | None:
    hit = c[c["best_val_dice"] >= target]
    return int(hit["trial_epochs"].iloc[0]) if len(hit) else None


def fixed_costs(trials: pd.DataFrame, history: pd.DataFrame) -> list[float]:
    """Per trial: Tune's time_total_s (``wall_time_s``) - the sum of its epoch_time_s."""
    out = []
    for _, t in trials.iterrows():
        h = history[history["trial_id"] == t["trial_id"]] if len(history) else history
        wall = t.get("wall_time_s", math.nan)
        if len(h) and wall is not None and not math.isnan(wall):
            out.append(float(wall) - float(h["epoch_time_s"].sum()))
    return out


def summarise(method: str, result, wall: float, budget: int) -> dict[str, Any]:
    trials, history = result.trials, result.history
    order = start_order(result)
    c = curve(trials, history, order, budget)
    costs = fixed_costs(trials, history)
    epoch_sum = float(history["epoch_time_s"].sum()) if len(history) else 0.0
    best = None
    if len(c):
        row = c.loc[c["best_val_dice"].idxmax()]
        t = trials[trials["trial_id"] == row["trial_id"]].iloc[0]
        best = {
            "val_dice": float(row["best_val_dice"]),
            "trial_id": str(row["trial_id"]),
            "params": {k[6:]: _plain(v) for k, v in t.items() if str(k).startswith("param.")},
        }
    per_trial = []
    for _, t in sorted(trials.iterrows(), key=lambda it: order.get(str(it[1]["trial_id"]), 0)):
        h = history[history["trial_id"] == t["trial_id"]] if len(history) else history
        per_trial.append(
            {
                "trial_id": str(t["trial_id"]),
                "start_order": order.get(str(t["trial_id"])),
                **{k[6:]: _plain(v) for k, v in t.items() if str(k).startswith("param.")},
                "status": t.get("status"),
                "epochs_run": int(t.get("epochs_run", 0) or 0),
                "best_val_dice": _plain(t.get("best_val_dice")),
                "stopped_early": bool(t.get("stopped_early", False)),
                "wall_time_s": _plain(t.get("wall_time_s")),
                "epoch_time_sum_s": float(h["epoch_time_s"].sum()) if len(h) else 0.0,
            }
        )
    total_epochs = int(trials["epochs_run"].fillna(0).sum()) if "epochs_run" in trials else 0
    return {
        "method": method,
        "trials": len(trials),
        "errored": int((trials["status"] == "ERROR").sum()) if "status" in trials else 0,
        "trial_epochs_run": total_epochs,
        "trial_epochs_counted": int(c["trial_epochs"].max()) if len(c) else 0,
        "wall_s": wall,
        "epoch_time_sum_s": epoch_sum,
        "fixed_cost_median_s": float(np.median(costs)) if costs else math.nan,
        "fixed_costs_s": costs,
        "amortised_fixed_cost_s": (wall - epoch_sum) / max(len(trials), 1),
        "best": best,
        "curve": c[["trial_epochs", "best_val_dice"]].to_dict("records"),
        "per_trial": per_trial,
    }


def _finite(v: Any) -> Any:
    """JSON-safe copy: NaN becomes null (strict JSON has no NaN)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return None
    return _plain(v) if isinstance(v, (np.floating, np.integer)) else v


def _plain(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)  # list-valued params travel as JSON text
        except ValueError:
            return v
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    axes = grid_axes(args.quick)
    budget = grid_size(axes) * args.epochs
    load_before = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.2f}; grid "
        f"{' x '.join(str(len(v)) for v in axes.values())} configs x {args.epochs} epochs = budget {budget} trial-epochs",
        flush=True,
    )
    workdir = (
        Path(args.workdir)
        if args.workdir
        else Path(tempfile.mkdtemp(prefix="segray-search-bench-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    base = base_config(args, workdir / "synth")
    methods: dict[str, dict[str, Any]] = {}
    t_all = time.time()
    try:
        with ray_lock():
            import ray

            from segray.cluster import ensure_ray
            from segray.config import apply_overrides
            from segray.search.run import run_tune

            t0 = time.time()
            where = ensure_ray()
            ray_start = time.time() - t0
            print(f"Ray started in {ray_start:.1f} s ({where})", flush=True)
            try:
                for method in METHODS:
                    cfg = apply_overrides(base, method_overrides(method, axes, args.epochs))
                    print(
                        f"--- {method}: {cfg.tune.num_samples if method != 'grid' else grid_size(axes)} trials",
                        flush=True,
                    )
                    t0 = time.time()
                    result = run_tune(cfg, workdir / method)
                    methods[method] = summarise(method, result, time.time() - t0, budget)
                    m = methods[method]
                    print(
                        f"--- {method}: {m['trials']} trials, {m['trial_epochs_run']} trial-epochs, "
                        f"best {m['best']['val_dice'] if m['best'] else float('nan'):.4f}, "
                        f"{m['wall_s']:.0f} s",
                        flush=True,
                    )
            finally:
                ray.shutdown()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    grid_best = methods["grid"]["best"]["val_dice"] if methods["grid"]["best"] else math.nan
    target = grid_best - WITHIN
    limit = BUDGET_FRACTION * budget
    checkpoints = sorted({max(1, int(round(f * budget))) for f in CHECKPOINTS})
    for m in methods.values():
        c = pd.DataFrame(m["curve"], columns=["trial_epochs", "best_val_dice"])
        m["epochs_to_within"] = first_within(c, target)
        m["curve_at"] = {str(k): best_at(c, k) for k in checkpoints}
    reach = methods["tpe_asha"]["epochs_to_within"]
    all_costs = [x for m in methods.values() for x in m["fixed_costs_s"]]
    return {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "ray": ray.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "settings": {
            "quick": args.quick,
            "epochs_per_trial": args.epochs,
            "num_images": args.num_images,
            "image_size": args.size,
            "workers_per_trial": args.workers,
            "cpus_per_worker": 2 // args.workers,
            "samples_per_image": args.samples_per_image,
            "grid": axes,
            "lr_range": LR_RANGE,
            "asha": ASHA,
            "budget_trial_epochs": budget,
            "base_config": base.to_dict(),
        },
        "ray_start_s": ray_start,
        "total_wall_s": time.time() - t_all,
        "grid_best_val_dice": grid_best,
        "fixed_cost_per_trial_median_s": float(np.median(all_costs)) if all_costs else math.nan,
        "checkpoints": checkpoints,
        "methods": methods,
        "target": {
            "description": f"tpe_asha best val Dice >= grid best - {WITHIN} within {BUDGET_FRACTION:.0%} of the grid's trial-epochs",
            "grid_best_minus": target,
            "epoch_limit": limit,
            "tpe_asha_epochs": reach,
            "pass": bool(reach is not None and reach <= limit),
        },
    }


def format_table(report: dict[str, Any]) -> str:
    cps = report["checkpoints"]
    budget = report["settings"]["budget_trial_epochs"]
    head = f"{'best val Dice after N trial-epochs':<36}" + "".join(f"{n:>8}" for n in cps)
    lines = [head, "-" * len(head)]
    for name, m in report["methods"].items():
        cells = "".join(
            f"{m['curve_at'][str(n)]:>8.4f}"
            if not math.isnan(m["curve_at"][str(n)])
            else f"{'-':>8}"
            for n in cps
        )
        lines.append(f"{name:<36}{cells}")
    lines.append("")
    head2 = (
        f"{'method':<10}{'trials':>7}{'ep run':>8}{'ep cnt':>8}{'best Dice':>11}{'ep to best-0.01':>17}"
        f"{'wall s':>8}{'fixed s (med)':>15}{'amortised s':>13}"
    )
    lines += [head2, "-" * len(head2)]
    for name, m in report["methods"].items():
        best = m["best"]["val_dice"] if m["best"] else math.nan
        reach = m["epochs_to_within"]
        lines.append(
            f"{name:<10}{m['trials']:>7}{m['trial_epochs_run']:>8}{m['trial_epochs_counted']:>8}{best:>11.4f}"
            f"{(str(reach) if reach is not None else 'never'):>17}{m['wall_s']:>8.0f}"
            f"{m['fixed_cost_median_s']:>15.1f}{m['amortised_fixed_cost_s']:>13.1f}"
        )
    for name, m in report["methods"].items():
        if m["best"]:
            lines.append(f"{name} best: {m['best']['params']} -> {m['best']['val_dice']:.4f}")
    t = report["target"]
    lines.append(
        f"budget {budget} trial-epochs (grid); grid best {report['grid_best_val_dice']:.4f}; "
        f"{t['description']}: {t['tpe_asha_epochs'] if t['tpe_asha_epochs'] is not None else 'never'} "
        f"<= {t['epoch_limit']:.1f}: {'PASS' if t['pass'] else 'FAIL'}"
    )
    lines.append(
        f"fixed cost per trial (time_total_s - sum epoch_time_s), median over all trials: "
        f"{report['fixed_cost_per_trial_median_s']:.1f} s; Ray start-up {report['ray_start_s']:.1f} s; "
        f"total {report['total_wall_s'] / 60:.1f} min"
    )
    m = report["machine"]
    lines.append(
        f"{m['cpus']} CPUs, ray {m['ray']}; load average {m['load_average_before']:.2f} before, "
        f"{m['load_average_after']:.2f} after"
        + ("; QUICK run: not a measurement" if report["settings"]["quick"] else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 x 1 grid, 2 epochs, 48 images of 64 px"
    )
    parser.add_argument("--epochs", type=int, default=3, help="E: epochs of a full trial")
    parser.add_argument(
        "--samples-per-image",
        type=int,
        default=4,
        help="augmented passes over each training image an epoch",
    )
    parser.add_argument("--num-images", type=int, default=200, help="synthetic images (70%% train)")
    parser.add_argument("--size", type=int, default=64, help="synthetic image side, pixels")
    parser.add_argument(
        "--workers",
        type=int,
        choices=[1, 2],
        default=1,
        help="DDP workers per trial (2 CPUs shared)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the search outputs here")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.num_images, args.size, args.samples_per_image = 2, 48, 64, 1
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (ASHA needs a rung below the maximum)")

    report = _finite(run(args))
    publish(report, format_table(report), args.output, default=_plain)


if __name__ == "__main__":
    main()
