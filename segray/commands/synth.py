"""`segray synth`: the deterministic synthetic dataset (images/ + masks/)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the built-in synthetic dataset")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--classes", type=int, default=2, help="classes incl. background (default 2)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the deterministic synthetic dataset (images/ + masks/)."""
    from segray.data.synth import generate

    out = generate(
        args.output,
        num=args.num,
        size=args.size,
        num_classes=args.classes,
        seed=args.seed,
        progress=True,
    )
    print(
        f"synthetic dataset: {args.num} images of {args.size}x{args.size}, "
        f"{args.classes} classes -> {out}"
    )
    return 0
