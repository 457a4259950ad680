"""The per-worker training loop: what every Ray Train worker runs under DDP (gloo on CPU,
NCCL on GPU): build, resume, train, evaluate, report, checkpoint. Rank 0 writes a
self-describing checkpoint every epoch, which Ray Train persists to storage and restores from
after a worker failure or on ``--resume``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import (
    CheckpointUploadMode,
)

from segray.checkpoint import (
    build_model,
    load_train_state,
    save_checkpoint,
    unwrap,
)
from segray.config import Config
from segray.data import Listing, build_datasets
from segray.data.loaders import train_loader, val_loader
from segray.engine import (
    EarlyStopping,
    LRSchedule,
    StepConfig,
    build_optimizer,
    evaluate,
    gather_rng_states,
    rank_param_spread,
    seed_everything,
    set_rng_state,
    train_one_epoch,
)
from segray.losses import create_loss
from segray.metrics import SegMetrics
from segray.storage import LocalFileSystem, remove
from segray.timeline import mark, process_started
from segray.tracking import Tracker, metric_values
from segray.train.hooks import EpochContext, run_epoch_hooks

__all__ = [
    "AppliedMismatchError",
    "HEADLINE",
    "applied_hparams",
    "build_loss",
    "build_metrics",
    "check_applied",
    "count_nodes",
    "report_with_checkpoint",
    "train_loop_per_worker",
]

HEADLINE = ("val_dice", "val_iou", "val_loss", "val_accuracy")
_IMPORTED = time.time()  # this module, torch and segray imported (for `segray.timeline`)


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
    """The hyperparameters as actually built, read back from the live objects; a value is
    listed only where the object uses it (SGD's momentum, bce_dice's weight, ...)."""
    out = {f"model.{k}": v for k, v in unwrap(model).applied_hparams().items()}
    out["optim.name"] = type(optimizer).__name__.lower()
    out["optim.lr"] = optimizer.defaults["lr"]
    out["optim.weight_decay"] = optimizer.defaults.get("weight_decay", 0.0)
    if "momentum" in optimizer.defaults:
        out["optim.momentum"] = optimizer.defaults["momentum"]
    out["loss.name"] = loss.name
    if loss.name == "bce_dice":
        out["loss.bce_weight"] = float(loss.bce_weight)
    if loss.name in ("bce_dice", "dice"):
        out["loss.smooth"] = float(loss.smooth)
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
    """Fail loudly unless every sampled value is what the worker actually built and uses.

    A key the resolved config ignores (`segray.config.usage.unused_reason`: ``loss.bce_weight``
    without bce_dice, ``optim.momentum`` without SGD, dilation rates of a plain decoder) is a
    mismatch. Keys the live objects report (``applied``: read back from the built modules,
    optimizer and loss) are compared with what they report; other keys, which have no physical
    read-back, with the worker's resolved config. Catches the classic HPO bug where every trial
    silently trains the same model.
    """
    from segray.config.usage import unused_reason

    resolved = cfg.to_dict()
    problems = []
    for key, want in expected.items():
        reason = unused_reason(key, cfg)
        if reason:
            problems.append(f"{key}: sampled {want!r} but this trial ignores it: {reason}")
            continue
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
    if isinstance(storage.storage_filesystem, LocalFileSystem) and final.parent.is_dir():
        partial = final.with_name(f".{name}.partial")
        remove(partial)
        partial.mkdir()
        save(partial)
        remove(final)  # left by an attempt that failed after it
        partial.rename(final)
        directory, mode = final, CheckpointUploadMode.NO_UPLOAD
    else:
        directory = Path(tempfile.mkdtemp(prefix="segray-ckpt-"))
        save(directory)
        mode = CheckpointUploadMode.ASYNC
    mark("checkpoint_saved", run=ray.train.get_context().get_experiment_name(), name=name)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
        checkpoint_dir_name=name,
        checkpoint_upload_mode=mode,
    )


def _quiet_report_log() -> None:
    """Ray Train logs every report (all metrics, ~40 of them) at INFO on every worker; the
    epoch line says what matters. Its logger is named after its file, not its module."""
    from segray.cluster import train_report_logger

    logger = train_report_logger()
    if logger is not None:  # another Ray layout: keep its logging as it is
        logger.setLevel(logging.WARNING)


def _check_resumable(state: Mapping[str, Any], world: int, steps_per_epoch: int) -> None:
    """A checkpoint this run can continue exactly (same world size, same steps per epoch)."""
    if "rng" not in state or "per_step" not in state.get("scheduler", {}):
        raise RuntimeError(
            "the checkpoint to resume from was written by an older segray (no random-number "
            "or per-step LR state): it cannot be continued exactly; start a new run"
        )
    if state["world_size"] != world or state["steps_per_epoch"] != steps_per_epoch:
        raise RuntimeError(
            f"the checkpoint was trained with {state['world_size']} workers x "
            f"{state['steps_per_epoch']} steps per epoch, this run has {world} x "
            f"{steps_per_epoch}: resume with the run's train.num_workers and data settings"
        )


@dataclass
class _Worker:
    """What one worker trains with: built once (`_build`), then stepped epoch by epoch."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    run_name: str
    model: torch.nn.Module
    step: StepConfig
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    scaler: torch.amp.GradScaler | None
    early: EarlyStopping
    sampler: Any
    loader: Any
    steps_per_epoch: int
    train_size: int
    val_ds: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    val: Any = None  # the val loader, built after the restored state is loaded
    metrics: SegMetrics | None = None
    applied: dict[str, Any] = field(default_factory=dict)
    num_nodes: int = 1


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build, (resume,) train, evaluate, report, checkpoint."""
    run = ray.train.get_context().get_experiment_name()
    rank = ray.train.get_context().get_world_rank()
    mark("worker_process", t=process_started(), run=run, rank=rank)
    mark("worker_imported", t=_IMPORTED, run=run, rank=rank)
    mark("loop_start", run=run, rank=rank)
    cfg = Config.from_dict(loop_config["config"])
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    _quiet_report_log()
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed)  # identical init on every rank

    listed = loop_config.get("listing")
    listing = Listing(tuple(map(tuple, listed))) if listed is not None else None
    w, state = _build(cfg, ray.train.get_context(), device, listing)
    if state is not None:
        _restore(w, state)
    w.val = val_loader(cfg, w.val_ds, w.rank, w.world)
    w.metrics = build_metrics(cfg, device)
    w.applied = applied_hparams(w.model, w.optimizer, w.loss_fn)
    check_applied(loop_config.get("expect") or {}, w.applied, cfg)
    w.num_nodes = count_nodes()  # after prepare_model: NCCL's gather needs the device set
    if w.rank == 0:
        _announce(w)
    mark("ready", run=run, rank=rank)

    # MLflow: rank 0 alone logs (to the run its driver opened); an epoch already logged by an
    # attempt that failed before its checkpoint counted is not logged again.
    tracker = Tracker.attach(loop_config.get("tracking") if w.rank == 0 else None)
    logged = tracker.logged_steps("train_loss")

    if state is not None:  # last: nothing above may draw from the restored generators
        set_rng_state(state["rng"][w.rank])
    t_start = time.time()
    for epoch in range(w.start_epoch, cfg.train.epochs):
        mark("epoch_start", run=run, rank=rank, epoch=epoch + 1)
        row, stop = _train_epoch(w, epoch)
        rng = gather_rng_states()  # every rank's, for an exact resume (a collective)
        report = {**row, "best_val_dice": _best_val_dice(w.history)}
        mark("epoch_end", run=run, rank=rank, epoch=epoch + 1)
        if w.rank == 0:
            done = epoch + 1 - w.start_epoch
            _say(_format_epoch(row, cfg.train.epochs, time.time() - t_start, done))
            _checkpoint(w, epoch, report, rng)
            if epoch + 1 not in logged:
                tracker.log_metrics(metric_values(report), step=epoch + 1)
        else:
            ray.train.report(report)  # every rank reports the same number of times
        mark("reported", run=run, rank=rank, epoch=epoch + 1)
        run_epoch_hooks(epoch + 1, EpochContext(w.rank, w.world, w.run_name, report))
        if stop:
            if w.rank == 0:
                _say(f"early stopping: no val Dice gain in {w.early.patience} epochs")
            break
    mark("loop_end", run=run, rank=rank)


def _build(
    cfg: Config, ctx: Any, device: torch.device, listing: Any = None
) -> tuple[_Worker, dict[str, Any] | None]:
    """Datasets (from the driver's ``listing``), the model (wrapped for DDP), loss, optimizer,
    loaders, LR schedule, scaler and early stopping; with the training state of the checkpoint
    Ray Train restores, if any."""
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    datasets = build_datasets(cfg, listing)
    mark("data_ready", run=ctx.get_experiment_name(), rank=rank)
    model, state = _restored_model(cfg)
    if cfg.train.sync_batchnorm and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = StepConfig.from_config(cfg.train, cfg.optim, device)  # train.precision, channels_last
    if step.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)

    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    train_ds = datasets["train"]
    sampler, loader = train_loader(cfg, train_ds, rank, world, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    # Before the optimizer's state is loaded: a LambdaLR takes its base LR from the optimizer.
    scheduler = LRSchedule(
        optimizer, cfg.optim, cfg.train.epochs * steps_per_epoch, steps_per_epoch
    )
    scaler = torch.amp.GradScaler(device.type) if step.precision.needs_scaler else None
    worker = _Worker(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        run_name=ctx.get_experiment_name(),
        model=model,
        step=step,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        early=EarlyStopping(cfg.train.early_stopping_patience),
        sampler=sampler,
        loader=loader,
        steps_per_epoch=steps_per_epoch,
        train_size=len(train_ds),
        val_ds=datasets["val"],
    )
    return worker, state


def _restored_model(cfg: Config) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model, with the weights and training state of the checkpoint Ray Train restores
    (after a worker failure, or on ``--resume``); fresh, and no state, without one."""
    model = build_model(cfg)
    restored = ray.train.get_checkpoint()
    if restored is None:
        return model, None
    with restored.as_directory() as d:
        model.load_state_dict(
            torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
        )
        return model, load_train_state(d)


def _restore(w: _Worker, state: Mapping[str, Any]) -> None:
    """Continue where the checkpoint stopped: optimizer, LR schedule, scaler, early stopping,
    history (the generators are restored last, by the caller)."""
    _check_resumable(state, w.world, w.steps_per_epoch)
    w.optimizer.load_state_dict(state["optimizer"])
    w.scheduler.load_state_dict(state["scheduler"])
    if w.scaler is not None and state.get("scaler"):
        w.scaler.load_state_dict(state["scaler"])
    w.early.best, w.early.bad_epochs = state["early_best"], state["early_bad_epochs"]
    w.history, w.start_epoch = list(state["history"]), int(state["epoch"])


def _announce(w: _Worker) -> None:
    _say(
        f"training: {_plural(w.world, 'worker')} on {_plural(w.num_nodes, 'node')} "
        f"({w.device.type}), {w.train_size} train samples / {len(w.val_ds)} val images, "
        f"epochs {w.start_epoch + 1}-{w.cfg.train.epochs}"
    )
    _say(f"precision: {w.step.precision.describe()}")


def _train_epoch(w: _Worker, epoch: int) -> tuple[dict[str, Any], bool]:
    """One epoch: train, evaluate, step the schedule and early stopping; the epoch's row
    (appended to the history) and whether early stopping ends the run."""
    t0 = time.time()
    w.sampler.set_epoch(epoch)
    row: dict[str, Any] = {"epoch": epoch + 1, "num_nodes": w.num_nodes}
    losses = train_one_epoch(
        w.model,
        w.loader,
        w.loss_fn,
        w.optimizer,
        w.step,
        w.scaler,
        schedule=w.scheduler,
        epoch=epoch,
    )
    row["lr"] = w.scheduler.last_lr  # of the epoch's last step
    row.update({f"train_{k}": v for k, v in losses.items()})
    if len(w.val_ds):
        scores = evaluate(w.model, w.val, w.loss_fn, w.metrics, w.step, epoch=epoch)
        row.update({f"val_{k}": v for k, v in scores.items()})
    row["param_rank_spread"], row["param_fingerprint"] = rank_param_spread(w.model)
    score = row.get("val_dice", -row["train_loss"])
    w.scheduler.observe(score)
    stop = w.early.step(score)
    row["stopped_early"] = stop  # by train.early_stopping_patience (ASHA stops from outside)
    row["epoch_time_s"] = time.time() - t0
    w.history.append(row)
    return row, stop


def _best_val_dice(history: list[dict[str, Any]]) -> float:
    return max(  # NaN (no foreground anywhere in val) is never the best
        (v for h in history if math.isfinite(v := h.get("val_dice", math.nan))),
        default=math.nan,
    )


def _checkpoint(w: _Worker, epoch: int, report: dict[str, Any], rng: Any) -> None:
    """Rank 0: report the epoch with its self-describing checkpoint (weights, config, metrics,
    history and the full training state, every rank's generators included)."""
    report_with_checkpoint(
        report,
        f"checkpoint_epoch_{epoch + 1:04d}",
        functools.partial(
            save_checkpoint,
            model=w.model,
            config=w.cfg,
            metrics={**report, "applied": w.applied, **w.step.precision.record()},
            history=w.history,
            train_state={
                "optimizer": w.optimizer.state_dict(),
                "scheduler": w.scheduler.state_dict(),
                "scaler": w.scaler.state_dict() if w.scaler is not None else None,
                "early_best": w.early.best,
                "early_bad_epochs": w.early.bad_epochs,
                "epoch": epoch + 1,
                "history": w.history,
                "world_size": w.world,
                "steps_per_epoch": w.steps_per_epoch,
                "sampler": {"seed": w.cfg.train.seed, "epoch": epoch},
                "rng": rng,
            },
        ),
    )
