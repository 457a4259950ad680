"""`segray evaluate`: the full metric report of a checkpoint (metrics, curves, overlays)."""

from __future__ import annotations

import argparse

from segray.commands.common import add_tta

_KEYS = ("dice", "iou", "accuracy", "precision", "recall", "f1", "mse", "roc_auc", "pr_auc")
_KEYS += ("hd95", "msd", "boundary_f1", "v_rand", "v_info")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint: metrics, curves, overlays")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="folder with images/ and masks/ (default: the checkpoint's dataset)",
    )
    p.add_argument(
        "--split", choices=["val", "test", "all"], default="val", help="which split (default val)"
    )
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="report folder")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per forward (default: segment.batch_size)",
    )
    p.add_argument(
        "--worst", type=int, default=8, help="overlays of the N worst images by Dice (default 8)"
    )
    add_tta(p)
    p.add_argument(
        "--boundary-tol",
        type=float,
        default=2.0,
        metavar="PIXELS",
        help="tolerance of boundary_f1 in pixels (default 2)",
    )
    p.add_argument(
        "--em",
        action="store_true",
        help="also the ISBI 2012 EM scores v_rand and v_info (class 0 = membrane, others = cell)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Full metric report of a checkpoint: metrics.json, per_image.parquet, roc_pr.png, overlays/."""
    from segray.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        output=args.output,
        batch_size=args.batch_size,
        worst_k=args.worst,
        boundary_tol=args.boundary_tol,
        em=args.em,
        tta=args.tta,
    )
    print(
        "  ".join(f"{k} {m[k]:.4f}" for k in _KEYS if k in m)
        + f"  ({m.get('num_images')} images, {m.get('num_images_no_foreground', 0)} without "
        "foreground; a class absent from target and prediction counts as undefined, never 1.0)"
    )
    if m.get("num_images_boundary_penalised") or m.get("num_images_boundary_empty"):
        print(
            f"boundary metrics: {m['num_images_boundary_penalised']} images with foreground in "
            "only one of target and prediction scored the worst case (hd95 = msd = the image "
            f"diagonal, boundary_f1 0) in the means; {m['num_images_boundary_empty']} with "
            "foreground in neither left out"
        )
    print(f"report -> {args.output}")
    return 0
