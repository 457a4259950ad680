"""The `segray` command line: one sub-command per stage of the data flow (the handlers:
`segray.commands`).

Every command that takes a config accepts ``--config FILE`` and trailing ``key.path=value``
overrides (defaults < YAML < overrides). Heavy imports happen inside the commands so that
``segray --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from segray.commands import (
    cmd_auto,
    cmd_config_show,
    cmd_cv,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_inspect,
    cmd_models,
    cmd_report,
    cmd_segment,
    cmd_synth,
    cmd_train,
    cmd_tune,
)
from segray.version import __version__


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=required, help="YAML config file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, e.g. optim.lr=3e-4 model.dilation_rates=[1,2,4,8]",
    )


# --------------------------------------------------------------------------- parser
def _add_tta(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        choices=["none", "flip", "d4"],
        default=None,
        help="test-time augmentation: flips (4x) or the 8 dihedral transforms (8x), averaged "
        "(default: the checkpoint's segment.tta)",
    )


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segray",
        description="Tune, train and run image-segmentation models on Ray "
        "(a laptop in local mode, or a cluster via RAY_ADDRESS / ray job submit).",
    )
    parser.add_argument("--version", action="version", version=f"segray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    _add_address(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="overrides of what segray auto derives for the demo",
    )
    p.set_defaults(func=cmd_demo)

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
    _add_address(p)
    p.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="override any derived setting"
    )
    p.set_defaults(func=cmd_auto)

    p = sub.add_parser("models", help="list models, encoders and parameter counts")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("synth", help="write the built-in synthetic dataset")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--classes", type=int, default=2, help="classes incl. background (default 2)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the resolved config (defaults < YAML < overrides)")
    _add_config_args(s)
    s.set_defaults(func=cmd_config_show)

    p = sub.add_parser(
        "inspect",
        help="fingerprint a dataset: sizes, modes, mask values, class mapping, balance, problems",
        description="Read every image and mask header and the pixels of a sample of pairs; "
        "print sizes, modes, bit depths, the mask value histogram, the class mapping "
        "(data.mask_mode: auto is chosen here, as train and tune choose it), class balance and "
        "suspicious files; with --output, write fingerprint.json there. Exits 2 with a "
        "one-line error if the dataset cannot be trained on as configured.",
    )
    p.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="dataset folder with images/ and masks/ (sets data.root, and data.source=folder "
        "unless the config says pet); default: the config's dataset",
    )
    _add_config_args(p)
    p.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="DIR",
        help="write fingerprint.json into DIR (a folder or a URI; default: nothing written)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=256,
        metavar="N",
        help="pairs whose pixels are read, spread over the dataset (default 256)",
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="train with DDP on Ray Train (local or cluster)")
    _add_config_args(p)
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
    _add_address(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search hyperparameters (Ray Tune + Optuna + ASHA, DDP trials)")
    _add_config_args(p)
    p.add_argument(
        "--output",
        "-o",
        default="runs/tune",
        metavar="DIR",
        help="search folder, a local path or a URI Ray storage accepts (default runs/tune)",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted search in DIR; --config and overrides may change only "
        "data.loader_workers, data.eval_batch_size, train.max_failures, train.heap_reuse, "
        "tracking.*, segment.*",
    )
    p.add_argument(
        "--resume-or-start",
        action="store_true",
        help="continue the search in --output if it holds one, else start it there: a job "
        "that is resubmitted (a KubeRay RayJob, a retried `ray job submit`) picks up its search",
    )
    _add_address(p)
    p.add_argument(
        "--then-cv",
        type=int,
        metavar="K",
        help="then cross-validate the best trial's config over K folds into OUTPUT/cv "
        "(as `segray cv`): per-fold scores and the K-model ensemble",
    )
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation (parallel DDP trials) and the fold ensemble",
        description="Train one model per fold (each a DDP trial on Ray Tune, in parallel as the "
        "cluster allows), predict every fold's validation images with its model, choose the "
        "threshold and post-processing on those out-of-fold predictions, and write the K fold "
        "models as one ensemble checkpoint. The test split stays held out; data.group_by keeps "
        "groups of stems (a volume's slices, a patient's photos) in one fold.",
    )
    _add_config_args(p)
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
    _add_address(p)
    p.set_defaults(func=cmd_cv)

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
    _add_tta(p)
    p.add_argument(
        "--overwrite", action="store_true", help="discard an earlier output in DIR and start over"
    )
    _add_address(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="segment.* overrides, e.g. segment.batch_size=16",
    )
    p.set_defaults(func=cmd_segment)

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
    _add_tta(p)
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
    p.set_defaults(func=cmd_evaluate)

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
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    _add_tta(p)
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="artifact path")
    p.set_defaults(func=cmd_export)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from segray.errors import USER_ERRORS

    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:  # bad input: one clear line, no traceback
        print(f"segray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a RunInterrupted says what stopped and how to continue
        print(f"segray: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
