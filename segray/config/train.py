"""The training sections: ``loss``, ``optim`` and ``train`` (DDP workers through Ray Train)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segray.config.base import Section, optional

__all__ = ["LossConfig", "OptimConfig", "TrainConfig"]


class LossConfig(Section):
    """Training loss (`segray.losses.create_loss`)."""

    name: Literal["bce_dice", "dice", "bce", "ce"] = Field(
        "bce_dice", description="bce_dice = bce_weight*BCE + (1-bce_weight)*Dice (CE if K>2)"
    )
    bce_weight: float = Field(0.5, ge=0, le=1, description="weight of BCE/CE against Dice")
    smooth: float = Field(1.0, ge=0, description="Dice smoothing (keeps empty-empty at 1)")


class OptimConfig(Section):
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 / decoupled weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    scheduler: Literal["none", "cosine", "plateau"] = Field(
        "cosine", description="cosine to min_lr over the run, or halve on a val-Dice plateau"
    )
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")
    min_lr: float = Field(1e-6, ge=0, description="floor of cosine / plateau")
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: LR multiplier")
    plateau_patience: int = Field(3, ge=0, description="plateau: epochs without improvement")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null = off")


# --------------------------------------------------------------------------- train
class TrainConfig(Section):
    """Distributed training: DDP workers through Ray Train."""

    epochs: int = Field(10, ge=1, description="epochs to train")
    num_workers: int = Field(2, ge=1, description="DDP workers (Ray Train workers)")
    use_gpu: bool = Field(False, description="one or more GPUs per worker, NCCL backend")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype of forward passes (segray.precision): auto = bf16 where the "
        "device runs it natively (Ampere+ GPUs; CPUs with AVX512-BF16/AMX), fp16 + GradScaler "
        "on older GPUs, else fp32; fp16 needs CUDA",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="NHWC memory format; auto = on CUDA and oneDNN CPUs (faster there)"
    )
    sync_batchnorm: bool = Field(False, description="convert BatchNorm to SyncBatchNorm")
    early_stopping_patience: int | None = optional(
        ge=1, description="stop after this many epochs without a better val Dice"
    )
    seed: int = Field(0, description="seeds torch, numpy, random and the sampler")
    threshold: float = Field(0.5, gt=0, lt=1, description="binary probability threshold")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last ckpt")
    torch_threads: int | None = optional(
        ge=1, description="intra-op threads per worker; default: cpus_per_worker"
    )
    heap_reuse: bool = Field(
        True,
        description="glibc malloc settings on the workers (MALLOC_MMAP_MAX_=0, a high trim "
        "threshold) so large activations reuse heap pages instead of fresh zeroed mmap pages "
        "every step: measured ~8% faster CPU epochs in Ray's worker processes",
    )

    @model_validator(mode="after")
    def _fp16_needs_gpu(self) -> TrainConfig:
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision 'fp16' needs use_gpu: true; on CPUs use 'bf16' or 'fp32'")
        return self

    @model_validator(mode="after")
    def _gpu_settings(self) -> TrainConfig:
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError(
                "train.sync_batchnorm: true needs train.use_gpu: true (SyncBatchNorm runs on "
                "CUDA only); set it to false on CPU workers"
            )
        if self.use_gpu and (self.gpus_per_worker < 1 or self.gpus_per_worker % 1):
            raise ValueError(
                f"train.gpus_per_worker={self.gpus_per_worker:g} with use_gpu: a DDP worker needs "
                "a whole number of GPUs (>= 1); NCCL cannot share one GPU between workers"
            )
        return self
