"""`segray auto`: from a folder to a tuned model, its test score and a segmented archive."""

from __future__ import annotations

import argparse

from segray.commands.common import add_address, add_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "auto",
        help="folder of images + masks -> derived config, search within a time budget, CV, "
        "held-out test score, bulk segmentation, report",
    )
    p.add_argument(
        "--data", metavar="DIR", help="dataset root (images/ + masks/); required unless resuming"
    )
    p.add_argument(
        "--output", "-o", default="segray-auto", metavar="OUT", help="default segray-auto"
    )
    p.add_argument(
        "--resume",
        metavar="OUT",
        help="continue the unfinished run in OUT with the inputs it started with, after its "
        "last finished stage",
    )
    p.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue the run in --output if it holds an unfinished one, else start it there "
        "(for jobs that may be resubmitted)",
    )
    p.add_argument(
        "--time-budget",
        default="30m",
        metavar="T",
        help="search + CV budget: 300, 90s, 15m, 1h30m (default 30m)",
    )
    p.add_argument(
        "--unlabelled", nargs="+", metavar="SRC", help="images to bulk-segment at the end"
    )
    p.add_argument(
        "--folds", "-k", type=int, default=5, metavar="K", help="CV folds, 0 = none (default 5)"
    )
    p.add_argument("--classes", metavar="A,B,..", help="class names, background first")
    p.add_argument("--no-flip", action="store_true", help="no flip augmentation (handed data)")
    p.add_argument(
        "--rotate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="90-degree rotations (default: on for grayscale/microscopy-like data)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the derived config and the plan; train nothing",
    )
    add_address(p)
    add_overrides(p, "override any derived setting")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """From a folder to a tuned model, its test score and a segmented archive, in a budget."""
    from segray.auto import AutoOptions, parse_duration, run_auto
    from segray.auto.progress import load_state
    from segray.config import ConfigError

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.resume_or_start and not args.resume and load_state(args.output) is not None:
        print(f"resuming the segray auto run in {args.output} (--resume-or-start)")
        args.resume = args.output
    if not args.resume and not args.data:
        raise ConfigError("segray auto: --data DIR is required (or --resume OUT)")
    run_auto(
        args.data,
        args.resume or args.output,
        time_budget_s=parse_duration(args.time_budget),
        unlabelled=args.unlabelled or (),
        folds=args.folds,
        options=AutoOptions(flip=not args.no_flip, rotate=args.rotate, classes=classes),
        overrides=args.overrides,
        dry_run=args.dry_run,
        address=args.address,
        resume=bool(args.resume),
    )
    return 0
