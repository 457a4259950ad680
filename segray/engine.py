"""The training loop in plain PyTorch: no Ray import, so it runs in any process.

The Ray Train glue (`segray.train`) wraps the model in DDP and shards the data; everything
here works the same on one process, where the all-reduces are no-ops.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from segray.config import OptimConfig, TrainConfig
from segray.losses import SegLoss
from segray.metrics import SegMetrics, probs_from_logits

__all__ = [
    "EpochScheduler",
    "ShardSampler",
    "Precision",
    "broadcast_buffers",
    "build_optimizer",
    "evaluate",
    "rank_param_spread",
    "resolve_precision",
    "seed_everything",
    "train_one_epoch",
]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class Precision:
    """How forward passes run: autocast dtype (None = fp32) and whether a GradScaler is needed."""

    dtype: torch.dtype | None = None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``train.amp``: auto = bf16 on a CUDA device that supports it, else fp32 (CPU default)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None)
    if amp == "auto":
        return Precision(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Precision(torch.bfloat16 if amp == "bf16" else torch.float16)


# --------------------------------------------------------------------------- optimisation
def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) from ``optim``."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class EpochScheduler:
    """Per-epoch learning rate: linear warm-up, then none / cosine / reduce-on-plateau (val Dice).

    It owns the learning rate (sets every param group's ``lr``), and its whole state is a small
    dict, so a resumed run continues the exact schedule.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int):
        self.optimizer, self.cfg, self.epochs = optimizer, cfg, epochs
        self.plateau_scale = 1.0
        self.best: float | None = None
        self.bad_epochs = 0
        self.set_epoch(0)

    def lr_at(self, epoch: int) -> float:
        cfg = self.cfg
        if epoch < cfg.warmup_epochs:
            return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.scheduler == "cosine":
            span = max(1, self.epochs - cfg.warmup_epochs)
            t = min(1.0, (epoch - cfg.warmup_epochs) / span)
            return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.scheduler == "plateau":
            return max(cfg.min_lr, cfg.lr * self.plateau_scale)
        return cfg.lr

    def set_epoch(self, epoch: int) -> float:
        """Set the learning rate for ``epoch`` (0-based) and return it."""
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe(self, val_dice: float) -> None:
        """Feed the epoch's val Dice (plateau schedule)."""
        if self.best is None or val_dice > self.best + 1e-4:
            self.best, self.bad_epochs = val_dice, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a better val Dice (None = never)."""

    patience: int | None
    best: float = -math.inf
    bad_epochs: int = 0

    def step(self, score: float) -> bool:
        if score > self.best + 1e-4:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience


# --------------------------------------------------------------------------- data
class ShardSampler(Sampler[int]):
    """Strided, padding-free shard of ``range(n)`` for ``rank`` of ``world``.

    Unlike DistributedSampler it never repeats a sample to even out the shards, so metrics
    all-reduced over ranks count every validation image exactly once.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _to_device(
    batch: Any, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True)


def _all_reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats) before evaluation."""
    if dist.is_available() and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def rank_param_spread(model: nn.Module) -> tuple[float, float]:
    """(max |difference| of per-tensor parameter sums across ranks, this rank's fingerprint).

    DDP keeps replicas bitwise identical; a non-zero spread means the ranks diverged.
    """
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    fingerprint = float(sums.abs().sum())
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0, fingerprint
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    stacked = torch.stack(gathered)
    return float((stacked - stacked[0]).abs().max()), fingerprint


def _accumulate(
    sums: dict[str, float], n: int, loss: torch.Tensor, parts: Mapping[str, Any]
) -> None:
    """Sample-weighted sums of the loss and its parts (``loss_bce``, ``loss_dice``: not metrics)."""
    sums["n"] += n
    sums["loss"] += loss.item() * n
    for k, v in parts.items():
        sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + float(v) * n


# --------------------------------------------------------------------------- loops
@dataclass
class StepConfig:
    """What one optimisation step needs besides the model, loss and optimizer."""

    device: torch.device
    precision: Precision = field(default_factory=Precision)
    grad_clip: float | None = None
    channels_last: bool = False

    @classmethod
    def from_config(
        cls, train: TrainConfig, optim: OptimConfig, device: torch.device
    ) -> StepConfig:
        return cls(
            device, resolve_precision(train.amp, device), optim.grad_clip, train.channels_last
        )


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: SegLoss,
    optimizer: torch.optim.Optimizer,
    step: StepConfig,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean loss and its parts over all ranks."""
    model.train()
    sums: dict[str, float] = {"n": 0.0, "loss": 0.0}
    for batch in loader:
        images, masks = _to_device(batch, step.device, step.channels_last)
        with step.precision.autocast(step.device):
            logits = model(images)
        loss, parts = loss_fn.compute(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if step.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        _accumulate(sums, images.shape[0], loss, parts)
    sums = _all_reduce_sums(sums, step.device)
    n = max(sums.pop("n"), 1.0)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: SegLoss,
    metrics: SegMetrics,
    step: StepConfig,
) -> dict[str, float]:
    """Loss and metrics over the whole (sharded) loader, reduced over all ranks.

    Metrics come from confusion counts and histograms summed over every pixel of every image
    on every rank, never from an average of per-batch or per-rank scores.
    """
    model.eval()
    broadcast_buffers(model)
    metrics.reset()
    sums = {"n": 0.0, "loss": 0.0}
    for batch in loader:
        images, masks = _to_device(batch, step.device, step.channels_last)
        with step.precision.autocast(step.device):
            logits = model(images)
        logits = logits.float()
        loss, parts = loss_fn.compute(logits, masks)
        metrics.update(probs_from_logits(logits), masks)
        _accumulate(sums, images.shape[0], loss, parts)
    sums = _all_reduce_sums(sums, step.device)
    metrics.all_reduce()
    n = sums.pop("n")
    out = {k: v / max(n, 1.0) for k, v in sums.items()}
    out.update(metrics.compute())
    out["num_images"] = n
    return out
