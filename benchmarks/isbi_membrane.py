"""ISBI 2012 membrane slices: segray (Ray Train) next to a plain PyTorch loop, same wall budget.

Usage::

    python benchmarks/isbi_membrane.py [--minutes 7] [--quick] [--layout auto|1x2|2x1] [--probe-epochs 3]
                                       [--precision auto|fp32|bf16]
                                       [--data ../shared/datasets/isbi2012-membrane]
                                       [--output benchmarks/results/isbi_membrane.json]
    python benchmarks/isbi_membrane.py --only segray --epochs 30 --precision bf16 [--layout 1x2]
    python benchmarks/isbi_membrane.py --accuracy [--seeds 0 1 2] ...   # benchmarks/isbi_accuracy.py:
        single model / + flip TTA / 5-fold ensemble / + TTA + post-processing on held-out slices

``--precision`` is ``train.precision`` of both sides (the plain loop autocasts the same way,
`segray.precision`; default ``auto``: bf16 + channels_last on a CPU with native bf16).
``--only segray`` trains only the segray side for exactly ``--epochs`` epochs in one layout (no
probe, no plain side, no budget): the cheap row for comparing precisions, e.g. ``--precision
fp32`` then ``bf16`` (writes ``isbi_membrane_segray_<precision>.json`` unless ``--output``).

Both sides train ``configs/isbi_membrane.yaml`` (slices 0-19 train, 20-29 val, label > 127 =
cell = foreground, grayscale ResNet34-U-Net, 256 x 256 random crops (4 per slice an epoch) with flips / rot90 /
brightness-contrast, global batch 4, Adam 1e-3, 0.5 BCE + 0.5 Dice, grad clip 1.0, cosine to
min_lr over the chosen epochs), with the same seed, the same datasets and augmentation
(``segray.data.build_datasets``, i.e. ``transforms_from_config``), the same shuffle order and
the same evaluation: every pixel of the full 512 x 512 val slices into one
``segray.metrics.SegMetrics`` per epoch.

* **plain**: one process, ``torch.set_num_threads(2)``, a hand-written train step (forward,
  loss, backward, clip, Adam step) and eval loop; no Ray is imported or started.
* **segray**: ``segray.train.run_training`` on a local Ray started by
  ``segray.cluster.ensure_ray`` (its start-up is timed and reported on its own, outside the
  budget). ``--layout`` picks the DDP layout on this 2-core machine: ``1x2`` = 1 worker x 2
  CPUs x 2 torch threads, batch 4; ``2x1`` = 2 gloo workers x 1 CPU x 1 thread, batch 2 per
  worker (same global batch 4 and the same 80 crops per epoch). ``auto`` (default) trains each
  layout for a few epochs and keeps the one with the shorter wall time per epoch.

Budget (``--minutes`` per side): the epoch count is chosen up front, since the cosine schedule
needs it. plain: a probe of 2 epochs of a throw-away model warms the process up and gives the
steady epoch time t (its second epoch); the timed run starts warm, so epochs =
floor((budget - set-up) / t). segray: the layout probe gives the time from calling
``run_training`` to the first epoch's report (worker start-up + epoch 1) and the steady wall
per epoch; epochs = 1 + floor((budget - that) / steady). The budget covers the
``run_training`` call (worker start-up included), not the Ray start-up.

Time per epoch, both sides, excludes epoch 1 (start-up, lazy allocations). segray's is the
wall-clock gap between consecutive epoch reports as seen by the Ray Train controller (a
``UserCallback``), so it includes the per-epoch checkpoint write and reporting; its
``epoch_time_s`` (train + eval only, as the workers log it) is reported too. The ratio target
uses the wall-clock number.

A full run takes about 18 minutes: a 2-epoch plain probe, 7 minutes of plain training, Ray
start-up, two 3-epoch layout probes (about 3 minutes), 7 minutes of segray training.

Metrics are those of the best epoch by val foreground Dice (the checkpoint segray exports as
``best``); the last epoch's are reported too. Targets: segray val foreground Dice >= 0.946 and
segray time per epoch <= 1.10 x plain. Prints a table and writes JSON. The Ray part holds the
machine-wide lock of ``tests/conftest.py`` (``$SEGRAY_RAY_LOCK``), since two local Rays at once
break Ray Train.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import publish, ray_lock
from torch.utils.data import DataLoader, DistributedSampler

from segray.config import Config, apply_overrides, load_config
from segray.data import build_datasets, prepare_data
from segray.losses import create_loss
from segray.metrics import SegMetrics, probs_from_logits
from segray.models import create_model
from segray.precision import resolve_precision

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "isbi_membrane.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "isbi2012-membrane"
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "isbi_membrane.json"

DICE_TARGET = 0.946  # what a plain ResNet34-U-Net loop reached here in 7 minutes (dataset README)
RATIO_TARGET = 1.10  # segray time per epoch / plain time per epoch
PLAIN_PROBE_EPOCHS = 2  # epoch 1 = start-up, epoch 2 = steady
THREADS = 2  # this machine's cores

# DDP layouts on 2 cores; batch is per worker so that the global batch stays 4.
LAYOUTS: dict[str, dict[str, Any]] = {
    "1x2": {
        "train.num_workers": 1,
        "train.cpus_per_worker": 2,
        "train.torch_threads": 2,
        "data.batch_size": 4,
    },
    "2x1": {
        "train.num_workers": 2,
        "train.cpus_per_worker": 1,
        "train.torch_threads": 1,
        "data.batch_size": 2,
    },
}
METRICS = ("val_dice", "val_iou", "val_accuracy", "val_dice_membrane", "val_loss")


# --------------------------------------------------------------------------- plain PyTorch
def plain_run(cfg: Config, epochs: int, label: str = "plain") -> dict[str, Any]:
    """Train ``cfg`` for ``epochs`` in this process with a hand-written loop; per-epoch history."""
    t_call = time.time()
    seed = cfg.train.seed
    torch.set_num_threads(THREADS)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # same seed, order of use and so initial weights as a segray worker

    datasets = build_datasets(cfg)  # segray's data + transforms_from_config augmentation
    model = create_model(cfg.model.name, **cfg.model.kwargs(cfg.num_classes))
    precision = resolve_precision(cfg.train.precision, "cpu", cfg.train.channels_last)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = create_loss(
        cfg.loss.name,
        num_classes=cfg.num_classes,
        bce_weight=cfg.loss.bce_weight,
        ignore_index=cfg.data.ignore_index,
        smooth=cfg.loss.smooth,
    )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    # lr(e) = min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2, stepped once per epoch.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs, eta_min=cfg.optim.min_lr
    )
    # A one-replica DistributedSampler only to shuffle exactly like segray's (seed + epoch).
    sampler = DistributedSampler(datasets["train"], num_replicas=1, rank=0, shuffle=True, seed=seed)
    train_loader = DataLoader(
        datasets["train"], batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True
    )
    val_loader = DataLoader(
        datasets["val"], batch_size=cfg.data.eval_batch_size or cfg.data.batch_size
    )
    metrics = SegMetrics(
        cfg.num_classes,
        class_names=cfg.data.classes,
        threshold=cfg.train.threshold,
        ignore_index=cfg.data.ignore_index,
    )
    setup_s = time.time() - t_call

    history = []
    for epoch in range(epochs):
        t0 = time.time()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        total, n = 0.0, 0
        for images, masks in train_loader:
            if precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with precision.autocast("cpu"):
                logits = model(images)
            loss = loss_fn(logits.float(), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            total, n = total + loss.item() * len(images), n + len(images)
        schedule.step()

        model.eval()
        metrics.reset()
        val_total, val_n = 0.0, 0
        with torch.no_grad():
            for images, masks in val_loader:
                if precision.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with precision.autocast("cpu"):
                    logits = model(images).float()
                val_total, val_n = (
                    val_total + loss_fn(logits, masks).item() * len(images),
                    val_n + len(images),
                )
                metrics.update(probs_from_logits(logits), masks)
        m = metrics.compute()
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": total / max(n, 1),
            "val_loss": val_total / max(val_n, 1),
            **{f"val_{k}": m[k] for k in ("dice", "iou", "accuracy", "dice_membrane")},
            "epoch_time_s": time.time() - t0,
        }
        history.append(row)
        print(
            f"[{label}] epoch {epoch + 1}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_dice {row['val_dice']:.4f}  val_iou {row['val_iou']:.4f}  "
            f"val_accuracy {row['val_accuracy']:.4f}  {row['epoch_time_s']:.1f}s",
            flush=True,
        )
    return {"setup_s": setup_s, "wall_s": time.time() - t_call, "history": history}


# --------------------------------------------------------------------------- segray (Ray)
def _report_clock_class():
    """A Ray Train ``UserCallback`` that appends ``epoch time.time()`` per report to a file.

    It runs in the Train controller (same machine), so the file is how its clock gets back.
    Built lazily so that importing this module (and the plain loop) never imports Ray.
    """
    from ray.train import UserCallback

    class ReportClock(UserCallback):
        def __init__(self, path: str) -> None:
            self.path = path

        def after_report(self, run_context, metrics, checkpoint) -> None:
            epoch = metrics[0].get("epoch") if metrics else None
            with open(self.path, "a") as f:
                f.write(f"{epoch} {time.time():.6f}\n")

    return ReportClock


def precision_parity(checkpoint: Path, cfg: Config) -> dict[str, Any]:
    """The best checkpoint's masks on the val slices in fp32 and in bf16 (channels_last):
    the fraction of equal pixels and each one's foreground Dice (pooled over the slices)."""
    from segray.data import MaskMapper, data_splits, list_samples, read_mask
    from segray.inference.segmenter import load_segmenter

    samples = data_splits(list_samples(cfg.data, check=False), cfg.data)["val"]
    mapper = MaskMapper.from_config(cfg.data)
    targets = [mapper(read_mask(s.mask), s.key, name=s.mask) for s in samples]
    masks = {}
    for precision in ("fp32", "bf16"):
        seg = load_segmenter(checkpoint, device="cpu", precision=precision)
        masks[precision] = seg.predict_batch([s.image for s in samples])
    equal = sum(int((a == b).sum()) for a, b in zip(masks["fp32"], masks["bf16"], strict=True))
    total = sum(t.size for t in targets)

    def dice(preds: list[np.ndarray]) -> float:
        inter = sum(int(((p == 1) & (t == 1)).sum()) for p, t in zip(preds, targets, strict=True))
        size = sum(
            int((p == 1).sum()) + int((t == 1).sum()) for p, t in zip(preds, targets, strict=True)
        )
        return 2 * inter / size if size else math.nan

    d32, d16 = dice(masks["fp32"]), dice(masks["bf16"])
    return {
        "images": len(samples),
        "pixels_equal": equal / total,
        "dice_fp32": d32,
        "dice_bf16": d16,
        "dice_delta": abs(d16 - d32),
        "pass": bool(equal / total >= 0.995 and abs(d16 - d32) <= 0.002),
    }


