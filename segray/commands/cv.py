"""`segray cv`: k-fold cross-validation (one DDP trial per fold) and the fold ensemble."""

from __future__ import annotations

import argparse

from segray.commands.common import (
    add_address,
    add_config_args,
    load,
    resume_config,
    resume_or_start,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation (parallel DDP trials) and the fold ensemble",
        description="Train one model per fold (each a DDP trial on Ray Tune, in parallel as the "
        "cluster allows), predict every fold's validation images with its model, choose the "
        "threshold and post-processing on those out-of-fold predictions, and write the K fold "
        "models as one ensemble checkpoint. The test split stays held out; data.group_by keeps "
        "groups of stems (a volume's slices, a patient's photos) in one fold.",
    )
    add_config_args(p)
    p.add_argument("--folds", "-k", type=int, default=5, metavar="K", help="folds (default 5)")
    p.add_argument(
        "--output",
        "-o",
        default="runs/cv",
        metavar="DIR",
        help="output folder, a local path or a URI (default runs/cv)",
    )
    p.add_argument(
        "--resume", metavar="DIR", help="continue the interrupted cross-validation in DIR"
    )
    p.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue the cross-validation in --output if it holds one, else start it there",
    )
    add_address(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """K-fold cross-validation: one DDP trial per fold, then the fold ensemble."""
    from segray.search.cv import run_cv

    resume_or_start(args, "cross-validation")
    cfg = resume_config(args) if args.resume else load(args)
    result = run_cv(
        cfg,
        args.resume or args.output,
        folds=args.folds,
        resume=bool(args.resume),
        address=args.address,
    )
    print(
        f"outputs -> {result.output} (cv.parquet, oof.parquet, cv_summary.json, ensemble/, "
        "trials.parquet)"
    )
    return 0
