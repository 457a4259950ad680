"""`segray report`: one self-contained report.html for a segray output folder."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained report.html for a search, training, evaluation, "
        "bulk-segmentation or demo folder",
        description="Write one HTML file (images embedded, no network needed to view it) for a "
        "segray output folder, whose kind is found from its files: a search (`segray tune`: "
        "best trial, sortable trials table, optimisation history, parameter importances, "
        "per-trial curves, trials ASHA stopped), a training run (`segray train`: curves, "
        "metrics per epoch), an evaluation (`segray evaluate`: metrics, ROC/PR, overlays with "
        "false positives and false negatives in two colours), a bulk segmentation (`segray "
        "segment`: counts by status, error reasons, distributions, galleries of the most "
        "uncertain, the worst Dice and a random sample, read from the inputs and the Parquet "
        "output without loading it whole) or a `segray demo` folder (all three).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output folder, a path or a URI")
    p.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="where the HTML goes, a path or a URI (default RUN_DIR/report.html)",
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=12,
        metavar="N",
        help="images in each bulk-segmentation gallery (default 12)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the random gallery (default 0)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write one self-contained report.html for a segray output folder."""
    from segray.report import ReportError, write_report

    try:
        path = write_report(args.run_dir, args.output, gallery=args.gallery, seed=args.seed)
    except ReportError as e:
        print(f"segray: error: {e}", file=sys.stderr)
        return 2
    print(f"report -> {path}")
    return 0
