"""The training loop in plain PyTorch: no Ray import, so it runs in any process.

The Ray Train glue (`segray.train`) wraps the model in DDP and shards the data; everything
here works the same on one process, where the all-reduces are no-ops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from segray.config import OptimConfig, TrainConfig
from segray.errors import UserError
from segray.losses import SegLoss
from segray.metrics import SegMetrics
from segray.precision import Precision, resolve_precision

__all__ = [
    "LRSchedule",
    "NonFiniteLossError",
    "WarmupCosine",
    "Precision",
    "broadcast_buffers",
    "build_optimizer",
    "check_finite",
    "evaluate",
    "gather_rng_states",
    "rank_param_spread",
    "resolve_precision",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "sum_keys",
    "train_one_epoch",
]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- optimisation
def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) from ``optim``."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class WarmupCosine:
    """LR multiplier per optimiser step (a picklable ``LambdaLR`` lambda, saved in its state).

    Steps ``0..warmup-1`` ramp linearly, ``(s + 1) / (warmup + 1)``; then ``cosine`` falls from 1
    to ``min_factor`` (``min_lr / lr``), reaching it exactly at the last step ``total - 1``;
    ``none`` (and ``plateau``, which its own scheduler lowers per epoch) stays at 1.
    """

    def __init__(self, total: int, warmup: int, min_factor: float, cosine: bool) -> None:
        self.total, self.warmup, self.min_factor, self.cosine = total, warmup, min_factor, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        span = self.total - 1 - self.warmup
        t = 1.0 if span <= 0 else min(1.0, (step - self.warmup) / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class LRSchedule:
    """The learning rate per optimiser step, with torch's schedulers.

    A ``LambdaLR`` (`WarmupCosine`) steps after every optimiser step: linear warm-up over
    ``optim.warmup_epochs`` epochs' worth of steps, then cosine to exactly ``optim.min_lr`` at
    the run's last step (or constant). ``plateau`` adds a ``ReduceLROnPlateau`` on val Dice
    (mode max), stepped once per epoch after the warm-up. ``state_dict`` holds both, so a
    resumed run continues the exact schedule.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: OptimConfig,
        total_steps: int,
        steps_per_epoch: int,
    ):
        self.optimizer = optimizer
        self.warmup_steps = cfg.warmup_epochs * steps_per_epoch
        self.total_steps = total_steps
        self.per_step = LambdaLR(
            optimizer,
            WarmupCosine(
                total_steps, self.warmup_steps, cfg.min_lr / cfg.lr, cfg.scheduler == "cosine"
            ),
        )
        self.plateau = (
            ReduceLROnPlateau(
                optimizer,
                mode="max",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                threshold=1e-4,
                threshold_mode="abs",
                min_lr=cfg.min_lr,
            )
            if cfg.scheduler == "plateau"
            else None
        )
        self.last_lr = self.lr  # the LR of the latest optimiser step

    @property
    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def warmed_up(self) -> bool:
        return self.per_step.last_epoch >= self.warmup_steps

    def step(self) -> None:
        """After every optimiser step (the plateau schedule owns the LR after the warm-up)."""
        self.last_lr = self.lr
        if self.plateau is None or not self.warmed_up:
            self.per_step.step()

    def observe(self, val_dice: float) -> None:
        """Feed the epoch's val Dice (plateau schedule, after the warm-up)."""
        if self.plateau is not None and self.warmed_up:
            self.plateau.step(val_dice)

    def state_dict(self) -> dict[str, Any]:
        return {
            "per_step": self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])


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
# --------------------------------------------------------------------------- random state
def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and current CUDA device), numpy and python RNG states, in
    types ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's `rng_state`, indexed by rank (a collective: call it on every rank)."""
    state = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


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


