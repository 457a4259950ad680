"""Distributed training with Ray Train: the per-worker loop and the TorchTrainer around it.

``run_training`` is the one entry point: `segray train`, `jobs/train.py` and every Tune trial
call it. Workers run `segray.engine` under DDP (gloo on CPU, NCCL on GPU); rank 0 writes a
self-describing checkpoint every epoch, which Ray Train persists to storage and restores
from after a worker failure or on ``--resume``.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import (
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from torch.utils.data import DataLoader, DistributedSampler

from segray.checkpoint import (
    build_model,
    copy_checkpoint,
    load_metrics,
    load_train_state,
    save_checkpoint,
    unwrap,
)
from segray.cluster import check_fits, ensure_ray, heap_env
from segray.config import Config
from segray.data import build_datasets, prepare_data
from segray.engine import (
    EarlyStopping,
    EpochScheduler,
    ShardSampler,
    StepConfig,
    build_optimizer,
    evaluate,
    rank_param_spread,
    seed_everything,
    train_one_epoch,
)
from segray.losses import create_loss
from segray.metrics import SegMetrics

__all__ = [
    "AppliedMismatchError",
    "TrainResult",
    "check_applied",
    "count_nodes",
    "worker_env",
    "run_training",
    "train_loop_per_worker",
    "worker_resources",
]

RUN_NAME = "train"
HEADLINE = ("val_dice", "val_iou", "val_loss", "val_accuracy")


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    output: Path | None
    best: Path | None  # exported best checkpoint dir (by val Dice)
    last: Path | None
    best_metrics: dict[str, Any]
    history: pd.DataFrame


# --------------------------------------------------------------------------- worker side
def build_loss(cfg: Config):
    return create_loss(
        cfg.loss.name,
        num_classes=cfg.num_classes,
        bce_weight=cfg.loss.bce_weight,
        ignore_index=cfg.data.ignore_index,
        smooth=cfg.loss.smooth,
    )


def build_metrics(cfg: Config, device: torch.device | str = "cpu") -> SegMetrics:
    return SegMetrics(
        cfg.num_classes,
        class_names=cfg.data.classes,
        threshold=cfg.train.threshold,
        ignore_index=cfg.data.ignore_index,
        device=device,
    )


def applied_hparams(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss
) -> dict[str, Any]:
    """The hyperparameters as actually built, read back from the live objects."""
    out = {f"model.{k}": v for k, v in unwrap(model).applied_hparams().items()}
    out["optim.lr"] = optimizer.defaults["lr"]
    out["optim.weight_decay"] = optimizer.defaults.get("weight_decay", 0.0)
    if hasattr(loss, "bce_weight"):
        out["loss.bce_weight"] = float(loss.bce_weight)
    return out


class AppliedMismatchError(RuntimeError):
    """A trial built something other than what the search sampled."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_applied(expected: Mapping[str, Any], applied: Mapping[str, Any], cfg: Config) -> None:
    """Fail loudly unless every sampled value is what the worker actually built.

    Keys the live objects report (``applied``) are compared with what they report; other keys
    with the worker's resolved config. Catches the classic HPO bug where every trial silently
    trains the same model.
    """
    resolved = cfg.to_dict()
    problems = []
    for key, want in expected.items():
        if key in applied:
            got, where = applied[key], "built"
        else:
            node: Any = resolved
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            got, where = node, "configured"
        if not _same(got, want):
            problems.append(f"{key}: sampled {want!r} but {where} {got!r}")
    if problems:
        raise AppliedMismatchError("applied != sampled: " + "; ".join(problems))


