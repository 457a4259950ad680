"""`segray train`: DDP training on Ray Train (a local Ray, or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

import argparse

from segray.commands.common import add_address, add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train with DDP on Ray Train (local or cluster)")
    add_config_args(p)
    p.add_argument(
        "--output",
        "-o",
        default="runs/train",
        metavar="DIR",
        help="run folder, a local path or a URI (s3://bucket/runs/a): config.yaml, "
        "history.parquet, checkpoints/{last,best} (default runs/train)",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint, exactly as if never stopped; "
        "overrides may change only data.loader_workers, data.eval_batch_size, "
        "train.max_failures, train.heap_reuse, tune.*, segment.*",
    )
    p.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue the run in --output if it holds one, else start it there (for jobs "
        "that may be resubmitted)",
    )
    add_address(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train with DDP on Ray Train (local Ray, or the cluster in RAY_ADDRESS)."""
    from segray.config import load_config
    from segray.storage import Location
    from segray.train import check_resume_config, run_training

    if (
        args.resume_or_start
        and not args.resume
        and Location.parse(args.output).join("config.yaml").exists()
    ):
        print(f"resuming the run in {args.output} (--resume-or-start)")
        args.resume = args.output
    if args.resume:
        saved = Location.parse(args.resume).join("config.yaml")
        if not saved.exists():
            raise FileNotFoundError(f"{args.resume}: no config.yaml: not a segray training output")
        cfg = load_config(saved.uri, args.overrides)
        # Only settings that leave the trajectory alone (logging, retries, loader processes).
        check_resume_config(load_config(saved.uri), cfg, args.resume)
        output = args.resume
    else:
        cfg = load(args)
        output = args.output
    result = run_training(cfg, output, resume=bool(args.resume), address=args.address)
    m = result.best_metrics
    print(
        f"done: best val_dice {m.get('val_dice', float('nan')):.4f} (epoch {m.get('epoch')}), "
        f"{len(result.history)} epochs -> {result.best}"
    )
    return 0