def sum_keys(loss_fn: SegLoss) -> tuple[str, ...]:
    """The fixed, sorted keys of the sample-weighted sums a loop all-reduces for ``loss_fn``.

    Every rank must all-reduce the same keys in the same order, also a rank whose shard holds
    no batch: so the keys come from the loss, not from the batches seen. A loss may declare
    its parts (``parts``); otherwise one 1-pixel evaluation of the loss names them.
    """
    parts = getattr(loss_fn, "parts", None)
    if parts is None:
        k = loss_fn.num_classes
        _, named = loss_fn.compute(torch.zeros(1, k, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
        parts = tuple(named)
    return ("loss", "n", *sorted(f"loss_{p}" for p in parts))


def _accumulate(
    sums: dict[str, float], n: int, loss: torch.Tensor, parts: Mapping[str, Any]
) -> None:
    """Sample-weighted sums of the loss and its parts (``loss_bce``, ``loss_dice``: not metrics)
    into the fixed keys of `sum_keys`."""
    sums["n"] += n
    sums["loss"] += loss.item() * n
    for k, v in parts.items():
        key = f"loss_{k}"
        if key not in sums:
            raise KeyError(f"loss part {k!r} is not among the declared parts {sorted(sums)}")
        sums[key] += float(v) * n


class NonFiniteLossError(UserError, FloatingPointError):
    """A training loss that is NaN or infinite (raised on every rank alike)."""


def check_finite(loss: torch.Tensor, epoch: int, step: int, steps: int) -> None:
    """Raise `NonFiniteLossError` on every rank when any rank's ``loss`` is not finite.

    The ranks compare all their losses (one all-gather per step), so all raise together, before
    the optimiser step, and none waits forever in the next collective.
    """
    value = loss.detach().float().reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(value) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, value)
        value = torch.cat(gathered)
    if bool(torch.isfinite(value).all()):
        return
    losses = ", ".join(
        f"rank {r}: {v:g}" for r, v in enumerate(value.tolist()) if not math.isfinite(v)
    )
    raise NonFiniteLossError(
        f"non-finite training loss at epoch {epoch + 1}, step {step + 1}/{steps} ({losses}): "
        "lower optim.lr, train in fp32 (train.precision=fp32) or clip gradients (optim.grad_clip)"
    )


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
        precision = resolve_precision(train.precision, device, train.channels_last)
        return cls(device, precision, optim.grad_clip, precision.channels_last)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: SegLoss,
    optimizer: torch.optim.Optimizer,
    step: StepConfig,
    scaler: torch.amp.GradScaler | None = None,
    *,
    schedule: LRSchedule | None = None,
    epoch: int = 0,
) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean loss and its parts over all ranks.

    ``schedule`` steps after every optimiser step. A non-finite loss on any rank stops every
    rank with `NonFiniteLossError` before the optimiser applies it.
    """
    model.train()
    sums = dict.fromkeys(sum_keys(loss_fn), 0.0)
    steps = len(loader) if hasattr(loader, "__len__") else 0
    for i, batch in enumerate(loader):
        images, masks = _to_device(batch, step.device, step.channels_last)
        with step.precision.autocast(step.device):
            logits = model(images)
        loss, parts = loss_fn.compute(logits.float(), masks)
        check_finite(loss, epoch, i, steps)
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
        if schedule is not None:
            schedule.step()
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
    *,
    epoch: int | None = None,
) -> dict[str, float]:
    """Loss and metrics over the whole (sharded) loader, reduced over all ranks.

    Metrics come from confusion counts and histograms summed over every pixel of every image
    on every rank, never from an average of per-batch or per-rank scores. Every rank runs the
    same collectives in the same order whatever its shard holds, none included: the buffer
    broadcast, one all-reduce of the fixed `sum_keys`, the metric counts. The forward passes
    run on the module under DDP, which would otherwise sync buffers only on ranks with a batch.
    Non-finite outputs (diverged weights) raise `NonFiniteLossError` on every rank.
    """
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    net.eval()
    broadcast_buffers(net)
    metrics.reset()
    sums = dict.fromkeys(sum_keys(loss_fn), 0.0)
    bad = 0.0  # images whose output is not finite
    for batch in loader:
        images, masks = _to_device(batch, step.device, step.channels_last)
        with step.precision.autocast(step.device):
            logits = net(images)
        logits = logits.float()
        if not bool(torch.isfinite(logits).all()):
            bad += images.shape[0]
            continue
        loss, parts = loss_fn.compute(logits, masks)
        metrics.update_from_logits(logits, masks)  # bins log-odds: exact at any confidence
        _accumulate(sums, images.shape[0], loss, parts)
    sums = _all_reduce_sums({**sums, "nonfinite": bad}, step.device)
    if sums.pop("nonfinite"):
        where = "" if epoch is None else f" at epoch {epoch + 1}"
        raise NonFiniteLossError(
            f"validation{where}: the model outputs non-finite values (its weights diverged): "
            "lower optim.lr, train in fp32 (train.precision=fp32) or clip gradients "
            "(optim.grad_clip)"
        )
    metrics.all_reduce()
    n = sums.pop("n")
    out = {k: v / max(n, 1.0) for k, v in sums.items()}
    out.update(metrics.compute())
    out["num_images"] = n
    return out