def _format_epoch(row: dict[str, Any], epochs: int, elapsed: float, done_epochs: int) -> str:
    eta = elapsed / max(done_epochs, 1) * (epochs - row["epoch"])
    parts = [f"epoch {row['epoch']}/{epochs}", f"train_loss {row['train_loss']:.4f}"]
    extra = [
        f"{k[11:]} {row[k]:.4f}"
        for k in ("train_loss_bce", "train_loss_ce", "train_loss_dice")
        if k in row
    ]
    if extra:
        parts[-1] += f" ({', '.join(extra)})"
    parts += [f"{k} {row[k]:.4f}" for k in HEADLINE if k in row]
    parts += [f"lr {row['lr']:.2e}", f"{row['epoch_time_s']:.1f}s/epoch", f"ETA {_hms(eta)}"]
    return "  ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def count_nodes() -> int:
    """How many distinct Ray nodes this run's workers are on (every rank gets the answer)."""
    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1
    nodes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _say(line: str) -> None:
    """One console line from a worker. Not ``print``: Ray Train patches it on its workers to
    log as well as print, and every line would show twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def report_with_checkpoint(metrics: dict[str, Any], name: str, save: Callable[[Path], Any]) -> None:
    """``ray.train.report`` with a checkpoint that ``save(directory)`` writes, written once.

    Storage on a filesystem this worker sees (a local path, NFS): ``save`` writes straight into
    the run's storage (a hidden ``.partial`` directory, renamed when complete) and Ray registers
    it as it is: no copy, which for a ResNet34-U-Net and its Adam state is 300 MB an epoch.
    Elsewhere (object storage, or a local path this node does not share): ``save`` writes to a
    temporary directory that Ray uploads in a background thread and then deletes.
    """
    storage = ray.train.get_context().get_storage()
    final = Path(storage.build_checkpoint_path_from_name(name))
    if isinstance(storage.storage_filesystem, pafs.LocalFileSystem) and final.parent.is_dir():
        partial = final.with_name(f".{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save(partial)
        shutil.rmtree(final, ignore_errors=True)  # left by an attempt that failed after it
        partial.rename(final)
        directory, mode = final, CheckpointUploadMode.NO_UPLOAD
    else:
        directory = Path(tempfile.mkdtemp(prefix="segray-ckpt-"))
        save(directory)
        mode = CheckpointUploadMode.ASYNC
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
        checkpoint_dir_name=name,
        checkpoint_upload_mode=mode,
    )


def _quiet_report_log() -> None:
    """Ray Train logs every report (all metrics, ~40 of them) at INFO on every worker; the
    epoch line says what matters. Its logger is named after its file, not its module."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build, (resume,) train, evaluate, report, checkpoint."""
    cfg = Config.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    _quiet_report_log()
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed)  # identical init on every rank

    datasets = build_datasets(cfg)
    model = build_model(cfg)
    state = None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            model.load_state_dict(
                torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
            )
            state = load_train_state(d)
    if cfg.train.sync_batchnorm and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)

    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = EpochScheduler(optimizer, cfg.optim, cfg.train.epochs)
    step = StepConfig.from_config(cfg.train, cfg.optim, device)
    scaler = torch.amp.GradScaler(device.type) if step.precision.needs_scaler else None
    early = EarlyStopping(cfg.train.early_stopping_patience)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        early.best, early.bad_epochs = state["early_best"], state["early_bad_epochs"]
        history, start_epoch = list(state["history"]), int(state["epoch"])

    train_ds, val_ds = datasets["train"], datasets["val"]
    batch = cfg.data.batch_size
    sampler = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed
    )
    # Drop the last incomplete batch (BatchNorm cannot train on a batch of 1) unless that
    # would leave a shard with no batch at all.
    drop_last = len(sampler) >= batch
    train_loader = DataLoader(
        train_ds,
        batch_size=batch,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.data.loader_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.loader_workers > 0,
    )
    train_loader = ray.train.torch.prepare_data_loader(train_loader, add_dist_sampler=False)
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.data.eval_batch_size or batch,
        sampler=ShardSampler(len(val_ds), rank, world),
        num_workers=cfg.data.loader_workers,
    )
    metrics = build_metrics(cfg, device)
    applied = applied_hparams(model, optimizer, loss_fn)
    check_applied(loop_config.get("expect") or {}, applied, cfg)
    num_nodes = count_nodes()  # after prepare_model: NCCL's gather needs the device set
    if rank == 0:
        _say(
            f"training: {_plural(world, 'worker')} on {_plural(num_nodes, 'node')} "
            f"({device.type}), {len(train_ds)} train samples / {len(val_ds)} val images, "
            f"epochs {start_epoch + 1}-{cfg.train.epochs}"
        )

    t_start = time.time()
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.time()
        lr = scheduler.set_epoch(epoch)
        sampler.set_epoch(epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "num_nodes": num_nodes}
        row.update(
            {
                f"train_{k}": v
                for k, v in train_one_epoch(
                    model, train_loader, loss_fn, optimizer, step, scaler
                ).items()
            }
        )
        if len(val_ds):
            row.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate(model, val_loader, loss_fn, metrics, step).items()
                }
            )
        row["param_rank_spread"], row["param_fingerprint"] = rank_param_spread(model)
        score = row.get("val_dice", -row["train_loss"])
        scheduler.observe(score)
        stop = early.step(score)
        row["stopped_early"] = stop  # by train.early_stopping_patience (ASHA stops from outside)
        row["epoch_time_s"] = time.time() - t0
        history.append(row)
        best = max(h.get("val_dice", -math.inf) for h in history)
        report = {**row, "best_val_dice": best}
        if rank == 0:
            _say(
                _format_epoch(row, cfg.train.epochs, time.time() - t_start, epoch + 1 - start_epoch)
            )
            report_with_checkpoint(
                report,
                f"checkpoint_epoch_{epoch + 1:04d}",
                functools.partial(
                    save_checkpoint,
                    model=model,
                    config=cfg,
                    metrics={**report, "applied": applied},
                    train_state={
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "early_best": early.best,
                        "early_bad_epochs": early.bad_epochs,
                        "epoch": epoch + 1,
                        "history": history,
                    },
                ),
            )
        else:
            ray.train.report(report)  # every rank reports the same number of times
        if stop:
            if rank == 0:
                _say(f"early stopping: no val Dice gain in {early.patience} epochs")
            break


