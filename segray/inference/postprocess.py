"""From probabilities to the final mask: per-class thresholds, then post-processing per class.

    post = PostProcess.from_config(config.segment, num_classes=1)
    mask = post.mask(proba)                  # threshold, then the enabled steps per class

Thresholds: binary, foreground where P(fg) >= ``thresholds[0]``; K classes, the argmax, and a
pixel whose winning class ``c > 0`` has a probability below ``thresholds[c - 1]`` becomes
background (thresholds of 0: the plain argmax).

Post-processing, for each foreground class ``c`` in order 1..K-1, on the mask as it stands:

1. ``min_component_px``: 8-connected components of ``c`` smaller than this become background;
2. ``fill_holes``: background pixels enclosed by ``c`` (not 4-connected to the image border
   through non-``c`` pixels, as `scipy.ndimage.binary_fill_holes`) become ``c``; pixels of
   other classes are never overwritten;
3. ``keep_largest``: only the largest 8-connected component of ``c`` stays (ties: the one whose
   first pixel comes first in raster order), the others become background.

`PostProcess.apply` is the numpy / `scipy.ndimage` implementation; `postprocess_torch` the same
steps in pure, TorchScript-compatible torch (components by iterated 3x3 min-pooling of pixel
indices, with pointer jumping, until stable), for the exported artefacts; a test keeps them
equal.

`choose_postprocessing` picks the thresholds and steps on out-of-fold predictions as nnU-Net
does: a step is kept only if it improves the mean Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PostProcess",
    "PostprocessChoice",
    "choose_postprocessing",
    "mean_dice",
    "postprocess_torch",
    "threshold_torch",
]

_EIGHT = np.ones((3, 3), dtype=bool)


def _per_class(value: Any, n: int, cast: type) -> tuple:
    values = value if isinstance(value, list | tuple) else [value] * n
    if len(values) != n:
        raise ValueError(f"need 1 or {n} values (one per foreground class), got {len(values)}")
    return tuple(cast(v) for v in values)


@dataclass(frozen=True)
class PostProcess:
    """Thresholds and post-processing steps, one entry per foreground class.

    ``num_classes`` is the model's output channels (1 = binary); ``thresholds`` etc. have
    ``max(1, num_classes - 1)`` entries.
    """

    num_classes: int
    thresholds: tuple[float, ...]
    min_component_px: tuple[int, ...]
    fill_holes: tuple[bool, ...]
    keep_largest: tuple[bool, ...]

    @classmethod
    def create(
        cls,
        num_classes: int,
        *,
        thresholds: Sequence[float] | float | None = None,
        min_component_px: Sequence[int] | int = 0,
        fill_holes: Sequence[bool] | bool = False,
        keep_largest: Sequence[bool] | bool = False,
    ) -> PostProcess:
        """Scalars apply to every foreground class; None thresholds: 0.5 binary, else argmax."""
        n = max(1, num_classes - 1)
        if thresholds is None:
            thresholds = 0.5 if num_classes == 1 else 0.0
        return cls(
            num_classes,
            _per_class(thresholds, n, float),
            _per_class(min_component_px, n, int),
            _per_class(fill_holes, n, bool),
            _per_class(keep_largest, n, bool),
        )

    @classmethod
    def from_config(cls, seg: Any, num_classes: int, threshold: float | None = None) -> PostProcess:
        """The settings of a `segray.config.SegmentConfig`; ``threshold`` (binary) overrides
        ``segment.thresholds`` / ``segment.threshold``."""
        thresholds = seg.thresholds
        if thresholds is None:
            thresholds = seg.threshold if num_classes == 1 else None
        if threshold is not None and num_classes == 1:
            thresholds = threshold
        return cls.create(
            num_classes,
            thresholds=thresholds,
            min_component_px=seg.min_component_px,
            fill_holes=seg.fill_holes,
            keep_largest=seg.keep_largest,
        )

    @property
    def foreground(self) -> int:
        """Number of foreground classes."""
        return len(self.thresholds)

    @property
    def steps(self) -> bool:
        """Whether any post-processing step is enabled."""
        return any(self.min_component_px) or any(self.fill_holes) or any(self.keep_largest)

    def settings(self) -> dict[str, Any]:
        """The ``segment.*`` settings that rebuild this (`segray.inference.write_ensemble`)."""
        return {
            "thresholds": list(self.thresholds)
            if self.num_classes == 1 or any(self.thresholds)
            else None,
            "min_component_px": list(self.min_component_px),
            "fill_holes": list(self.fill_holes),
            "keep_largest": list(self.keep_largest),
        }

    def threshold(self, proba: np.ndarray) -> np.ndarray:
        """(H, W) P(fg) or (K, H, W) probabilities -> (H, W) uint8 class map, no steps."""
        if proba.ndim == 2:
            return (proba >= self.thresholds[0]).astype(np.uint8)
        mask = proba.argmax(axis=0).astype(np.uint8)
        if any(self.thresholds):
            limits = np.asarray((0.0, *self.thresholds), dtype=np.float32)[mask]
            mask[proba.max(axis=0) < limits] = 0
        return mask

    def mask(self, proba: np.ndarray) -> np.ndarray:
        """`threshold`, then `apply`."""
        return self.apply(self.threshold(proba))

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """The enabled steps on an (H, W) class map (a new array; the input is unchanged)."""
        if not self.steps:
            return mask
        from scipy import ndimage

        mask = mask.copy()
        for c in range(1, self.foreground + 1):
            i = c - 1
            if self.min_component_px[i] > 0:
                labels, n = ndimage.label(mask == c, structure=_EIGHT)
                if n:
                    small = np.bincount(labels.ravel()) < self.min_component_px[i]
                    small[0] = False
                    mask[small[labels]] = 0
            if self.fill_holes[i]:
                filled = ndimage.binary_fill_holes(mask == c)
                mask[filled & (mask == 0)] = c
            if self.keep_largest[i]:
                labels, n = ndimage.label(mask == c, structure=_EIGHT)
                if n > 1:
                    keep = int(np.bincount(labels.ravel())[1:].argmax()) + 1
                    mask[(labels > 0) & (labels != keep)] = 0
        return mask


# --------------------------------------------------------------------------- torch
def threshold_torch(probs: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """`PostProcess.threshold` of (K, H, W) float32 probabilities in torch -> (H, W) uint8."""
    if probs.shape[0] == 1:
        return (probs[0] >= thresholds[0]).to(torch.uint8)
    top, mask = probs.max(dim=0)
    limits = torch.tensor([0.0] + thresholds, dtype=probs.dtype, device=probs.device)[mask]
    mask = torch.where(top < limits, torch.zeros_like(mask), mask)
    return mask.to(torch.uint8)


def _components(m: torch.Tensor) -> torch.Tensor:
    """8-connected components of a (H, W) bool mask: each pixel labelled with the 1-based
    raster index of its component's first pixel (0 off the mask)."""
    h, w = m.shape
    big = float(h * w + 1)
    index = torch.arange(1, h * w + 1, dtype=torch.float64, device=m.device).view(h, w)
    labels = torch.where(m, index, torch.full_like(index, big))
    while True:  # min over the 3x3 neighbourhood until nothing changes
        new = -F.max_pool2d(-labels[None, None], 3, 1, 1)[0, 0]
        # Pointer jumping: a label names a pixel of the same component whose own label is no
        # larger, so taking that label too is safe, and shortens long, winding components.
        hop = labels.flatten()[(new.long() - 1).clamp(0, h * w - 1)]
        new = torch.where(m, torch.minimum(new, hop), torch.full_like(new, big))
        if torch.equal(new, labels):
            break
        labels = new
    return torch.where(m, labels, torch.zeros_like(labels)).long()


