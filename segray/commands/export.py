"""`segray export`: a checkpoint as TorchScript or ONNX (uint8 images in, probabilities out)."""

from __future__ import annotations

import argparse

from segray.commands.common import add_tta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    add_tta(p)
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="artifact path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export a checkpoint to TorchScript or ONNX (uint8 images in, probabilities out)."""
    from segray.export import export_model

    report = export_model(args.checkpoint, args.format, args.output, tta=args.tta)
    diffs = ", ".join(f"{size}: {d:.2e}" for size, d in report.max_abs_diff.items())
    print(f"exported {report.format} -> {report.path}  (parity vs eager, max abs diff: {diffs})")
    return 0