# --------------------------------------------------------------------------- driver side
def worker_resources(cfg: Config) -> dict[str, float]:
    res = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        res["GPU"] = cfg.train.gpus_per_worker
    return res


# glibc serves every allocation above 32 MiB (a ResNet-U-Net's full-resolution activations)
# with a fresh mmap and returns it on free, so each step faults in and zeroes gigabytes of
# pages; in Ray's worker processes that made CPU epochs ~12% slower than the same loop in a
# plain process (benchmarks/isbi_membrane.py). Heap-only allocation with a high trim threshold
# keeps those pages for the next step. The variables are read when a worker process starts.
def worker_env(cfg: Config) -> dict[str, str]:
    """Environment variables of the training workers (``train.heap_reuse``)."""
    return heap_env(cfg.train.heap_reuse)


def build_trainer(
    cfg: Config,
    *,
    storage_path: str,
    name: str,
    callbacks: Sequence[Any] = (),
    expect: Mapping[str, Any] | None = None,
    monitor: tuple[str, str] = ("val_dice", "max"),
) -> ray.train.torch.TorchTrainer:
    """A TorchTrainer for ``cfg`` persisting to ``storage_path/name`` (same name = resume).

    Ray keeps the latest checkpoint and the best one by ``monitor`` (metric, mode).
    """
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "expect": dict(expect or {})},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # controller_failure_limit: fail instead of retrying worker start-up forever.
            failure_config=FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=3
            ),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=monitor[0],
                checkpoint_score_order=monitor[1],
            ),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),  # epochs print their own line
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
    )


def run_training(
    cfg: Config,
    output: str | Path | None = None,
    *,
    resume: bool = False,
    storage_path: str | None = None,
    name: str = RUN_NAME,
    callbacks: Sequence[Any] = (),
    address: str | None = None,
    expect: Mapping[str, Any] | None = None,
    monitor: tuple[str, str] = ("val_dice", "max"),
) -> TrainResult:
    """Train ``cfg`` with DDP on Ray Train.

    ``output`` (a local folder) receives ``config.yaml``, ``history.parquet`` and
    ``checkpoints/{last,best}`` (best by ``monitor``, default val Dice); Ray's run state lives in ``storage_path`` (default
    ``output/ray``; any URI Ray storage accepts). Running again with the same storage and
    ``name`` continues from the latest checkpoint; ``resume=False`` refuses to do so silently.
    """
    ensure_ray(address)
    out = Path(output).resolve() if output is not None else None
    if storage_path is None:
        if out is None:
            raise ValueError("run_training needs an output folder or a storage_path")
        storage_path = str(out / "ray")
    run_dir = Path(storage_path) / name
    if out is not None and not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{out} already holds a training run: continue it with --resume {out} or choose another --output"
        )
    cfg = prepare_data(cfg)
    check_fits(
        worker_resources(cfg),
        cfg.train.num_workers,
        f"training with {cfg.train.num_workers} workers",
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")

    result = build_trainer(
        cfg,
        storage_path=storage_path,
        name=name,
        callbacks=callbacks,
        expect=expect,
        monitor=monitor,
    ).fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")

    metric, sign = monitor[0], (1.0 if monitor[1] == "max" else -1.0)
    scored = [(c, m) for c, m in result.best_checkpoints if metric in m]
    best_ckpt = max(scored, key=lambda cm: sign * cm[1][metric])[0] if scored else result.checkpoint
    with result.checkpoint.as_directory() as last_dir:
        state = load_train_state(last_dir) or {}
        history = pd.DataFrame(state.get("history", []))
        last = copy_checkpoint(last_dir, out / "checkpoints" / "last") if out else None
    with best_ckpt.as_directory() as best_dir:
        best_metrics = load_metrics(best_dir)
        best = copy_checkpoint(best_dir, out / "checkpoints" / "best") if out else None
    if out is not None:
        history.to_parquet(out / "history.parquet", index=False)
    return TrainResult(out, best, last, best_metrics, history)
