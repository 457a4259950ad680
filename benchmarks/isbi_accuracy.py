"""ISBI 2012 membrane accuracy: one model, flip TTA, the 5-fold ensemble, and ensemble + TTA +
post-processing, on held-out slices, over several seeds.

Usage::

    python benchmarks/isbi_accuracy.py [--seeds 0 1 2] [--folds 5] [--epochs 12] [--tta flip]
        [--data ../shared/datasets/isbi2012-membrane]
        [--output benchmarks/results/isbi_accuracy.json]

(also ``python benchmarks/isbi_membrane.py --accuracy ...``, the same run.)

``configs/isbi_membrane.yaml`` as it stands, except the split: slices 0-19 are cross-validated
(``segray cv``: 5 folds of 4 slices; each fold model trains on 16 slices and picks its best epoch
on its own 4), slices 20-29 are held out as the test split, which no model trained on or was
selected on. Every row is scored on those 10 slices by ``segray evaluate --split test --em``
(foreground = cell; Dice, IoU, V_rand, V_info, HD95):

* **single model**: each fold model alone (mean and min-max over the K fold models);
* **+ flip TTA**: the same models with ``segment.tta=flip`` (4 mirrorings, averaged);
* **K-fold ensemble**: the mean of the K models' probabilities, threshold 0.5, no
  post-processing;
* **K-fold ensemble + TTA + post-processing**: the ensemble ``segray cv`` wrote (threshold and
  post-processing chosen on the out-of-fold predictions of slices 0-19), with flip TTA.

Then the same over ``--seeds`` (``train.seed`` and ``data.split_seed``: other folds, other
initialisations, other augmentation draws): the table gives each row's mean and spread over
seeds. About 13 minutes a seed on 2 cores (5 x 12 epochs of ResNet34-U-Net). Runs under the
machine-wide Ray lock of the tests. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import publish, ray_lock

from segray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "isbi_membrane.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "isbi2012-membrane"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "isbi_accuracy.json"
SCORES = ("dice", "iou", "v_rand", "v_info", "hd95")
ROWS = ("single model", "+ flip TTA", "K-fold ensemble", "K-fold ensemble + TTA + post-processing")


def seed_config(data: Path, seed: int, epochs: int):
    train = [str(i) for i in range(20)]
    test = [str(i) for i in range(20, 30)]
    return load_config(
        CONFIG,
        {
            "data.root": str(data.resolve()),
            "data.split_ids": {"train": train, "test": test},
            "data.split_seed": seed,
            "train.seed": seed,
            "train.epochs": epochs,
        },
    )


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) if metrics.get(k) is not None else math.nan for k in SCORES}


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    from segray.evaluate import evaluate_checkpoint
    from segray.inference.ensemble import write_ensemble
    from segray.search.cv import run_cv

    started = time.time()
    cv = run_cv(seed_config(args.data, seed, args.epochs), work / "cv", folds=args.folds)
    cv_s = time.time() - started
    members = [str(c) for c in cv.folds["checkpoint"][: args.folds]]

    def score(ckpt: str | Path, tta: str, name: str) -> dict[str, float]:
        metrics = evaluate_checkpoint(
            ckpt, split="test", output=work / "eval" / name, tta=tta, em=True, progress=False
        )
        assert metrics["num_images"] == 10, metrics["num_images"]
        return _scores(metrics)

    single = [score(m, "none", f"fold{i}") for i, m in enumerate(members)]
    single_tta = [score(m, args.tta, f"fold{i}-tta") for i, m in enumerate(members)]
    plain = write_ensemble(members, work / "ensemble-plain")  # threshold 0.5, no steps
    rows = {
        ROWS[0]: _mean(single),
        ROWS[1]: _mean(single_tta),
        ROWS[2]: score(plain, "none", "ensemble"),
        ROWS[3]: score(cv.ensemble, args.tta, "ensemble-tta-pp"),
    }
    return {
        "seed": seed,
        "rows": rows,
        "single_models": single,
        "single_models_tta": single_tta,
        "cv": {
            "fold_val_dice": cv.folds["val_dice"][: args.folds].tolist(),
            "oof_dice": cv.summary["oof_dice"],
            "oof_dice_postprocessed": cv.summary["oof_dice_postprocessed"],
            "postprocessing": cv.summary["postprocessing"],
            "wall_s": round(cv_s, 1),
        },
        "wall_s": round(time.time() - started, 1),
    }


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.fmean(s[k] for s in scores) for k in SCORES}
    out["dice_min"] = min(s["dice"] for s in scores)
    out["dice_max"] = max(s["dice"] for s in scores)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from segray.cluster import ensure_ray

    seeds = []
    for seed in args.seeds:  # the lock is let go between seeds, so tests can interleave
        work = Path(tempfile.mkdtemp(prefix=f"segray-isbi-acc-{seed}-"))
        try:
            with ray_lock():
                ensure_ray()
                try:
                    seeds.append(run_seed(args, seed, work))
                finally:
                    ray.shutdown()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(format_table(_report(args, seeds)), flush=True)
    return _report(args, seeds)


def _report(args: argparse.Namespace, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for row in ROWS:
        values = {k: [s["rows"][row][k] for s in seeds] for k in SCORES}
        summary[row] = {
            **{k: statistics.fmean(v) for k, v in values.items()},
            **{f"{k}_spread": (max(v) - min(v)) if len(v) > 1 else 0.0 for k, v in values.items()},
            "dice_by_seed": values["dice"],
        }
    return {
        "settings": {
            "config": str(CONFIG.relative_to(REPO)),
            "folds": args.folds,
            "epochs": args.epochs,
            "tta": args.tta,
            "train_slices": "0-19 (cross-validated)",
            "test_slices": "20-29 (held out)",
            "seeds": list(args.seeds),
        },
        "summary": summary,
        "seeds": seeds,
    }


def format_table(report: dict[str, Any]) -> str:
    st, summary = report["settings"], report["summary"]
    n = len(report["seeds"])
    lines = [
        f"ISBI 2012 membrane, test slices 20-29; {st['folds']}-fold CV over slices 0-19, "
        f"{st['epochs']} epochs a fold, TTA {st['tta']}; {n} seed(s) {st['seeds'][:n]}",
        f"{'row':<44}{'Dice':>8}{'spread':>8}{'IoU':>8}{'V_rand':>8}{'V_info':>8}{'HD95':>8}",
    ]
    for row, r in summary.items():
        lines.append(
            f"{row:<44}{r['dice']:>8.4f}{r['dice_spread']:>8.4f}{r['iou']:>8.4f}"
            f"{r['v_rand']:>8.4f}{r['v_info']:>8.4f}{r['hd95']:>8.2f}"
        )
    for s in report["seeds"]:
        lines.append(
            f"seed {s['seed']}: fold val Dice "
            + ", ".join(f"{v:.4f}" for v in s["cv"]["fold_val_dice"])
            + f"; out-of-fold Dice {s['cv']['oof_dice']:.4f} -> "
            f"{s['cv']['oof_dice_postprocessed']:.4f} with {s['cv']['postprocessing']}; "
            f"{s['wall_s']:.0f} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    publish(report, format_table(report), args.output or DEFAULT_OUTPUT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12, help="per fold (the config's 12)")
    parser.add_argument("--tta", choices=("flip", "d4"), default="flip")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OUTPUT}")


if __name__ == "__main__":
    main()