def segray_run(
    cfg: Config, epochs: int, layout: str, workdir: Path, label: str, *, parity: bool = False
) -> dict[str, Any]:
    """``run_training`` of ``cfg`` with ``layout`` for ``epochs``; history + report wall clock
    (+ ``parity``: bf16 vs fp32 masks of the best checkpoint, `precision_parity`)."""
    from segray.train import run_training

    run_cfg = apply_overrides(cfg, {**LAYOUTS[layout], "train.epochs": epochs})
    out = workdir / label
    clock = workdir / f"{label}.clock"
    print(f"[segray {label}] layout {layout}, {epochs} epochs", flush=True)
    t_call = time.time()
    result = run_training(run_cfg, out, callbacks=[_report_clock_class()(str(clock))])
    wall = time.time() - t_call
    history = result.history.to_dict("records")
    reports = {}
    for line in clock.read_text().splitlines():
        epoch, stamp = line.split()
        reports[int(float(epoch))] = float(stamp)
    for row in history:
        e = int(row["epoch"])
        row["report_time_s"] = reports.get(e, math.nan) - t_call
        row["report_gap_s"] = reports.get(e, math.nan) - reports.get(
            e - 1, t_call if e == 1 else math.nan
        )
    found = precision_parity(out / "checkpoints" / "best", run_cfg) if parity else None
    shutil.rmtree(out, ignore_errors=True)  # checkpoints: ~300 MB an epoch for ResNet34 + Adam
    return {
        "wall_s": wall,
        "history": history,
        "first_report_s": history[0]["report_time_s"],
        "parity": found,
    }


