"""Search overhead: where a trial's time goes, for `segray tune` and a K-fold `segray cv`.

Usage::

    python benchmarks/search_overhead.py [--what tune,cv] [--config configs/tune_local.yaml]
                                         [--folds 5] [--workdir DIR]
                                         [--output benchmarks/results/search_overhead.json]

Each command runs as a user runs it (``segray tune --config ... --output ...``, then
``segray cv --config ... --folds K --output ...``), in a subprocess, one at a time under the
machine-wide Ray lock, with ``SEGRAY_TIMELINE`` set so that the trial drivers and the Train
workers record their moments (`segray.timeline`). Every trial's life is then cut into:

    driver prepare      trial function entered -> trainer.fit() called (config, data checks)
    schedule + spawn    fit() called -> the first worker process exists (controller actor,
                        placement group, worker processes forked)
    imports             worker process started -> segray.train.worker (torch, segray) imported
    group init          imported -> the train loop starts (Train's process-group rendezvous)
    dataset             loop start -> datasets built
    model               datasets -> model built, wrapped for DDP, loaders ready
    epochs              the sum of the epochs (train + validation), as `epoch_time_s`
    checkpoint          epoch end -> rank 0's checkpoint written
    report              checkpoint written -> ``ray.train.report`` returned (+ between epochs)
    teardown            the loop's end -> fit() returned (workers and controller stopped)
    results             fit() returned -> the trial function returns (history, markers)

and Tune's own clock for the trial: ``wall_time_s - train_time_s`` from ``trials.parquet``.
The headline numbers: the training share (the sum of all epoch times / the command's wall
time) and, for cv, the command's wall / the folds' epoch times.

Trials run one at a time here (``tune_local``: 2 workers x 1 CPU on a 2-CPU machine), so the
phases of different trials never overlap and the command's wall time minus the trials' wall
times is what runs outside any trial: Ray's start, Tune's bookkeeping, the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import publish, ray_lock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHASES = (
    "driver prepare",
    "schedule + spawn",
    "imports",
    "group init",
    "dataset",
    "model",
    "epochs",
    "checkpoint",
    "report",
    "teardown",
    "results",
)


def run_command(argv: list[str], timeline: Path, log: Path) -> float:
    """Run one segray command with its timeline; its wall time in seconds."""
    env = {**os.environ, "SEGRAY_TIMELINE": str(timeline)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (exit {proc.returncode}); see {log}")
    return wall


def _events(timeline: Path) -> dict[str, list[dict[str, Any]]]:
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in timeline.read_text().splitlines():
        e = json.loads(line)
        if e.get("run") and e.get("t") is not None:
            by_run[e["run"]].append(e)
    return by_run


def _first(events: list[dict[str, Any]], name: str, **match: Any) -> float | None:
    ts = [
        e["t"]
        for e in events
        if e["event"] == name and all(e.get(k) == v for k, v in match.items())
    ]
    return min(ts) if ts else None


def trial_phases(events: list[dict[str, Any]]) -> dict[str, float]:
    """One trial's phases in seconds (the last attempt's, where a trial was retried)."""
    r0 = [e for e in events if e.get("rank") in (0, None)]
    at = lambda name: _first(r0, name)  # noqa: E731
    last = lambda name: max((e["t"] for e in r0 if e["event"] == name), default=None)  # noqa: E731
    epochs = defaultdict(dict)
    for e in r0:
        if e["event"] == "checkpoint_saved" and e.get("name", "")[-4:].isdigit():
            e = {**e, "epoch": int(e["name"][-4:])}  # checkpoint_epoch_0003
        if "epoch" in e:
            epochs[e["epoch"]][e["event"]] = e["t"]
    ep = [epochs[k] for k in sorted(epochs)]
    spans = {
        "driver prepare": (at("trial_start"), at("fit_start")),
        "schedule + spawn": (at("fit_start"), at("worker_process")),
        "imports": (at("worker_process"), at("worker_imported")),
        "group init": (at("worker_imported"), at("loop_start")),
        "dataset": (at("loop_start"), at("data_ready")),
        "model": (at("data_ready"), at("ready")),
        "teardown": (last("loop_end"), at("fit_end")),
        "results": (at("fit_end"), at("trial_end") or at("results_read")),
    }
    out = {
        k: (b - a) if a is not None and b is not None else float("nan")
        for k, (a, b) in spans.items()
    }
    out["epochs"] = sum(
        e["epoch_end"] - e["epoch_start"] for e in ep if {"epoch_start", "epoch_end"} <= e.keys()
    )
    out["checkpoint"] = sum(
        e["checkpoint_saved"] - e["epoch_end"]
        for e in ep
        if {"checkpoint_saved", "epoch_end"} <= e.keys()
    )
    report = [
        e["reported"] - e.get("checkpoint_saved", e["epoch_end"]) for e in ep if "reported" in e
    ]
    gaps = [
        b["epoch_start"] - a["reported"]
        for a, b in zip(ep, ep[1:])
        if "reported" in a and "epoch_start" in b
    ]
    out["report"] = sum(report) + sum(gaps)
    # A trial ASHA (or max_t) stops is ended by Tune at its last report: its last moment
    start, end = at("trial_start") or at("fit_start"), max(e["t"] for e in events)
    out["total"] = (end - start) if start else float("nan")
    out["epochs_run"] = len(ep)
    return {k: out[k] for k in (*PHASES, "total", "epochs_run")}


def measure(what: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / what
    timeline = work / f"{what}.jsonl"
    argv = [
        sys.executable,
        "-m",
        "segray",
        what,
        "--config",
        str(args.config),
        "--output",
        str(out),
    ]
    if what == "cv":
        argv += ["--folds", str(args.folds)]
    print(f"running: {' '.join(argv[2:])}", flush=True)
    wall = run_command(argv, timeline, work / f"{what}.log")
    runs = _events(timeline)
    trials = {
        run: trial_phases(ev)
        for run, ev in sorted(runs.items(), key=lambda kv: min(e["t"] for e in kv[1]))
    }
    table = pd.read_parquet(out / "trials.parquet")
    tune_clock = (table["wall_time_s"] - table["train_time_s"]).tolist()
    epoch_sum = sum(t["epochs"] for t in trials.values())
    trial_sum = sum(t["total"] for t in trials.values())
    return {
        "command": " ".join(argv[2:]),
        "wall_s": round(wall, 2),
        "trials": len(trials),
        "trial_epochs": int(sum(t["epochs_run"] for t in trials.values())),
        "epoch_s": round(epoch_sum, 2),
        "training_share": round(epoch_sum / wall, 3),
        "wall_over_epochs": round(wall / epoch_sum, 3) if epoch_sum else None,
        "outside_trials_s": round(wall - trial_sum, 2),
        "startup_tune_clock_s": {
            "median": round(statistics.median(tune_clock), 2),
            "per_trial": [round(v, 2) for v in tune_clock],
        },
        "phases_mean_s": {
            p: round(statistics.fmean(t[p] for t in trials.values()), 3) for p in PHASES
        },
        "per_trial": {run: {k: round(v, 3) for k, v in t.items()} for run, t in trials.items()},
    }


def render(report: dict[str, Any]) -> str:
    cols = [w for w in ("tune", "cv") if w in report["results"]]
    res = report["results"]
    lines = ["| per trial (mean s) | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for p in PHASES:
        lines.append(
            f"| {p} | " + " | ".join(f"{res[c]['phases_mean_s'][p]:.2f}" for c in cols) + " |"
        )
    rows = [
        ("trials", lambda r: f"{r['trials']}"),
        ("trial-epochs", lambda r: f"{r['trial_epochs']}"),
        ("command wall (s)", lambda r: f"{r['wall_s']:.1f}"),
        ("sum of epoch times (s)", lambda r: f"{r['epoch_s']:.1f}"),
        ("outside any trial (s)", lambda r: f"{r['outside_trials_s']:.1f}"),
        (
            "start-up per trial, Tune's clock (median s)",
            lambda r: f"{r['startup_tune_clock_s']['median']:.2f}",
        ),
        ("training share (epochs / wall)", lambda r: f"{r['training_share']:.2f}"),
        ("wall / epochs", lambda r: f"{r['wall_over_epochs']:.2f}"),
    ]
    for name, fmt in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(res[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", default="tune,cv", help="comma-separated: tune, cv")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tune_local.yaml")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--label", default="", help="a name for this run in the JSON (before/after)")
    p.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "search_overhead.json"
    )
    args = p.parse_args()
    args.config = args.config.resolve()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segray-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    with ray_lock():
        for what in args.what.split(","):
            results[what] = measure(what, args, work)
    report = {
        "label": args.label,
        "cpus": os.cpu_count(),
        "config": str(args.config),
        "results": results,
    }
    publish(report, render(report), args.output)


if __name__ == "__main__":
    main()
