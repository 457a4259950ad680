"""`segray auto` against the hand-written configs, within a time budget, on ISBI and on the
built-in synthetic set; and the spread of scores across dilation rates on the synthetic set.

Usage::

    python benchmarks/auto.py [--budget 15m] [--only isbi|synthetic] [--spread-epochs 24]
        [--data ../shared/datasets/isbi2012-membrane] [--output benchmarks/results/auto.json]

Rows (every score is Dice on a test split that nothing was trained or selected on):

* **ISBI, segray auto**: ``segray auto --data ISBI --time-budget 15m`` with slices 20-29 as
  the test split (``data.split_ids``: 0-15 train, 16-19 val, 20-29 test; the CV pools 0-19).
  Everything else is derived from the data.
* **ISBI, configs/isbi_membrane.yaml**: the hand-written config, trained on slices 0-19; its
  score is its val Dice on slices 20-29 at its best epoch (picked on those slices: optimistic).
* **synthetic, segray auto**: on the demo's data (160 images of 64 px, seed 0), same budget.
* **synthetic, the old demo overrides**: the search the demo ran before `segray auto`
  (`OLD_DEMO`: 4 trials of 4 epochs), on the same data and splits, its best checkpoint
  evaluated on the test split.
* **dilation spread**: auto's best config on the synthetic set retrained with each set of
  dilation rates in turn (``--spread-epochs`` epochs), all else equal: min, max and spread
  of the test Dice.

Runs under the machine-wide Ray lock of the tests; ~45 minutes on 2 cores with --budget 15m.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import publish, ray_lock

REPO = Path(__file__).resolve().parents[1]
ISBI_CONFIG = REPO / "configs" / "isbi_membrane.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "isbi2012-membrane"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "auto.json"
SYNTH = {"num": 160, "size": 64, "seed": 0}  # the demo's data (segray.demo.DEMO)
# The demo's hand-written search before `segray auto` (segray 0.x `demo.DEMO_OVERRIDES`),
# pointed at the same folder so that its splits are auto's.
OLD_DEMO = [
    "data.batch_size=8",
    "data.samples_per_image=8",
    "data.train_transform=resize",
    "data.image_size=64",
    "data.vflip=0.5",
    "data.rotate90=0.5",
    "model.name=resnet_unet",
    "model.encoder=resnet18",
    "model.decoder_channels=[64,32,16,8]",
    "train.epochs=4",
    "train.num_workers=2",
    "train.max_failures=0",
    "tune.num_samples=4",
    "tune.grace_period=1",
    "tune.reduction_factor=2",
    "tune.space={model.dilation_rates: {choice: [[1,6,12,18],[1,3,6,9],[1,2,4,8],[1,12,24,36]]},"
    " loss.bce_weight: {uniform: [0.0, 1.0]}, optim.lr: {loguniform: [1.0e-3, 1.0e-2]}}",
]


def isbi(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from segray.auto import run_auto
    from segray.config import load_config
    from segray.train import run_training

    ids = {
        "train": [str(i) for i in range(16)],
        "val": [str(i) for i in range(16, 20)],
        "test": [str(i) for i in range(20, 30)],
    }
    t0 = time.time()
    auto = run_auto(
        str(args.data),
        work / "isbi-auto",
        time_budget_s=args.budget,
        overrides=[f"data.split_ids={ids}"],
    )
    auto_s = time.time() - t0
    cfg = load_config(ISBI_CONFIG, {"data.root": str(args.data.resolve())})
    t0 = time.time()
    hand = run_training(cfg, work / "isbi-hand")
    hand_s = time.time() - t0
    return {
        "auto": _auto_row(auto.summary, auto_s),
        "hand": {
            "test_dice": float(hand.best_metrics["val_dice"]),
            "wall_s": round(hand_s, 1),
            "config": "configs/isbi_membrane.yaml",
        },
    }


def synthetic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from segray.auto import run_auto
    from segray.checkpoint import load_checkpoint_config
    from segray.config import apply_overrides
    from segray.data.synth import generate
    from segray.evaluate import evaluate_checkpoint
    from segray.search.run import run_tune
    from segray.train import run_training

    data = generate(work / "synth", **SYNTH)
    t0 = time.time()
    auto = run_auto(str(data), work / "synth-auto", time_budget_s=args.synthetic_budget)
    auto_s = time.time() - t0
    best_cfg = load_checkpoint_config(auto.summary["paths"]["model"])

    # The old demo's search on the same folder, splits and normalisation as auto's.
    planned = ["time_budget_s", "plateau_trials", "max_epochs", "startup_trials"]
    base = apply_overrides(auto.config, OLD_DEMO + [f"tune.{k}=null" for k in planned])
    t0 = time.time()
    old = run_tune(base, work / "synth-old")
    old_test = evaluate_checkpoint(old.best, split="test", output=work / "old-eval", progress=False)
    old_s = time.time() - t0

    spread = []
    rates = auto.config.tune.space["model.dilation_rates"]["choice"]
    for r in rates:
        cfg = apply_overrides(
            best_cfg, {"model.dilation_rates": r, "train.epochs": args.spread_epochs}
        )
        name = "-".join(map(str, r))
        t0 = time.time()
        run = run_training(cfg, work / f"spread-{name}")
        test = evaluate_checkpoint(
            run.best, split="test", output=work / f"spread-eval-{name}", progress=False
        )
        spread.append(
            {
                "dilation_rates": r,
                "val_dice": float(run.best_metrics["val_dice"]),
                "test_dice": float(test["dice"]),
                "wall_s": round(time.time() - t0, 1),
            }
        )
        print(f"dilation {r}: test Dice {test['dice']:.4f}", flush=True)
    dice = [s["test_dice"] for s in spread]
    return {
        "auto": _auto_row(auto.summary, auto_s),
        "hand": {
            "test_dice": float(old_test["dice"]),
            "wall_s": round(old_s, 1),
            "config": "the old demo overrides (4 trials x 4 epochs)",
            "best_params": old.summary["best"]["params"],
        },
        "dilation_spread": {
            "epochs": args.spread_epochs,
            "fixed": {
                k: v
                for k, v in auto.summary["search"]["best_params"].items()
                if "dilation" not in k
            },
            "runs": spread,
            "min": min(dice),
            "max": max(dice),
            "spread": max(dice) - min(dice),
        },
    }


def _auto_row(s: dict[str, Any], wall: float) -> dict[str, Any]:
    plan = s["plan"]
    return {
        "test_dice": float(s["test"]["dice"]),
        "wall_s": round(wall, 1),
        "model": s["model"]["kind"],
        "trials": s["search"]["trials"],
        "best_params": s["search"]["best_params"],
        "derived": {
            k: plan.get(k) for k in ("epochs", "folds", "concurrency", "workers", "search_s")
        },
        "config": s["paths"]["config"],
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"segray auto vs hand-written configs; budget {report['budget_s']:.0f}s (synthetic "
        f"{report['synthetic_budget_s']:.0f}s); {report['machine']}",
        f"{'dataset':10s} {'run':48s} {'test Dice':>9s} {'wall s':>7s}",
    ]
    for ds in ("isbi", "synthetic"):
        r = report.get(ds)
        if not r:
            continue
        a, h = r["auto"], r["hand"]
        d = a["derived"]
        label = f"segray auto ({a['trials']} trials, {d['epochs']} ep, {a['model']})"
        lines.append(f"{ds:10s} {label:48s} {a['test_dice']:9.4f} {a['wall_s']:7.0f}")
        lines.append(f"{ds:10s} {h['config'][:48]:48s} {h['test_dice']:9.4f} {h['wall_s']:7.0f}")
        sp = r.get("dilation_spread")
        if sp:
            for run in sp["runs"]:
                lines.append(
                    f"{ds:10s} {'  dilation ' + str(run['dilation_rates']):48s} "
                    f"{run['test_dice']:9.4f} {run['wall_s']:7.0f}"
                )
            lines.append(
                f"{ds:10s} {'  spread across dilation rates (max - min)':48s} {sp['spread']:9.4f}"
            )
    return "\n".join(lines)


def main() -> None:
    from segray.auto import parse_duration

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="15m", help="segray auto --time-budget (default 15m)")
    p.add_argument(
        "--synthetic-budget", default=None, help="the synthetic set's budget (default --budget)"
    )
    p.add_argument("--only", choices=["isbi", "synthetic"])
    p.add_argument("--spread-epochs", type=int, default=24)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args()
    args.budget = parse_duration(args.budget)
    args.synthetic_budget = parse_duration(args.synthetic_budget or args.budget)

    import platform

    import ray

    from segray.cluster import ensure_ray

    report: dict[str, Any] = {
        "budget_s": args.budget,
        "synthetic_budget_s": args.synthetic_budget,
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
    }
    for name, fn in (("isbi", isbi), ("synthetic", synthetic)):
        if args.only and args.only != name:
            continue
        work = Path(tempfile.mkdtemp(prefix=f"segray-auto-{name}-"))
        try:
            with ray_lock():
                ensure_ray()
                try:
                    report[name] = fn(args, work)
                finally:
                    ray.shutdown()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        publish(report, format_table(report), args.output, default=str)  # after each dataset


if __name__ == "__main__":
    main()
