"""Augmentation presets (albumentations 2.0): small callables built once, train and eval apart.

Image and mask always travel together through one `albumentations.Compose`, so a crop, flip or
rotation is the same for both; masks are never interpolated (nearest) and every padded mask
pixel is ``ignore_index``.

    train_fn, eval_fn = transforms_from_config(cfg.data, channels=3)
    image, mask = train_fn(image_hwc_uint8, mask_hw_int64)   # (C, H, W) float32, (H, W) int64
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# albumentations asks the network for a newer version on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from segray.config import DataConfig  # noqa: E402

__all__ = [
    "PairTransform",
    "default_norm",
    "eval_transform",
    "sample_seed",
    "train_transform",
    "transforms_from_config",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def default_norm(channels: int) -> tuple[list[float], list[float]]:
    """Normalisation (mean, std) in [0, 1] units: ImageNet for 3 channels, 0.5/0.5 for 1, and
    for N bands ImageNet's channel average (0.449 / 0.226) on each: the rule that adapts a
    pretrained RGB stem to N bands (`segray.models.weights.adapt_input_weight`) expects
    every band scaled like an average RGB channel."""
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if channels == 1:
        return [0.5], [0.5]
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    mean = round(sum(IMAGENET_MEAN) / 3, 3)
    std = round(sum(IMAGENET_STD) / 3, 3)
    return [mean] * channels, [std] * channels


class PairTransform:
    """``(image (H, W, C) uint8, mask (H, W) int)`` -> ``((C, H, W) float32, (H, W) int64)``.

    Training passes ``seed=sample_seed(seed, epoch, index)``: the augmentation of a sample is
    then a function of (seed, epoch, index) alone, whatever the rank, the DataLoader worker or
    the process, so a run resumed at epoch k sees epoch k's augmentations. Without ``seed``,
    albumentations' own generator (which a forked worker would otherwise copy) is reseeded once
    per process from torch's seed for that worker and the rank.
    """

    def __init__(
        self, steps: Sequence[Any], *, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.compose = A.Compose(
            [
                *steps,
                A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
                ToTensorV2(),
            ]
        )
        self._seeded_for: tuple[int, int | None] | None = None

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, *, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
        if seed is None:
            self._reseed()
        else:
            self.compose.set_random_seed(seed)
            self._seeded_for = None  # a later call without a seed reseeds its process
        # int32: a mask dtype every OpenCV operation supports (int64 is not).
        out = self.compose(image=image, mask=mask.astype(np.int32, copy=False))
        return out["image"].contiguous(), out["mask"].long()

    def _reseed(self) -> None:
        worker = torch.utils.data.get_worker_info()
        process = (os.getpid(), None if worker is None else worker.id)
        if process == self._seeded_for:
            return
        base = torch.initial_seed() if worker is None else worker.seed
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.compose.set_random_seed(int(np.random.SeedSequence([base, rank]).generate_state(1)[0]))
        self._seeded_for = process

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms)
        return f"PairTransform({names})"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed``."""
    state = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1)
    return int(state[0])


def _resize(size: int) -> A.Resize:
    return A.Resize(
        size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST
    )


def train_transform(
    *,
    size: int,
    mode: str = "random_crop",
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotate90: float = 0.0,
    brightness_contrast: float = 0.2,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
) -> PairTransform:
    """Training preset: ``size`` x ``size`` by random crop (smaller images padded: image 0,
    mask ``ignore_index``) or resize, then flips, 90-degree rotations, brightness/contrast
    (each with its probability), normalisation."""
    if mode == "random_crop":
        steps: list[Any] = [
            A.RandomCrop(
                size,
                size,
                pad_if_needed=True,
                pad_position="random",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            )
        ]
    elif mode == "resize":
        steps = [_resize(size)]
    else:
        raise ValueError(f"unknown train transform {mode!r}; valid: random_crop, resize")
    if hflip:
        steps.append(A.HorizontalFlip(p=hflip))
    if vflip:
        steps.append(A.VerticalFlip(p=vflip))
    if rotate90:
        steps.append(A.RandomRotate90(p=rotate90))
    if brightness_contrast:
        steps.append(A.RandomBrightnessContrast(p=brightness_contrast))
    return PairTransform(steps, mean=mean, std=std)


def eval_transform(
    *,
    size: int,
    mode: str = "none",
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
) -> PairTransform:
    """Evaluation preset: ``none`` (full resolution), ``resize`` to ``size`` x ``size``, or
    ``pad`` up to ``size`` x ``size`` (mask padded with ``ignore_index``, never cropped)."""
    if mode == "none":
        steps: list[Any] = []
    elif mode == "resize":
        steps = [_resize(size)]
    elif mode == "pad":
        steps = [
            A.PadIfNeeded(
                size,
                size,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            )
        ]
    else:
        raise ValueError(f"unknown eval transform {mode!r}; valid: none, resize, pad")
    return PairTransform(steps, mean=mean, std=std)


def transforms_from_config(
    data_cfg: DataConfig, channels: int
) -> tuple[PairTransform, PairTransform]:
    """``(train_fn, eval_fn)`` for ``data_cfg`` and ``channels`` input channels."""
    default_mean, default_std = default_norm(channels)
    mean = _per_channel(data_cfg.mean, default_mean, channels, "mean")
    std = _per_channel(data_cfg.std, default_std, channels, "std")
    common = {
        "size": data_cfg.image_size,
        "mean": mean,
        "std": std,
        "ignore_index": data_cfg.ignore_index,
    }
    train = train_transform(
        mode=data_cfg.train_transform,
        hflip=data_cfg.hflip,
        vflip=data_cfg.vflip,
        rotate90=data_cfg.rotate90,
        brightness_contrast=data_cfg.brightness_contrast,
        **common,
    )
    return train, eval_transform(mode=data_cfg.eval_transform, **common)


def _per_channel(
    values: list[float] | None, default: list[float], channels: int, name: str
) -> list[float]:
    """``values`` (one value, or one per channel) or the default, as one value per channel."""
    if values is None:
        return default
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"data.{name} has {len(values)} values for {channels} input channels")
    return list(values)