def _fill_holes(m: torch.Tensor) -> torch.Tensor:
    """`scipy.ndimage.binary_fill_holes` of a (H, W) bool mask: the complement's pixels not
    4-connected to the border are set."""
    outside = ~m
    reach = torch.zeros_like(m)
    reach[0, :] = outside[0, :]
    reach[-1, :] = outside[-1, :]
    reach[:, 0] = outside[:, 0]
    reach[:, -1] = outside[:, -1]
    while True:
        grown = reach.clone()
        grown[1:, :] = grown[1:, :] | reach[:-1, :]
        grown[:-1, :] = grown[:-1, :] | reach[1:, :]
        grown[:, 1:] = grown[:, 1:] | reach[:, :-1]
        grown[:, :-1] = grown[:, :-1] | reach[:, 1:]
        grown = grown & outside
        if torch.equal(grown, reach):
            break
        reach = grown
    return ~reach


def postprocess_torch(
    mask: torch.Tensor,
    min_component_px: list[int],
    fill_holes: list[bool],
    keep_largest: list[bool],
) -> torch.Tensor:
    """`PostProcess.apply` in torch: an (H, W) uint8 class map -> a new one."""
    mask = mask.clone()
    zero = torch.zeros_like(mask)
    for i in range(len(min_component_px)):
        c = i + 1
        if min_component_px[i] > 0:
            labels = _components(mask == c)
            sizes = torch.bincount(labels.flatten(), minlength=mask.numel() + 1)[labels]
            mask = torch.where((labels > 0) & (sizes < min_component_px[i]), zero, mask)
        if fill_holes[i]:
            filled = _fill_holes(mask == c)
            mask = torch.where(filled & (mask == 0), torch.full_like(mask, c), mask)
        if keep_largest[i]:
            labels = _components(mask == c)
            sizes = torch.bincount(labels.flatten(), minlength=mask.numel() + 1)
            sizes[0] = 0
            largest = sizes.max()
            if int(largest) > 0:
                first = int(torch.nonzero(sizes == largest)[0, 0])
                mask = torch.where((labels > 0) & (labels != first), zero, mask)
    return mask


