"""`segray demo`: `segray auto` on the built-in synthetic data (local Ray, CPU)."""

from __future__ import annotations

import argparse

from segray.commands.common import add_address, add_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="segray auto on built-in synthetic data (~5 min on 2 cores): derived config, "
        "search, test-split score, bulk segmentation of an archive, report",
    )
    p.add_argument(
        "--output",
        "-o",
        default="segray-demo",
        metavar="DIR",
        help="demo folder (default segray-demo)",
    )
    p.add_argument("--small", action="store_true", help="a smaller, faster variant (for CI)")
    add_address(p)
    add_overrides(p, "overrides of what segray auto derives for the demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`segray auto` on the built-in synthetic data (local Ray, CPU)."""
    from segray.demo import run_demo

    run_demo(args.output, small=args.small, overrides=args.overrides, address=args.address)
    return 0
