"""`segray tune`: the hyperparameter search (Ray Tune + Optuna + ASHA, each trial a DDP training)."""

from __future__ import annotations

import argparse
import sys

from segray.commands.common import (
    add_address,
    add_config_args,
    load,
    resume_config,
    resume_or_start,
)

_STOPPED_BY = (("stopped_by_budget", "time budget"), ("stopped_by_plateau", "plateau stop"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search hyperparameters (Ray Tune + Optuna + ASHA, DDP trials)")
    add_config_args(p)
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
    add_address(p)
    p.add_argument(
        "--then-cv",
        type=int,
        metavar="K",
        help="then cross-validate the best trial's config over K folds into OUTPUT/cv "
        "(as `segray cv`): per-fold scores and the K-model ensemble",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Hyperparameter search: Tune + Optuna + ASHA, each trial a DDP training."""
    from segray.search.run import run_tune

    resume_or_start(args, "search")
    # run_tune checks tune.space (and, resuming, what may change) before a trial starts
    cfg = resume_config(args) if args.resume else load(args)
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
