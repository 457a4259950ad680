"""Segmentation losses: BCE, cross-entropy, soft Dice and BCE+Dice, behind a small registry.

    loss_fn = create_loss("bce_dice", num_classes=1, bce_weight=0.5, ignore_index=255)
    total, parts = loss_fn.compute(logits, target)   # parts: {"bce": ..., "dice": ...}, detached
    total.backward()

Conventions (shared with `segray.metrics`):

* ``logits`` are (B, K, H, W). K == 1 is a binary task (sigmoid of the one channel is
  P(foreground)); K > 1 is K classes (softmax over dim 1).
* ``target`` is an integer (B, H, W) map of class indices (binary: 0 / 1). Pixels equal to
  ``ignore_index`` count nowhere: not in the value and not in the gradient (their logits get a
  gradient of exactly 0). Target values are not range-checked here, since that would synchronise
  the GPU on every step; `segray.metrics.SegMetrics` checks them.
* Losses are computed in float32 whatever the logits' dtype (mixed-precision safe).

Soft Dice sums over the whole batch (every valid pixel of every image), per class:
``score_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)`` and the loss is
``1 - mean_c(score_c)``, the mean running over every class (binary: the one foreground channel).
Mask and prediction both empty (no target pixel and no probability mass for a class): with
``smooth > 0`` the score is ``smooth / smooth = 1`` and the loss 0, because an empty prediction
on an empty mask is perfect; the smoothing also keeps the gradient finite. With ``smooth == 0``
that 0/0 score is defined as 1 (loss 0), again with a finite gradient.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segray.metrics import check_batch, probs_from_logits

__all__ = [
    "BCEDiceLoss",
    "BCELoss",
    "CELoss",
    "DiceLoss",
    "SegLoss",
    "create_loss",
    "list_losses",
]


class SegLoss(nn.Module):
    """Base of every segray loss: ``loss_fn(logits, target)`` is the scalar to backpropagate.

    Args:
        num_classes: 1 for a binary task (one sigmoid logit), K >= 2 for K softmax classes.
        bce_weight: weight of the pixel-wise term (BCE or CE) in ``bce_dice``, in [0, 1]; the
            Dice term gets ``1 - bce_weight``. Accepted, and unused, by the other losses.
        ignore_index: target value of pixels that never count; None: every pixel counts.
        smooth: Dice smoothing, >= 0, added to the numerator and the denominator of the score.
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        num_classes: int,
        bce_weight: float = 0.5,
        ignore_index: int | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self._check_num_classes(num_classes)
        if not 0.0 <= bce_weight <= 1.0:
            raise ValueError(f"bce_weight must lie in [0, 1], got {bce_weight}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.num_classes = num_classes
        self.bce_weight = bce_weight
        self.ignore_index = ignore_index
        self.smooth = smooth

    def _check_num_classes(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (1 = binary), got {num_classes}")

    def compute(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss (differentiable) and its unweighted parts (detached 0-d tensors)."""
        check_batch(logits, target, self.num_classes)
        target = target.long()
        valid = (
            torch.ones_like(target, dtype=torch.bool)
            if self.ignore_index is None
            else target != self.ignore_index
        )
        total, parts = self._compute(logits.float(), target, valid)
        return total, {k: v.detach() for k, v in parts.items()}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The total loss; same as ``compute(logits, target)[0]``."""
        return self.compute(logits, target)[0]

    def _compute(
        self, logits: Tensor, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _dice(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Soft Dice loss over the batch, averaged over all classes (binary: the foreground).

        A class with an empty mask and an empty prediction scores 1 (module docstring).
        """
        probs = probs_from_logits(logits)
        first = 1 if self.num_classes == 1 else 0  # binary: the one channel is class 1
        classes = torch.arange(first, first + probs.shape[1], device=target.device)
        mask = valid.unsqueeze(1)
        p = torch.where(mask, probs, 0.0)
        t = ((target.unsqueeze(1) == classes.view(1, -1, 1, 1)) & mask).float()
        dims = (0, 2, 3)
        inter = (p * t).sum(dims)
        denom = p.sum(dims) + t.sum(dims) + self.smooth
        defined = denom > 0
        score = torch.where(
            defined, (2 * inter + self.smooth) / torch.where(defined, denom, 1.0), 1.0
        )
        return 1.0 - score.mean()


def _bce(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """BCE-with-logits of the one channel, mean over valid pixels; 0 when there are none."""
    safe = torch.where(valid, target, 0).float()
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], safe, reduction="none")
    return torch.where(valid, per_pixel, 0.0).sum() / valid.sum().clamp(min=1)


def _ce(logits: Tensor, target: Tensor, valid: Tensor, ignore_index: int | None) -> Tensor:
    """Cross-entropy, mean over valid pixels; 0 (not NaN) when there are none."""
    ignore = -100 if ignore_index is None else ignore_index  # torch's default; never a class
    total = F.cross_entropy(logits, target, ignore_index=ignore, reduction="sum")
    return total / valid.sum().clamp(min=1)


class BCELoss(SegLoss):
    """Binary cross-entropy with logits (seed 003), mean over valid pixels; binary only."""

    name = "bce"

    def _check_num_classes(self, num_classes: int) -> None:
        super()._check_num_classes(num_classes)
        if num_classes > 1:
            raise ValueError(
                "loss 'bce' is for a binary task (num_classes=1); "
                f"for num_classes={num_classes} use 'ce'"
            )

    def _compute(
        self, logits: Tensor, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        bce = _bce(logits, target, valid)
        return bce, {"bce": bce}


class CELoss(SegLoss):
    """Cross-entropy over K >= 2 softmax classes, mean over valid pixels."""

    name = "ce"

    def _check_num_classes(self, num_classes: int) -> None:
        super()._check_num_classes(num_classes)
        if num_classes == 1:
            raise ValueError(
                "loss 'ce' needs num_classes >= 2; for a binary task (num_classes=1) use 'bce'"
            )

    def _compute(
        self, logits: Tensor, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = _ce(logits, target, valid, self.ignore_index)
        return ce, {"ce": ce}


class DiceLoss(SegLoss):
    """Soft Dice loss only: sigmoid (binary) or softmax vs one-hot (multi-class).

    An empty prediction on an empty mask is perfect: score 1, loss 0, finite gradient (with
    ``smooth > 0`` through the smoothing; with ``smooth == 0`` by defining 0/0 as 1).
    """

    name = "dice"

    def _compute(
        self, logits: Tensor, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        dice = self._dice(logits, target, valid)
        return dice, {"dice": dice}


class BCEDiceLoss(SegLoss):
    """``bce_weight * BCE + (1 - bce_weight) * Dice`` (seed 000); CE replaces BCE when K > 1.

    Parts: ``{"bce", "dice"}`` for a binary task, ``{"ce", "dice"}`` for K classes.
    """

    name = "bce_dice"

    def _compute(
        self, logits: Tensor, target: Tensor, valid: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.num_classes == 1:
            key, pixel = "bce", _bce(logits, target, valid)
        else:
            key, pixel = "ce", _ce(logits, target, valid, self.ignore_index)
        dice = self._dice(logits, target, valid)
        total = self.bce_weight * pixel + (1.0 - self.bce_weight) * dice
        return total, {key: pixel, "dice": dice}


_LOSSES: dict[str, type[SegLoss]] = {
    cls.name: cls for cls in (BCELoss, BCEDiceLoss, CELoss, DiceLoss)
}


def list_losses() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_LOSSES)


def create_loss(
    name: str,
    *,
    num_classes: int,
    bce_weight: float = 0.5,
    ignore_index: int | None = None,
    smooth: float = 1.0,
) -> SegLoss:
    """Build the loss registered as ``name`` (see `list_losses`); arguments as in `SegLoss`.

    Raises:
        ValueError: unknown name (the message lists the valid ones), a loss that does not fit
            ``num_classes`` ('bce' is binary only, 'ce' multi-class only), or a bad argument.
    """
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}"
        ) from None
    return cls(
        num_classes=num_classes, bce_weight=bce_weight, ignore_index=ignore_index, smooth=smooth
    )