# --------------------------------------------------------------------------- choice
@dataclass
class PostprocessChoice:
    """What `choose_postprocessing` chose and why.

    ``settings`` are ``segment.*`` settings (pass them to `segray.inference.write_ensemble`);
    ``dice`` the mean Dice with them, ``baseline_dice`` with the starting settings; ``trials``
    every candidate tried, as (description, mean Dice).
    """

    settings: dict[str, Any]
    dice: float
    baseline_dice: float
    postprocess: PostProcess
    trials: list[tuple[str, float]] = field(default_factory=list)


def _class_dice(pred: np.ndarray, target: np.ndarray, c: int, valid: np.ndarray | None) -> float:
    p, g = pred == c, target == c
    if valid is not None:
        p, g = p & valid, g & valid
    denominator = int(p.sum()) + int(g.sum())
    return 2.0 * int((p & g).sum()) / denominator if denominator else np.nan


def mean_dice(
    post: PostProcess,
    probas: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Per foreground class, the mean over images of Dice of ``post.mask(proba)`` against
    ``masks`` (images where the class is in neither are skipped; a class never seen: 0)."""
    scores = np.full((len(probas), post.foreground), np.nan)
    for i, (proba, target) in enumerate(zip(probas, masks, strict=True)):
        pred = post.mask(proba)
        valid = None if ignore_index is None else target != ignore_index
        for c in range(1, post.foreground + 1):
            scores[i, c - 1] = _class_dice(pred, target, c, valid)
    seen = ~np.isnan(scores).all(axis=0)
    out = np.zeros(post.foreground)
    out[seen] = np.nanmean(scores[:, seen], axis=0)
    return out


def choose_postprocessing(
    probas: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    start: PostProcess | None = None,
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.3, 0.71, 0.05), 2)),
    min_sizes: Sequence[int] = (16, 64, 256),
    steps: Sequence[str] = ("threshold", "min_component_px", "fill_holes", "keep_largest"),
    ignore_index: int | None = None,
    tolerance: float = 1e-6,
) -> PostprocessChoice:
    """Choose per-class thresholds and post-processing on (out-of-fold) predictions.

    Greedy, per foreground class, in the order of ``steps``: each candidate (every value of
    ``thresholds``; every size of ``min_sizes``; fill holes on; keep the largest on) is tried
    with everything chosen so far, and kept only if it raises that class's mean Dice over
    the images by more than ``tolerance``, as nnU-Net keeps a post-processing step only when
    it helps. Pure numpy (scipy for components).

    Args:
        probas: per image, (H, W) P(fg) of a binary model or (K, H, W) probabilities.
        masks: per image, the (H, W) ground-truth class map.
        start: the settings to improve on (default: threshold 0.5 / argmax, no steps).
        ignore_index: target value of pixels that never count.
    """
    if not probas or len(probas) != len(masks):
        raise ValueError(
            f"need as many masks as probabilities (>0), got {len(probas)} and {len(masks)}"
        )
    num_classes = 1 if probas[0].ndim == 2 else int(probas[0].shape[0])
    best = start or PostProcess.create(num_classes)
    baseline = mean_dice(best, probas, masks, ignore_index=ignore_index)
    scores = baseline.copy()
    trials: list[tuple[str, float]] = []

    def candidates(step: str, i: int) -> list[tuple[str, PostProcess]]:
        def with_value(name: str, value: Any) -> PostProcess:
            values = list(getattr(best, name))
            values[i] = value
            return replace(best, **{name: tuple(values)})

        if step == "threshold":
            return [
                (f"class {i + 1} threshold {t:g}", with_value("thresholds", float(t)))
                for t in thresholds
            ]
        if step == "min_component_px":
            return [
                (f"class {i + 1} min_component_px {n}", with_value("min_component_px", int(n)))
                for n in min_sizes
            ]
        if step in ("fill_holes", "keep_largest"):
            return [(f"class {i + 1} {step}", with_value(step, True))]
        raise ValueError(
            f"unknown step {step!r}; valid: threshold, min_component_px, fill_holes, keep_largest"
        )

    for i in range(best.foreground):
        for step in steps:
            for name, candidate in candidates(step, i):
                tried = mean_dice(candidate, probas, masks, ignore_index=ignore_index)
                trials.append((name, float(tried.mean())))
                if tried[i] > scores[i] + tolerance:
                    best, scores = candidate, tried
    return PostprocessChoice(
        settings=best.settings(),
        dice=float(scores.mean()),
        baseline_dice=float(baseline.mean()),
        postprocess=best,
        trials=trials,
    )
