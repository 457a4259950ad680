"""Masks drawn over images: the prediction in class colours, or its errors against the ground
truth, with false positives and false negatives in two distinct colours.

    rgb = error_overlay(image, pred, target, ignore_index=255)   # (H, W, 3) uint8
    png = to_png(side_by_side([image, rgb]), max_side=256)

The colours are shared with `segray.evaluate` (its overlay figures) so that both read alike:
numpy and Pillow only, no matplotlib, no torch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = [
    "ERROR_COLOURS",
    "ERROR_LEGEND",
    "IGNORED",
    "PREDICTED",
    "error_overlay",
    "error_rgba",
    "mask_overlay",
    "side_by_side",
    "to_png",
]

#: RGB of each kind of pixel in an error overlay (colour-blind safe: orange vs blue).
ERROR_COLOURS = {
    "true positive": (46, 160, 67),  # green
    "false positive": (255, 127, 14),  # orange: predicted foreground, truly background
    "false negative": (31, 119, 255),  # blue: missed foreground
    "wrong class": (214, 39, 200),  # magenta: foreground of another class (multi-class)
}
ERROR_LEGEND = list(ERROR_COLOURS.items())
IGNORED = (150, 150, 150)  # ground-truth pixels marked ignore_index
PREDICTED = (255, 215, 0)  # predicted foreground without ground truth (yellow)
_ALPHA = {"true positive": 0.5, "false positive": 0.7, "false negative": 0.7, "wrong class": 0.7}
_MASK_ALPHA = 0.5


def error_rgba(pred: np.ndarray, target: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) prediction and ground truth (class indices) -> (H, W, 4) float RGBA in [0, 1]:
    true positives faint green, false positives orange, false negatives blue, foreground of the
    wrong class magenta, ignored pixels grey, true background transparent."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} differ in size")
    valid = target != ignore_index
    pred_fg, true_fg = (pred != 0) & valid, (target != 0) & valid
    kinds = {
        "true positive": pred_fg & true_fg & (pred == target),
        "false positive": pred_fg & ~true_fg,
        "false negative": ~pred_fg & true_fg,
        "wrong class": pred_fg & true_fg & (pred != target),
    }
    rgba = np.zeros((*pred.shape, 4))
    for kind, where in kinds.items():
        rgba[where] = (*(c / 255 for c in ERROR_COLOURS[kind]), _ALPHA[kind])
    rgba[~valid] = (*(c / 255 for c in IGNORED), 0.6)
    return rgba


def _blend(image: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    base = _rgb(image).astype(np.float64)
    alpha = rgba[..., 3:4]
    out = base * (1 - alpha) + rgba[..., :3] * 255 * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def error_overlay(
    image: np.ndarray, pred: np.ndarray, target: np.ndarray, ignore_index: int = 255
) -> np.ndarray:
    """The image with `error_rgba` blended over it: (H, W, 3) uint8."""
    return _blend(image, error_rgba(pred, target, ignore_index))


def mask_overlay(image: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image with the predicted foreground tinted yellow (no ground truth to compare)."""
    rgba = np.zeros((*pred.shape, 4))
    rgba[pred != 0] = (*(c / 255 for c in PREDICTED), _MASK_ALPHA)
    return _blend(image, rgba)


def side_by_side(panels: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Panels of the same height next to each other, separated by white columns."""
    height = max(p.shape[0] for p in panels)
    parts = []
    for i, panel in enumerate(panels):
        rgb = _rgb(panel)
        if rgb.shape[0] != height:
            pad = np.full((height - rgb.shape[0], rgb.shape[1], 3), 255, np.uint8)
            rgb = np.concatenate([rgb, pad])
        parts.append(rgb)
        if i < len(panels) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def to_png(rgb: np.ndarray, *, max_side: int | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array, shrunk so its longer side is at most
    ``max_side`` (thumbnails keep the page small)."""
    img = Image.fromarray(_rgb(rgb))
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
