"""The small demo as fixed work (`segray.demo.FIXED`) over several seeds: the test Dice and the
archive Dice that tests/test_demo.py's floors are set from.

Usage::

    python benchmarks/demo_floor.py [--seeds 0 1 2 3 4] [--output benchmarks/results/demo_floor.json]

Each seed sets ``tune.seed`` and ``train.seed`` (the data are the demo's, fixed). The plan pins
the trials and their epochs, so a seed scores the same on a fast or a busy machine; only the
wall time differs. Runs under the machine-wide Ray lock of the tests; ~4 minutes a seed on 2
cores. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import publish, ray_lock

from segray.demo import FIXED, run_demo

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "demo_floor.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    rows = []
    with ray_lock():
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.time()
                s = run_demo(
                    Path(tmp) / "demo",
                    small=True,
                    overrides=[*FIXED, f"tune.seed={seed}", f"train.seed={seed}"],
                )
                rows.append(
                    {
                        "seed": seed,
                        "test_dice": s["test"]["dice"],
                        "archive_dice": s["segment"]["metrics"]["dice"],
                        "trials": s["search"]["trials"],
                        "stopped_early": s["search"]["stopped_early"],
                        "wall_s": round(time.time() - t0, 1),
                    }
                )
            print(rows[-1], flush=True)
    lines = [
        "| seed | test Dice | archive Dice | trials (stopped early) | wall s |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r['seed']} | {r['test_dice']:.4f} | {r['archive_dice']:.4f} | "
            f"{r['trials']} ({r['stopped_early']}) | {r['wall_s']:.0f} |"
            for r in rows
        ),
    ]
    summary = {
        k: {
            "min": min(r[k] for r in rows),
            "mean": statistics.mean(r[k] for r in rows),
            "max": max(r[k] for r in rows),
        }
        for k in ("test_dice", "archive_dice")
    }
    lines.append(
        f"\nmin test Dice {summary['test_dice']['min']:.4f}, "
        f"min archive Dice {summary['archive_dice']['min']:.4f} over {len(rows)} seeds"
    )
    publish({"plan": FIXED, "rows": rows, "summary": summary}, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
