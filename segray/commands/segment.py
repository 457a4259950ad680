"""`segray segment`: bulk segmentation with Ray Data, masks and per-image metrics to Parquet."""

from __future__ import annotations

import argparse
import sys

from segray.commands.common import OVERRIDE, add_address, add_overrides, add_tta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="bulk-segment image folders / tar shards / Parquet into Parquet"
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="checkpoint directory (path or URI)"
    )
    p.add_argument(
        "--input",
        "-i",
        required=True,
        nargs="+",
        metavar="URI",
        help="folders (recursive), globs, *.tar shards, *.parquet files; paths or URIs",
    )
    p.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="output Parquet dataset folder"
    )
    p.add_argument(
        "--masks",
        metavar="DIR",
        help="ground-truth masks matched by stem: adds dice/iou/... columns",
    )
    p.add_argument(
        "--write-png", metavar="DIR2", help="also write mask PNGs mirroring the input tree"
    )
    p.add_argument(
        "--config",
        metavar="F",
        help="YAML with a segment: section over the checkpoint's (e.g. configs/segment_cluster.yaml)",
    )
    p.add_argument(
        "--retry-errors", action="store_true", help="on resume, segment earlier error rows again"
    )
    add_tta(p)
    p.add_argument(
        "--overwrite", action="store_true", help="discard an earlier output in DIR and start over"
    )
    add_address(p)
    add_overrides(p, "segment.* overrides, e.g. segment.batch_size=16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Bulk segmentation with Ray Data: masks and per-image metrics to Parquet."""
    from segray.segment import SegmentError, run_segment, summary_line

    # `--input a b segment.batch_size=4`: argparse hands trailing overrides to --input.
    inputs = [i for i in args.input if not OVERRIDE.match(i)]
    overrides = [*args.overrides, *(i for i in args.input if OVERRIDE.match(i))]
    if args.tta is not None:
        overrides.append(f"segment.tta={args.tta}")
    try:
        summary = run_segment(
            args.checkpoint,
            inputs,
            args.output,
            masks=args.masks,
            write_png=args.write_png,
            overrides=overrides,
            config=args.config,
            retry_errors=args.retry_errors,
            overwrite=args.overwrite,
            address=args.address,
        )
    except SegmentError as e:  # not complete (e.g. an archive cut short): rerun to finish
        print(f"segray: error: {e}", file=sys.stderr)
        return 1
    print(summary_line(summary))
    return 0
