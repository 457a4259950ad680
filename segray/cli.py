"""The `segray` command line: one sub-command per stage of the data flow.

Every command that takes a config accepts ``--config FILE`` and trailing ``key.path=value``
overrides (defaults < YAML < overrides). Heavy imports happen inside the commands so that
``segray --help`` answers at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from segray import __version__

Handler = Callable[[argparse.Namespace], int | None]
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)+=")  # section.key=value


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--config", "-c", metavar="FILE", required=required, help="YAML config file")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, e.g. optim.lr=3e-4 model.dilation_rates=[1,2,4,8]",
    )


def _load(args: argparse.Namespace):
    from segray.config import load_config

    return load_config(args.config, args.overrides)


# --------------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    """Print the registered models with their encoders and parameter counts."""
    from segray.models import create_model, list_models, model_info

    rows = [("model", "encoder", "params (3 ch, 1 class)", "description")]
    for name in list_models():
        info = model_info(name)
        for enc in info["encoders"] or [None]:
            kwargs = {"encoder": enc} if enc else {}
            model = create_model(name, in_channels=3, num_classes=1, **kwargs)
            n = sum(p.numel() for p in model.parameters())
            rows.append((name, enc or "-", f"{n / 1e6:.1f} M", info["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
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


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the resolved config as YAML (a ``tune.space`` is checked too)."""
    from segray.search_space import parse_space

    cfg = _load(args)
    if cfg.tune.space:
        parse_space(cfg.tune.space, cfg)
    print(cfg.to_yaml(), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Fingerprint a dataset: sizes, modes, mask values, the class mapping, balance, problems."""
    from segray.config import load_config
    from segray.data.dataset import inspect_data
    from segray.data.remote import root_setting

    overrides = list(args.overrides)
    if args.data is not None and OVERRIDE.match(args.data):  # `segray inspect key=value ...`
        overrides, args.data = [args.data, *overrides], None
    if args.data is not None:
        overrides.append(f"data.root={root_setting(args.data)}")  # a URI stays a URI
        if load_config(args.config, overrides).data.source != "pet":
            overrides.append("data.source=folder")
    cfg, fp = inspect_data(load_config(args.config, overrides), strict=False, sample=args.sample)
    print(fp.table())
    path = fp.save(args.output)
    print(f"fingerprint -> {path}")
    fp.raise_if_unusable()
    if fp.updates:
        settings = " ".join(f"{k}={v}" for k, v in fp.updates.items())
        print(f"train and tune will use: {settings}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
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
        cfg = _load(args)
        output = args.output
    result = run_training(cfg, output, resume=bool(args.resume), address=args.address)
    m = result.best_metrics
    print(
        f"done: best val_dice {m.get('val_dice', float('nan')):.4f} (epoch {m.get('epoch')}), "
        f"{len(result.history)} epochs -> {result.best}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
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
    keys = ("dice", "iou", "accuracy", "precision", "recall", "f1", "mse", "roc_auc", "pr_auc")
    keys += ("hd95", "msd", "boundary_f1", "v_rand", "v_info")
    print(
        "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)
        + f"  ({m.get('num_images')} images, {m.get('num_images_no_foreground', 0)} without "
        "foreground; a class absent from target and prediction counts as undefined, never 1.0)"
    )
    print(f"report -> {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to TorchScript or ONNX (uint8 images in, probabilities out)."""
    from segray.export import export_model

    report = export_model(args.checkpoint, args.format, args.output, tta=args.tta)
    diffs = ", ".join(f"{size}: {d:.2e}" for size, d in report.max_abs_diff.items())
    print(f"exported {report.format} -> {report.path}  (parity vs eager, max abs diff: {diffs})")
    return 0


def _resume_or_start(args: argparse.Namespace, what: str) -> None:
    """``--resume-or-start``: continue the search in ``--output`` if it holds one."""
    from segray.tune import search_exists

    if args.resume_or_start and not args.resume and search_exists(args.output):
        print(f"resuming the {what} in {args.output} (--resume-or-start)")
        args.resume = args.output


def cmd_tune(args: argparse.Namespace) -> int:
    """Hyperparameter search: Tune + Optuna + ASHA, each trial a DDP training."""
    from segray.tune import run_tune

    _resume_or_start(args, "search")
    cfg = None if args.resume else _load(args)  # run_tune checks tune.space before Ray starts
    output = args.resume or args.output
    result = run_tune(cfg, output, resume=bool(args.resume), address=args.address)
    s = result.summary
    print(
        f"search: {s['num_trials']} trials ({s['completed']} completed, {s['errored']} errored, "
        f"{s['stopped_early']} stopped early by ASHA), {s['trial_epochs_total']} trial-epochs, "
        f"{s['wall_time_s']:.0f}s"
    )
    if not s["best"]:
        print("no trial reported a metric: see the errors in trials.parquet", file=sys.stderr)
        return 1
    b = s["best"]
    params = ", ".join(f"{k}={v}" for k, v in b["params"].items())
    print(f"best: {s['metric']} {b[s['metric']]:.4f} at epoch {b['epoch']} with {params}")
    print(
        f"outputs -> {result.output} (trials.parquet, history.parquet, summary.json, plots/, best/)"
    )
    if args.then_cv:
        from segray.checkpoint import fetch_checkpoint, load_checkpoint_config
        from segray.cv import run_cv

        best = load_checkpoint_config(fetch_checkpoint(result.best))
        cv = run_cv(best, f"{result.output}/cv", folds=args.then_cv, address=args.address)
        print(f"cross-validation of the best config -> {cv.output}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """K-fold cross-validation: one DDP trial per fold, then the fold ensemble."""
    from segray.cv import run_cv

    _resume_or_start(args, "cross-validation")
    cfg = None if args.resume else _load(args)
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


def cmd_segment(args: argparse.Namespace) -> int:
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


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained report.html for a segray output folder."""
    from segray.report import ReportError, write_report

    try:
        path = write_report(args.run_dir, args.output, gallery=args.gallery, seed=args.seed)
    except ReportError as e:
        print(f"segray: error: {e}", file=sys.stderr)
        return 2
    print(f"report -> {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on the built-in synthetic data (local Ray, CPU)."""
    from segray.demo import run_demo

    run_demo(args.output, small=args.small, overrides=args.overrides, address=args.address)
    return 0


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
        "demo", help="the whole pipeline on built-in synthetic data: synth, tune, evaluate, segment"
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
        help="config overrides for the demo's search",
    )
    p.set_defaults(func=cmd_demo)

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
        "suspicious files; write fingerprint.json. Exits 2 with a one-line error if the "
        "dataset cannot be trained on as configured.",
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
        default=".",
        metavar="DIR",
        help="where fingerprint.json goes (default: the current folder)",
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
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted search in DIR")
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
    except KeyboardInterrupt:
        print("segray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
