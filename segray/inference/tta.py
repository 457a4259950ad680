"""Test-time augmentation: the input transformed, the model run, the output inverted exactly.

``none``: the identity. ``flip``: nnU-Net's 2D mirroring set (identity, horizontal, vertical,
both). ``d4``: the 8 symmetries of the square (the flips, each with and without a transpose of
H and W). Each transform is ``(transpose, flip_h, flip_v)``, applied in that order to an
``(N, C, H, W)`` tensor and undone in the reverse order, so ``invert(apply(x, t), t) == x``
bit for bit. The averages are taken in probability space, in float32.

Pure torch and TorchScript-compatible: the exported artefacts (`segray.export`) run the same
functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["TTA_MODES", "Transform", "apply", "invert", "transforms", "tta_probs"]

TTA_MODES: tuple[str, ...] = ("none", "flip", "d4")
Transform = tuple[bool, bool, bool]  # (transpose H/W, flip W, flip H)

_FLIPS: list[Transform] = [(False, False, False), (False, True, False), (False, False, True)]
_FLIPS.append((False, True, True))


def transforms(mode: str) -> list[Transform]:
    """The transforms of a TTA mode (the identity first)."""
    if mode == "none":
        return [(False, False, False)]
    if mode == "flip":
        return list(_FLIPS)
    if mode == "d4":
        return list(_FLIPS) + [(True, h, v) for _, h, v in _FLIPS]
    raise ValueError(f"unknown tta mode {mode!r}; valid: {', '.join(TTA_MODES)}")


def apply(x: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    """``x`` (..., H, W) under the transform ``t``: transpose, then flip W, then flip H."""
    if t[0]:
        x = x.transpose(-2, -1)
    if t[1]:
        x = x.flip([-1])
    if t[2]:
        x = x.flip([-2])
    return x


def invert(y: torch.Tensor, t: tuple[bool, bool, bool]) -> torch.Tensor:
    """Undo `apply` (the steps in reverse order): ``invert(apply(x, t), t) == x``."""
    if t[2]:
        y = y.flip([-2])
    if t[1]:
        y = y.flip([-1])
    if t[0]:
        y = y.transpose(-2, -1)
    return y


def tta_probs(
    probs_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str
) -> torch.Tensor:
    """Mean over the transforms of ``mode`` of ``invert(probs_of(apply(x, t)), t)``, float32.

    ``probs_of`` maps (N, C, H, W) inputs to (N, K, H, W) probabilities at input resolution.
    """
    total = torch.zeros(0)
    steps = transforms(mode)
    for i, t in enumerate(steps):
        p = invert(probs_of(apply(x, t)).float(), t)
        total = p if i == 0 else total + p
    return total / len(steps) if len(steps) > 1 else total
