"""`segray demo`: the whole product on the built-in default, on one machine or a cluster.

synthesise a dataset -> tune (Optuna TPE + ASHA, every trial 2 DDP workers) -> best checkpoint
-> evaluate it -> bulk-segment a separate synthetic archive (tar shards with a few corrupt
files) with Ray Data -> print a short summary -> write OUTPUT/report.html (`segray report`).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from segray.config import Config, load_config

__all__ = ["DEMO_OVERRIDES", "demo_config", "make_archive", "run_demo"]

# The search the demo runs: small enough for a 2-core laptop, large enough for ASHA to act.
DEMO_OVERRIDES = [
    "data.source=synthetic",
    "data.synthetic.num=64",
    "data.synthetic.size=64",
    "data.image_size=64",
    "data.train_transform=resize",
    "data.batch_size=8",
    # 45 training images in global batches of 16 would be ~3 optimizer steps an epoch: every
    # trial then ended predicting all foreground (val Dice 0.45, the trivial score). Eight
    # augmented passes over each image an epoch give the search something to rank.
    "data.samples_per_image=8",
    "data.vflip=0.5",
    "data.rotate90=0.5",
    "model.name=resnet_unet",
    "model.encoder=resnet18",
    "model.decoder_channels=[64,32,16,8]",
    "train.epochs=4",
    "train.num_workers=2",
    "train.max_failures=0",
    "tune.num_samples=4",
    "tune.grace_period=1",
    "tune.reduction_factor=2",
    "tune.space={model.dilation_rates: {choice: [[1,6,12,18],[1,3,6,9],[1,2,4,8],[1,12,24,36]]},"
    " loss.bce_weight: {uniform: [0.0, 1.0]}, optim.lr: {loguniform: [1.0e-3, 1.0e-2]}}",
    "segment.tile_size=64",
    "segment.batch_size=16",
]
SMALL = [
    "data.synthetic.num=32",
    "data.samples_per_image=2",
    "train.epochs=2",
    "tune.num_samples=4",
]


def demo_config(small: bool = False, overrides: list[str] | None = None) -> Config:
    """The demo's config (``small``: the CI-sized variant), plus any user overrides."""
    return load_config(None, [*DEMO_OVERRIDES, *(SMALL if small else []), *(overrides or [])])


def make_archive(
    folder: Path, *, num: int, size: int, seed: int, shards: int = 2
) -> tuple[list[Path], Path]:
    """A separate synthetic set packed as WebDataset-style tar shards, with corrupt members.

    Returns the shard paths and the ground-truth mask folder. Three members per archive are
    bad on purpose (empty, truncated, not an image): they must come out as error rows.
    """
    from segray.data.synth import generate

    src = generate(folder / "source", num=num, size=size, num_classes=2, seed=seed)
    images = sorted((src / "images").glob("*.png"))
    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for img in images[s::shards]:
                tar.add(img, arcname=img.name)
            if s == 0:
                data = images[0].read_bytes()
                for name, payload in (
                    ("empty.png", b""),
                    ("truncated.png", data[: len(data) // 3]),
                    ("notes.png", b"this is not an image\n"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths, src / "masks"


def run_demo(
    output: str | Path = "segray-demo",
    *,
    small: bool = False,
    overrides: list[str] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Run every stage; returns (and writes to OUTPUT/demo_summary.json) the summary."""
    from segray.cluster import ensure_ray
    from segray.evaluate import evaluate_checkpoint
    from segray.segment import run_segment
    from segray.tune import run_tune

    out = Path(output).resolve()
    started = time.time()
    cfg = demo_config(small, overrides)
    _stage(1, "Ray", ensure_ray(address))

    _stage(
        2,
        "search",
        f"{cfg.tune.num_samples} trials x {cfg.train.num_workers} DDP workers, "
        f"Optuna TPE + ASHA over {', '.join(cfg.tune.space)}",
    )
    search = run_tune(cfg, out / "tune", address=address)
    if search.best is None:
        raise RuntimeError(
            f"no trial of the search finished: see {out / 'tune' / 'trials.parquet'}"
        )
    best = search.summary["best"]

    # The search picked the winner by its validation score, so that score is optimistic: the
    # evaluation uses the test split, which no trial trained or was ranked on.
    _stage(3, "evaluate", f"best checkpoint {search.best} on the held-out test split")
    metrics = evaluate_checkpoint(search.best, split="test", output=out / "eval", progress=True)

    n_archive = 48 if small else 200
    shards, masks = make_archive(
        out / "archive", num=n_archive, size=cfg.data.synthetic.size, seed=1234
    )
    _stage(
        4, "segment", f"{n_archive} images + 3 corrupt files in {len(shards)} tar shards -> Parquet"
    )
    seg = run_segment(search.best, [str(p) for p in shards], str(out / "segment"), masks=str(masks))

    summary = {
        "output": str(out),
        "best_params": best["params"],
        "best_val_dice": best[cfg.tune.metric],
        "trials": search.summary["num_trials"],
        "stopped_early": search.summary["stopped_early"],
        "eval": {
            "split": "test",
            "num_images": metrics.get("num_images"),
            **{k: metrics.get(k) for k in ("dice", "iou", "accuracy", "roc_auc", "pr_auc")},
        },
        "segment": {
            k: seg.get(k)
            for k in ("ok", "error", "skipped", "images_per_s", "rows", "parquet", "metrics")
        },
        "wall_time_s": round(time.time() - started, 1),
        "paths": {
            "trials": str(out / "tune" / "trials.parquet"),
            "plots": str(out / "tune" / "plots"),
            "best_checkpoint": str(search.best),
            "evaluation": str(out / "eval"),
            "masks_parquet": str(seg.get("parquet", out / "segment")),
            "report": str(out / "report.html"),
        },
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _print_summary(summary)
    from segray.report import write_report

    print(f"\nreport -> {write_report(out, out / 'report.html')}", flush=True)
    return summary


def _stage(i: int, name: str, what: str) -> None:
    print(f"\n== [{i}/4] {name}: {what}", flush=True)


def _print_summary(s: dict[str, Any]) -> None:
    params = ", ".join(f"{k}={v}" for k, v in s["best_params"].items())
    seg, ev = s["segment"], s["eval"]
    print("\n== segray demo summary", flush=True)
    print(
        f"best trial of {s['trials']} ({s['stopped_early']} stopped early by ASHA): val Dice "
        f"{s['best_val_dice']:.4f} with {params}"
    )
    print(
        f"test split ({ev['num_images']} images, never seen by the search): Dice {ev['dice']:.4f}  "
        f"IoU {ev['iou']:.4f}  accuracy {ev['accuracy']:.4f}  ROC-AUC {ev['roc_auc']:.4f}  "
        f"PR-AUC {ev['pr_auc']:.4f}"
    )
    print(
        f"bulk segmentation: {seg['ok']} ok, {seg['error']} error rows, {seg['images_per_s']:.1f} images/s"
    )
    gt = seg.get("metrics") or {}
    if gt.get("dice") is not None:
        print(
            f"  on the archive (a separate set, {gt['images_with_ground_truth']} images with "
            f"ground truth): mean per-image Dice {gt['dice']:.4f}"
        )
    for k, v in s["paths"].items():
        print(f"  {k:16s} {v}")
    print(f"done in {s['wall_time_s']:.0f}s")
