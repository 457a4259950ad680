"""What each `segray` command does: one handler per sub-command (`segray.cli` parses).

Heavy imports happen inside the handlers so that ``segray --help`` answers at once. A handler
returns the exit status (None = 0); bad input raises one of `segray.errors.USER_ERRORS`,
which `segray.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)+=")  # section.key=value


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
    from segray.search.space import parse_space

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
            overrides += _folder_layout(args.data, load_config(args.config, overrides))
    cfg, fp = inspect_data(load_config(args.config, overrides), strict=False, sample=args.sample)
    print(fp.table())
    if args.output is not None:  # written only where asked: never into the current folder
        print(f"fingerprint -> {fp.save(args.output)}")
    fp.raise_if_unusable()
    if fp.updates:
        settings = " ".join(f"{k}={v}" for k, v in fp.updates.items())
        print(f"train and tune will use: {settings}")
    return 0


def _folder_layout(data: str, cfg: Any) -> list[str]:
    """The image and mask folders of ``data`` found by name (imagesTr/ + labelsTr/, image/ +
    label/, ...), as `segray auto` finds them, where the config keeps the default names."""
    from segray.data.folder import find_layout

    root = Path(data).expanduser()
    if not root.is_dir() or (cfg.data.images_dir, cfg.data.masks_dir) != ("images", "masks"):
        return []
    layout = find_layout([p.name for p in root.iterdir() if p.is_dir()])
    if layout is None or layout == ("images", "masks"):
        return []
    return [f"data.images_dir={layout[0]}", f"data.masks_dir={layout[1]}"]


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
    if m.get("num_images_boundary_penalised") or m.get("num_images_boundary_empty"):
        print(
            f"boundary metrics: {m['num_images_boundary_penalised']} images with foreground in "
            "only one of target and prediction scored the worst case (hd95 = msd = the image "
            f"diagonal, boundary_f1 0) in the means; {m['num_images_boundary_empty']} with "
            "foreground in neither left out"
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
    from segray.search.run import search_exists

    if args.resume_or_start and not args.resume and search_exists(args.output):
        print(f"resuming the {what} in {args.output} (--resume-or-start)")
        args.resume = args.output


def _resume_config(args: argparse.Namespace):
    """Resuming: the config that ``--config`` and the overrides ask for (``--config`` whole,
    else the saved config with the overrides), which the resume compares with the saved one;
    None without either (the saved config as it is)."""
    from segray.config import load_config
    from segray.storage import Location

    if not args.config and not args.overrides:
        return None
    saved = Location.parse(args.resume).join("config.yaml")
    if not args.config and not saved.exists():
        raise FileNotFoundError(f"{args.resume}: no config.yaml: not a segray output to resume")
    return load_config(args.config or saved.uri, args.overrides)


_STOPPED_BY = (("stopped_by_budget", "time budget"), ("stopped_by_plateau", "plateau stop"))


def cmd_tune(args: argparse.Namespace) -> int:
    """Hyperparameter search: Tune + Optuna + ASHA, each trial a DDP training."""
    from segray.search.run import run_tune

    _resume_or_start(args, "search")
    # run_tune checks tune.space (and, resuming, what may change) before a trial starts
    cfg = _resume_config(args) if args.resume else _load(args)
    output = args.resume or args.output
    result = run_tune(cfg, output, resume=bool(args.resume), address=args.address)
    s = result.summary
    cut = [(s.get(k) or 0, why) for k, why in _STOPPED_BY if s.get(k)]
    print(
        f"search: {s['num_trials']} trials ({s['completed']} completed, {s['errored']} errored, "
        f"{s['stopped_early']} stopped early by ASHA"
        f"{''.join(f', {n} stopped by the {why}' for n, why in cut)}), "
        f"{s['trial_epochs_total']} trial-epochs, {s['wall_time_s']:.0f}s"
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
        from segray.search.cv import run_cv

        best = load_checkpoint_config(fetch_checkpoint(result.best))
        cv = run_cv(best, f"{result.output}/cv", folds=args.then_cv, address=args.address)
        print(f"cross-validation of the best config -> {cv.output}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """K-fold cross-validation: one DDP trial per fold, then the fold ensemble."""
    from segray.search.cv import run_cv

    _resume_or_start(args, "cross-validation")
    cfg = _resume_config(args) if args.resume else _load(args)
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


def cmd_auto(args: argparse.Namespace) -> int:
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


def cmd_demo(args: argparse.Namespace) -> int:
    """`segray auto` on the built-in synthetic data (local Ray, CPU)."""
    from segray.demo import run_demo

    run_demo(args.output, small=args.small, overrides=args.overrides, address=args.address)
    return 0