# --------------------------------------------------------------------------- summaries
def _steady(values: list[float]) -> float:
    """Mean over epochs 2.. (epoch 1 carries start-up); the one value if there is only one."""
    rest = values[1:] or values
    return float(np.mean(rest)) if rest else math.nan


def _pick(history: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(history, key=lambda r: r["val_dice"])
    return {
        "best_epoch": int(best["epoch"]),
        "best": {k: float(best[k]) for k in METRICS if k in best},
        "last": {k: float(history[-1][k]) for k in METRICS if k in history[-1]},
    }


def _epochs_for(budget_s: float, first_s: float, steady_s: float) -> int:
    """Most epochs with first_s + (epochs - 1) * steady_s <= budget_s, at least 2."""
    return max(2, 1 + int(max(0.0, budget_s - first_s) // steady_s))


def _slim(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("epoch", "lr", "train_loss", *METRICS, "epoch_time_s", "report_time_s", "report_gap_s")
    return [
        {k: (float(r[k]) if k != "epoch" else int(r[k])) for k in keep if k in r} for r in history
    ]


def _config(args: argparse.Namespace) -> Config:
    root = str(Path(args.data).expanduser().resolve())
    return load_config(CONFIG, {"data.root": root, "train.precision": args.precision})


def _machine(load_before: float) -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was before and after."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "ray": _ray_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def run_segray_only(args: argparse.Namespace) -> dict[str, Any]:
    """``--only segray``: one segray training of ``--epochs`` epochs in one layout."""
    cfg = prepare_data(_config(args))
    layout = "1x2" if args.layout == "auto" else args.layout
    precision = resolve_precision(cfg.train.precision, "cpu", cfg.train.channels_last)
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="segray-isbi-bench-"))
    try:
        with ray_lock():
            import ray

            from segray.cluster import ensure_ray

            ensure_ray()
            try:
                seg = segray_run(
                    cfg, args.epochs, layout, workdir, f"segray-{precision.name}", parity=True
                )
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    best = _pick(seg["history"])
    dice = best["best"]["val_dice"]
    return {
        "machine": _machine(load_before),
        "settings": {
            "config": str(CONFIG.relative_to(REPO)),
            "only": "segray",
            "layout": layout,
            "epochs": args.epochs,
            **precision.record(),
        },
        "segray": {
            "wall_s": seg["wall_s"],
            "first_epoch_s": seg["history"][0]["epoch_time_s"],
            "per_epoch_s": _steady([r["report_gap_s"] for r in seg["history"]]),
            "per_epoch_compute_s": _steady([r["epoch_time_s"] for r in seg["history"]]),
            **best,
            "history": _slim(seg["history"]),
        },
        "parity": seg["parity"],
        "targets": {
            "dice": {"target": DICE_TARGET, "value": dice, "pass": bool(dice >= DICE_TARGET)}
        },
    }


def format_segray_only(report: dict[str, Any]) -> str:
    s, st, m = report["segray"], report["settings"], report["machine"]
    return "\n".join(
        [
            f"segray only: {st['epochs']} epochs, layout {st['layout']}, precision "
            f"{st['precision']}{' + channels_last' if st['channels_last'] else ''}",
            f"time/epoch, epochs 2.. (s): {s['per_epoch_s']:.2f} (train+eval only "
            f"{s['per_epoch_compute_s']:.2f}); total wall {s['wall_s']:.1f} s",
            f"best epoch {s['best_epoch']}: val Dice {s['best']['val_dice']:.4f} (target >= "
            f"{DICE_TARGET}: {'PASS' if report['targets']['dice']['pass'] else 'FAIL'}), "
            f"IoU {s['best']['val_iou']:.4f}; last val Dice {s['last']['val_dice']:.4f}",
            "bf16 vs fp32 masks of the best checkpoint on the {images} val slices: {pixels_equal:.4%} "
            "of pixels equal, Dice {dice_fp32:.4f} vs {dice_bf16:.4f} (targets >= 99.5%, "
            "|delta| <= 0.002: {verdict})".format(
                **report["parity"], verdict="PASS" if report["parity"]["pass"] else "FAIL"
            ),
            f"{m['cpus']} CPUs, torch {m['torch']}, ray {m['ray']}; load average "
            f"{m['load_average_before']:.2f} before, {m['load_average_after']:.2f} after",
        ]
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    budget = args.minutes * 60.0
    cfg = _config(args)
    cfg = prepare_data(cfg)  # absolute root; checks every file once
    load_before = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average {load_before:.2f}; "
        f"budget {args.minutes:g} min per side",
        flush=True,
    )
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}: timings will be noisy", flush=True)

    # ---- plain: timing probe, then the budgeted run
    probe = plain_run(cfg, PLAIN_PROBE_EPOCHS, label="plain probe")
    p_times = [r["epoch_time_s"] for r in probe["history"]]
    # The probe warmed this process up (its first epoch is start-up), so every epoch of the
    # timed run costs about the probe's second: epochs = floor((budget - set-up) / t).
    plain_epochs = _epochs_for(budget, probe["setup_s"] + p_times[-1], p_times[-1])
    print(
        f"plain: probe epochs {[round(t, 1) for t in p_times]} s -> {plain_epochs} epochs",
        flush=True,
    )
    plain = plain_run(cfg, plain_epochs)

    # ---- segray: Ray start-up, layout probe, then the budgeted run
    workdir = Path(tempfile.mkdtemp(prefix="segray-isbi-bench-"))
    try:
        with ray_lock():
            import ray

            from segray.cluster import ensure_ray

            t0 = time.time()
            where = ensure_ray()
            ray_start = time.time() - t0
            print(f"Ray started in {ray_start:.1f} s ({where})", flush=True)
            try:
                layouts = list(LAYOUTS) if args.layout == "auto" else [args.layout]
                probes = {}
                for layout in layouts if len(layouts) > 1 else []:
                    r = segray_run(cfg, args.probe_epochs, layout, workdir, f"probe-{layout}")
                    gaps = [h["report_gap_s"] for h in r["history"]]
                    probes[layout] = {
                        "epochs": args.probe_epochs,
                        "first_report_s": r["first_report_s"],
                        "per_epoch_wall_s": _steady(gaps),
                        "per_epoch_compute_s": _steady([h["epoch_time_s"] for h in r["history"]]),
                        "wall_s": r["wall_s"],
                    }
                    print(f"[segray probe-{layout}] {probes[layout]}", flush=True)
                layout = (
                    min(probes, key=lambda k: probes[k]["per_epoch_wall_s"])
                    if probes
                    else layouts[0]
                )
                if layout in probes:
                    first, steady = (
                        probes[layout]["first_report_s"],
                        probes[layout]["per_epoch_wall_s"],
                    )
                else:  # no probe: assume segray's epochs cost what plain's do, plus its start-up
                    first, steady = 30.0 + p_times[0], p_times[-1]
                seg_epochs = _epochs_for(budget, first, steady)
                seg = segray_run(cfg, seg_epochs, layout, workdir, "main")
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # ---- report
    plain_steady = _steady([r["epoch_time_s"] for r in plain["history"]])
    seg_wall = _steady([r["report_gap_s"] for r in seg["history"]])
    seg_compute = _steady([r["epoch_time_s"] for r in seg["history"]])
    seg_startup = seg["first_report_s"] - seg["history"][0]["epoch_time_s"]
    plain_sum, seg_sum = _pick(plain["history"]), _pick(seg["history"])
    ratio = seg_wall / plain_steady
    dice = seg_sum["best"]["val_dice"]
    return {
        "machine": _machine(load_before),
        "settings": {
            "config": str(CONFIG.relative_to(REPO)),
            "data": cfg.data.root,
            "minutes_per_side": args.minutes,
            "quick": args.quick,
            "layout_arg": args.layout,
            "seed": cfg.train.seed,
            "global_batch": 4,
            "image_size": cfg.data.image_size,
        },
        "plain": {
            "probe_epoch_times_s": p_times,
            "epochs": plain_epochs,
            "setup_s": plain["setup_s"],
            "wall_s": plain["wall_s"],
            "first_epoch_s": plain["history"][0]["epoch_time_s"],
            "per_epoch_s": plain_steady,
            **plain_sum,
            "history": _slim(plain["history"]),
        },
        "segray": {
            "layout": layout,
            "layout_settings": LAYOUTS[layout],
            "layout_probe": probes,
            "ray_start_s": ray_start,
            "startup_s": seg_startup,
            "epochs": seg_epochs,
            "wall_s": seg["wall_s"],
            "first_epoch_s": seg["history"][0]["epoch_time_s"],
            "per_epoch_s": seg_wall,
            "per_epoch_compute_s": seg_compute,
            **seg_sum,
            "history": _slim(seg["history"]),
        },
        "ratio_per_epoch": ratio,
        "ratio_per_epoch_compute": seg_compute / plain_steady,
        "targets": {
            "dice": {"target": DICE_TARGET, "value": dice, "pass": bool(dice >= DICE_TARGET)},
            "time_ratio": {
                "target": RATIO_TARGET,
                "value": ratio,
                "pass": bool(ratio <= RATIO_TARGET),
            },
        },
    }


def _ray_version() -> str:
    import ray

    return ray.__version__


def format_table(report: dict[str, Any]) -> str:
    p, s = report["plain"], report["segray"]
    rows = [
        ("layout", "1 process x 2 threads", f"{s['layout']} (workers x CPUs)"),
        ("Ray start-up (s)", "-", f"{s['ray_start_s']:.1f}"),
        ("start-up before epoch 1 (s)", f"{p['setup_s']:.1f}", f"{s['startup_s']:.1f}"),
        ("epochs", f"{p['epochs']}", f"{s['epochs']}"),
        ("total wall (s)", f"{p['wall_s']:.1f}", f"{s['wall_s']:.1f}"),
        ("first epoch (s)", f"{p['first_epoch_s']:.1f}", f"{s['first_epoch_s']:.1f}"),
        ("time/epoch, epochs 2.. (s)", f"{p['per_epoch_s']:.2f}", f"{s['per_epoch_s']:.2f}"),
        ("  train+eval only (s)", f"{p['per_epoch_s']:.2f}", f"{s['per_epoch_compute_s']:.2f}"),
        ("best epoch", f"{p['best_epoch']}", f"{s['best_epoch']}"),
    ]
    for key, name in (
        ("val_dice", "val Dice (cell, fg)"),
        ("val_iou", "val IoU (cell, fg)"),
        ("val_accuracy", "val pixel accuracy"),
        ("val_dice_membrane", "val Dice (membrane, bg)"),
    ):
        rows.append((f"{name} best", f"{p['best'][key]:.4f}", f"{s['best'][key]:.4f}"))
        rows.append((f"{name} last", f"{p['last'][key]:.4f}", f"{s['last'][key]:.4f}"))
    width = max(len(r[0]) for r in rows) + 2
    header = f"{'':<{width}}{'plain':>24}{'segray':>24}"
    lines = [header, "-" * len(header)]
    lines += [f"{a:<{width}}{b:>24}{c:>24}" for a, b, c in rows]
    t = report["targets"]
    lines.append("-" * len(header))
    lines.append(
        f"segray/plain time per epoch: {report['ratio_per_epoch']:.3f} (train+eval only "
        f"{report['ratio_per_epoch_compute']:.3f})"
    )
    lines.append(
        f"target val Dice >= {t['dice']['target']}: {t['dice']['value']:.4f} "
        f"{'PASS' if t['dice']['pass'] else 'FAIL'}"
    )
    lines.append(
        f"target time/epoch ratio <= {t['time_ratio']['target']:.2f}: {t['time_ratio']['value']:.3f} "
        f"{'PASS' if t['time_ratio']['pass'] else 'FAIL'}"
    )
    if s["layout_probe"]:
        probe = ", ".join(
            f"{k}: {v['per_epoch_wall_s']:.2f} s/epoch (first report {v['first_report_s']:.1f} s)"
            for k, v in s["layout_probe"].items()
        )
        lines.append(
            f"layout probe ({next(iter(s['layout_probe'].values()))['epochs']} epochs each): {probe}"
        )
    m = report["machine"]
    lines.append(
        f"{m['cpus']} CPUs, torch {m['torch']}, ray {m['ray']}; load average "
        f"{m['load_average_before']:.2f} before, {m['load_average_after']:.2f} after"
        + ("; QUICK run: not a measurement" if report["settings"]["quick"] else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--accuracy" in argv:  # the accuracy rows: benchmarks/isbi_accuracy.py
        import isbi_accuracy

        argv.remove("--accuracy")
        isbi_accuracy.main(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=7.0, help="wall budget per side")
    parser.add_argument(
        "--quick", action="store_true", help="1 minute per side, 2-epoch layout probes"
    )
    parser.add_argument(
        "--layout", choices=["auto", *LAYOUTS], default="auto", help="segray DDP layout"
    )
    parser.add_argument(
        "--probe-epochs", type=int, default=3, help="epochs per segray layout probe"
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="ISBI 2012 folder (image/, label/)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="train.precision of both sides (segray.precision)",
    )
    parser.add_argument(
        "--only",
        choices=["both", "segray"],
        default="both",
        help="segray: train only segray's side, --epochs epochs, no probe or budget",
    )
    parser.add_argument("--epochs", type=int, default=30, help="--only segray: epochs")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    if args.only == "segray":
        output = args.output or DEFAULT_OUTPUT.with_name(
            f"isbi_membrane_segray_{args.precision}.json"
        )
        report = run_segray_only(args)
        publish(report, format_segray_only(report), output)
        return
    args.output = args.output or DEFAULT_OUTPUT
    if args.quick:
        args.minutes, args.probe_epochs = 1.0, 2
    if args.probe_epochs < 2:
        parser.error("--probe-epochs must be >= 2 (epoch 1 is start-up)")

    report = run(args)
    publish(report, format_table(report), args.output)


if __name__ == "__main__":
    main()
