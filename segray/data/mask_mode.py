"""``data.mask_mode: auto`` resolved from a dataset's mask values: the one place it is chosen.

`segray.data.inspect.fingerprint` (so inspect, train, tune and auto) and the ground truth of
evaluate and segment call `resolve_mask_mode` with the histogram of the mask values they read:

    mapper, mode, updates, reason, error = resolve_mask_mode(data_cfg, {0: 9000, 255: 1000})
    # threshold, {"data.mask_mode": "threshold", "data.mask_threshold": 127}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segray.config import DataConfig
from segray.data.io import ImageError
from segray.data.masks import COLOR_BASE, MaskMapper, color_name

__all__ = [
    "NEAR_BINARY",
    "Resolved",
    "choose",
    "near_binary",
    "no_foreground",
    "resolve_mask_mode",
    "value_name",
    "values_text",
]

Resolved = tuple[MaskMapper | None, str | None, dict[str, Any], str, str | None]


def resolve_mask_mode(
    data_cfg: DataConfig,
    histogram: dict[int, int],
    *,
    masks: dict[str, Any] | None = None,
    infer_classes: bool = False,
) -> Resolved:
    """``(mapper, mode, config updates, reason, error)`` for the mask values in ``histogram``.

    The one place ``data.mask_mode: auto`` is resolved (inspect, train, tune and auto read it
    through `fingerprint`; segment and evaluate for their ground truth). An explicit mode is
    kept (its mapper must accept the values); ``auto`` picks: ``data.mask_colors`` -> colors;
    Pet trimaps {1, 2, 3} (``source: pet``) -> trimap; {0..K-1} (plus ``ignore_index``) ->
    index (0/1 masks, palettes; with ``infer_classes`` and the default two class names, masks
    0..K-1 with K > 2 get K classes, ``class_1`` ...); binary {0, v} (0/255, 0/65535, ...) ->
    threshold at v // 2; near-binary masks (`near_binary`: at 0 and v but for edge values
    that anti-aliasing or JPEG leave, under `NEAR_BINARY` of the pixels far from both) ->
    threshold at v // 2 as well, the reason naming that share (`Fingerprint.warning`).
    ``masks`` (the fingerprint's mask header statistics) names the encoding in a refusal and
    keeps palette masks out of the near-binary rule. Anything else is an error naming the
    values and the settings to choose from.
    """
    k = len(data_cfg.classes)
    values = set(histogram)
    ignore = data_cfg.ignore_index
    root = data_cfg.root
    if data_cfg.mask_mode != "auto":
        return _explicit(data_cfg, values)
    if not values:
        return None, None, {}, "", f"{root}: no readable mask to choose data.mask_mode from"
    updates: dict[str, Any]
    labels = sorted(values - {ignore})
    near = near_binary(histogram, masks)
    if data_cfg.mask_colors:
        updates, reason = {"data.mask_mode": "colors"}, "data.mask_colors"
        used = sorted(set(data_cfg.mask_colors.values()) - {ignore})
        if infer_classes and _default_classes(data_cfg) and used == list(range(len(used))):
            updates.update(_classes_update(len(used)))
    elif data_cfg.source == "pet" and values <= {1, 2, 3}:
        updates, reason = {"data.mask_mode": "trimap"}, "Pet trimap {1, 2, 3}"
    elif values <= set(range(k)) | {ignore} and values - {0, ignore}:
        ignored = f", {ignore} ignored" if ignore in values else ""
        updates, reason = {"data.mask_mode": "index"}, f"values in 0..{k - 1}{ignored}"
    elif (
        infer_classes
        and _default_classes(data_cfg)
        and labels == list(range(len(labels)))
        and 2 < len(labels) <= _MAX_INFERRED
    ):
        ignored = f", {ignore} ignored" if ignore in values else ""
        updates = {"data.mask_mode": "index", **_classes_update(len(labels))}
        reason = f"values in 0..{len(labels) - 1}: {len(labels)} classes{ignored}"
    elif k == 2 and len(values) == 2 and 0 in values and max(values) > 1:
        top = max(values)
        updates = {"data.mask_mode": "threshold", "data.mask_threshold": top // 2}
        reason = f"binary 0/{top}, value > {top // 2} is foreground"
    elif k == 2 and near is not None and near[1] < NEAR_BINARY:
        top, between, off = near
        updates = {"data.mask_mode": "threshold", "data.mask_threshold": top // 2}
        reason = (
            f"near-binary 0/{top}: {between:.2%} of the pixels in between, {off:.2%} not "
            f"exactly 0 or {top} ({_blur(masks)}); value > {top // 2} is foreground"
        )
    else:
        return None, None, {}, "", _refusal(data_cfg, histogram, near, masks)
    cfg = data_cfg.model_copy(update={k_.split(".")[1]: v for k_, v in updates.items()})
    mapper = MaskMapper.from_config(cfg)
    try:  # colours not in data.mask_colors
        mapper(np.array([sorted(values)], dtype=np.int64), "k", name="sampled masks")
    except ImageError as e:
        return None, None, {}, "", f"{root}: {e}"
    return mapper, updates["data.mask_mode"], updates, reason, None


def _explicit(data_cfg: DataConfig, values: set[int]) -> Resolved:
    """An explicit ``data.mask_mode``, kept: its mapper, or an error if it refuses ``values``."""
    mode = data_cfg.mask_mode
    mapper = MaskMapper.from_config(data_cfg)
    try:
        mapper(np.array([sorted(values)], dtype=np.int64), "k")
    except ImageError as e:
        return None, mode, {}, "explicit", f"{data_cfg.root}: data.mask_mode={mode}: {e}"
    reason = {
        "threshold": f"value > {data_cfg.mask_threshold} is foreground",
        "index": "values are class indices",
        "values": "data.mask_values",
        "trimap": f"Pet trimap, border -> {data_cfg.trimap_uncertain}",
        "colors": "data.mask_colors",
    }[mode]
    return mapper, mode, {}, reason, None


NEAR_BINARY = 0.01  # near-binary masks: the share of in-between pixels read as binary unasked
_MIN_SPAN = 16  # near-binary masks span at least this (smaller values are class indices)
_MIN_BETWEEN = 4  # in-between values of near-binary masks, at least (fewer: stray labels)
_MAX_INFERRED = 64  # most classes inferred from index masks


def near_binary(
    histogram: dict[int, int], masks: dict[str, Any] | None = None
) -> tuple[int, float, float] | None:
    """``(top, between, off)`` of masks whose pixels sit at 0 and ``top`` but for a share
    ``off`` of other values, many of them (at least `_MIN_BETWEEN`) and each rarer than either
    extreme: a binary mask resized with interpolation or saved as JPEG. ``between`` is the
    share of pixels far from both extremes (more than 1/8 of the span: JPEG noise stays
    closer). None for anything else, and for palette masks (indices are never interpolated).
    """
    modes = (masks or {}).get("modes") or {}
    if 0 not in histogram or set(modes) & {"P", "PA"}:
        return None
    top = max(histogram)
    inner = {v: c for v, c in histogram.items() if 0 < v < top}
    if top < _MIN_SPAN or len(inner) < _MIN_BETWEEN:
        return None
    if max(inner.values()) >= min(histogram[0], histogram[top]):
        return None
    total = sum(histogram.values())
    tol = top // 8
    far = sum(c for v, c in inner.items() if tol < v < top - tol)
    return top, far / total, sum(inner.values()) / total


def _blur(masks: dict[str, Any] | None) -> str:
    """The encoding that puts values between 0 and the top: JPEG artefacts or anti-aliasing."""
    formats = (masks or {}).get("formats") or {}
    jpeg = formats.get("JPEG", 0) + formats.get("MPO", 0)
    if jpeg and jpeg * 2 >= sum(formats.values()):
        return "JPEG artefacts around the edges"
    return "anti-aliased edges, as a resize with interpolation makes them"


def _default_classes(data_cfg: DataConfig) -> bool:
    return data_cfg.classes == DataConfig.model_fields["classes"].default


def _classes_update(k: int) -> dict[str, Any]:
    return {"data.classes": ["background", *(f"class_{i}" for i in range(1, k))]}


def _refusal(
    data_cfg: DataConfig,
    histogram: dict[int, int],
    near: tuple[int, float, float] | None,
    masks: dict[str, Any] | None,
) -> str:
    """Why ``auto`` cannot choose: the values, the encoding they look like, what to set."""
    k = len(data_cfg.classes)
    values = f"mask values {values_text(histogram)} for {k} classes {data_cfg.classes}"
    if no_foreground(histogram, data_cfg):
        problem = "no foreground: every sampled mask is background"
        return f"{data_cfg.root}: {problem}; {values}: {choose(data_cfg, sorted(histogram))}"
    head = f"{data_cfg.root}: cannot choose data.mask_mode; {values}: "
    if near is not None and k == 2:
        top, between, _ = near
        return head + (
            f"binary masks with {_blur(masks)}: {between:.1%} of the pixels lie between 0 and "
            f"{top} (over the {NEAR_BINARY:.0%} read as binary unasked): set "
            f"data.mask_mode=threshold data.mask_threshold={top // 2}"
        )
    labels = sorted(set(histogram) - {data_cfg.ignore_index})
    if k == 2 and labels == list(range(len(labels))) and len(labels) > 2:
        names = ",".join(["background", *(f"class_{i}" for i in range(1, len(labels)))])
        return head + (
            f"index masks with {len(labels)} classes (values 0..{len(labels) - 1}): set "
            f"data.classes=[{names}] (and data.mask_mode=index)"
        )
    return head + choose(data_cfg, sorted(histogram))


def no_foreground(histogram: dict[int, int], data_cfg: DataConfig) -> bool:
    return bool(histogram) and set(histogram) <= {0, data_cfg.ignore_index}


def choose(data_cfg: DataConfig, values: Sequence[int] = ()) -> str:
    """The settings a user chooses from, as one phrase."""
    k = len(data_cfg.classes)
    options = [
        "data.mask_mode=threshold data.mask_threshold=T (binary: value > T is foreground)",
        f"data.mask_mode=index (values are class indices 0..{k - 1})",
    ]
    if len(values) == k:
        pairs = ",".join(f"{v}:{i}" for i, v in enumerate(values))
        options.append(f"data.mask_mode=values 'data.mask_values={{{pairs}}}'")
    else:
        options.append("data.mask_mode=values 'data.mask_values={value:class,...}'")
    if values and set(values) <= {1, 2, 3} and k == 2:
        options.insert(0, "data.mask_mode=trimap (Oxford Pet: 1 pet, 2 background, 3 border)")
    return "set one of " + "; ".join(options)


def values_text(histogram: dict[int, int], limit: int = 8) -> str:
    """``{0: 91.2%, 255: 8.8%}`` (pixel share of each value), the most frequent first if more
    than ``limit``."""
    total = sum(histogram.values()) or 1
    shown = sorted(histogram.items(), key=lambda vc: -vc[1])[:limit]
    text = ", ".join(f"{value_name(v)}: {c / total:.1%}" for v, c in sorted(shown))
    more = f", ... {len(histogram)} values" if len(histogram) > limit else ""
    return "{" + text + more + "}"


def value_name(value: int) -> str:
    """A raw mask value as shown: the number, or ``#rrggbb`` for a packed colour."""
    return color_name(value) if value >= COLOR_BASE else str(value)
