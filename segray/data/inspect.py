"""The dataset's fingerprint: what is in it, read before anything trains on it.

As nnU-Net does before it plans a network, segray reads every image and mask header (size,
mode, bands, bit depth) and the pixels of a bounded sample of pairs (`segray.data.scan`),
then decides the class mapping it will use (``data.mask_mode: auto`` is chosen here,
`segray.data.mask_mode`) and reports the mask value histogram, the class balance and
suspicious files (`segray.data.fingerprint_record.Fingerprint`). `segray inspect` prints it;
`prepare_data` runs it before every training and search and writes ``fingerprint.json`` next to
their outputs.

    fp = fingerprint(cfg.data)          # never raises on a bad dataset: fp.error / fp.problems
    print(fp.table()); fp.save("runs/a")
    cfg = apply_overrides(cfg, fp.updates)   # the concrete data.mask_mode (and its settings)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segray.config import DataConfig
from segray.data.fingerprint_record import Fingerprint
from segray.data.folder import Problems, Sample
from segray.data.intensity import mapped_mean_std, resolve_intensity_range, summarise_bands
from segray.data.mask_mode import choose, no_foreground, resolve_mask_mode, values_text
from segray.data.masks import MaskMapper
from segray.data.remote import dataset_root, is_remote, renamed, shown_root
from segray.data.samples import Listing, list_pairs
from segray.data.scan import (
    Pair,
    intensity_means,
    mask_histogram,
    read_headers,
    read_pair,
    spread_order,
)
from segray.data.split import slice_groups_hint
from segray.timeline import mark

__all__ = ["DEFAULT_SAMPLE", "Fingerprint", "fingerprint", "resolve_mask_mode"]

DEFAULT_SAMPLE = 256  # pairs whose pixels are read (evenly spaced over the sorted keys)


@dataclass
class _Masks:
    """The sampled pairs and the mask mapping decided from their values."""

    pairs: list[Pair]
    histogram: dict[int, int]
    mapper: MaskMapper | None
    mode: str | None
    updates: dict[str, Any]
    reason: str
    error: str | None
    resolved_cfg: DataConfig  # data_cfg with ``updates`` applied
    fractions: dict[str, float]  # class balance under ``mapper``
    empty: list[str]  # masks with no foreground under ``mapper``
    found: bool  # any foreground at all


# --------------------------------------------------------------------------- entry point
def fingerprint(
    data_cfg: DataConfig,
    *,
    sample: int = DEFAULT_SAMPLE,
    workers: int | None = None,
    root: Path | None = None,
    infer_classes: bool = False,
) -> Fingerprint:
    """The fingerprint of ``data_cfg``'s dataset (``data.root`` must be set; a URI is read from
    its local mirror, `segray.data.remote.dataset_root`, or from ``root`` when the caller has
    resolved it already).

    Problems (unmatched, unreadable, size-mismatched files) and a mapping that cannot be
    chosen or finds no foreground are recorded, not raised (`Fingerprint.raise_if_unusable`).
    With no foreground in the sample, the remaining masks are read until one has some.
    ``infer_classes``: index masks 0..K-1 give K classes when ``data.classes`` is the default
    (`resolve_mask_mode`; `segray.data.inspect_data` asks for it, a checkpoint's config not).
    """
    if not data_cfg.root:
        raise ValueError("fingerprint needs data.root (run prepare_data first)")
    root = root or dataset_root(data_cfg)
    shown = shown_root(data_cfg, root)
    mark("fingerprint", root=shown)
    with renamed(data_cfg.root, root):
        samples, problems = list_pairs(data_cfg, root)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(workers, thread_name_prefix="segray-inspect") as pool:
        images, masks, bad = read_headers(pool, samples, problems)
        readable = [s for s in samples if s.image not in bad and s.mask not in bad]
        order = [readable[i] for i in spread_order(len(readable))]
        decided = _read_masks(pool, order, data_cfg, masks, sample, infer_classes)
    if decided.error is None and decided.mapper is not None and not decided.found and decided.pairs:
        decided.error = (
            f"{shown}: no mask has foreground under data.mask_mode={decided.mode} "
            f"({decided.reason}); mask values {values_text(decided.histogram)} over "
            f"{len(decided.pairs)} masks: {choose(data_cfg)}"
        )
    for p in decided.pairs:
        if p.error is not None and p.error_path is not None:
            problems.add("unusable file", Path(p.error_path), p.error)
    suspicious = _suspicious(root, samples, decided, data_cfg)
    if is_remote(data_cfg.root):  # name the URI, not its mirror in the cache
        _rename_root(problems, str(root), shown)
    intensity_range = _add_intensity(images, decided.pairs, data_cfg)
    return Fingerprint(
        root=shown,
        source=data_cfg.source,
        pairs=len(samples),
        problems=problems,
        images=images,
        masks=masks,
        sampled=len(decided.pairs),
        histogram=decided.histogram,
        mask_mode=decided.mode,
        auto=data_cfg.mask_mode == "auto",
        updates=decided.updates,
        reason=decided.reason,
        mapping=_mapping(decided.mapper, decided.histogram, decided.resolved_cfg)
        if decided.mapper
        else {},
        class_fraction=decided.fractions,
        suspicious=suspicious,
        error=decided.error,
        warning=_warning(decided.mode, decided.updates, decided.reason),
        intensity_range=intensity_range,
        listing=Listing.of(samples, root),
    )


# --------------------------------------------------------------------------- steps
def _read_masks(
    pool: ThreadPoolExecutor,
    order: Sequence[Sample],
    data_cfg: DataConfig,
    masks: dict[str, Any],
    sample: int,
    infer_classes: bool,
) -> _Masks:
    """The first ``sample`` pairs of ``order`` (pixels read) and the mask mapping their values
    call for; while that mapping finds no foreground, the next masks are read, ``sample`` at a
    time, until one has some or none is left."""
    colors = bool(data_cfg.mask_colors)
    pairs = list(pool.map(lambda s: read_pair(s, colors=colors), order[:sample]))
    rest = order[sample:]
    while True:
        histogram = mask_histogram(pairs)
        resolved = resolve_mask_mode(data_cfg, histogram, masks=masks, infer_classes=infer_classes)
        mapper, mode, updates, reason, error = resolved
        resolved_cfg = data_cfg.model_copy(update={k.split(".")[1]: v for k, v in updates.items()})
        fractions, empty = _balance(pairs, mapper, resolved_cfg) if mapper else ({}, [])
        found = any(f > 0 for f in list(fractions.values())[1:])
        if (mapper is None and not no_foreground(histogram, data_cfg)) or found or not rest:
            return _Masks(
                pairs, histogram, mapper, mode, updates, reason, error, resolved_cfg,
                fractions, empty, found,
            )  # fmt: skip
        more, rest = rest[: max(sample, 1)], rest[max(sample, 1) :]
        pairs += pool.map(lambda s: read_pair(s, image=False, colors=colors), more)


def _suspicious(
    root: Path, samples: Sequence[Sample], decided: _Masks, data_cfg: DataConfig
) -> list[tuple[str, str]]:
    """``(kind, text)`` of what is usable but likely wrong: slices of volumes split apart,
    masks with no foreground, constant images."""
    suspicious = [
        ("empty mask", f"{_rel(root, p)}: empty mask (all background)") for p in decided.empty
    ]
    suspicious += [
        (
            "constant image",
            f"{_rel(root, p.sample.image)}: constant image (every pixel {p.constant})",
        )
        for p in decided.pairs
        if p.constant is not None
    ]
    if data_cfg.group_by is None and data_cfg.split_ids is None:  # slices of one volume leak
        slices = slice_groups_hint([s.key for s in samples])
        suspicious[:0] = [("slices of volumes", f"warning: {slices}")] if slices else []
    return suspicious


def _rename_root(problems: Problems, root: str, shown: str) -> None:
    """Name ``shown`` (a URI) instead of its local mirror ``root`` in ``problems``."""
    problems.label = str(problems.root).replace(root, shown, 1)
    problems.items = [(kind, text.replace(root, shown)) for kind, text in problems.items]


def _add_intensity(images: dict[str, Any], pairs: Sequence[Pair], data_cfg: DataConfig) -> Any:
    """Add the sampled images' intensity statistics to ``images``; returns
    ``data.intensity_range`` with ``auto`` resolved from them."""
    images.update(intensity_means(pairs))
    images.update(summarise_bands([p.bands for p in pairs if p.bands]))
    intensity_range = resolve_intensity_range(data_cfg.intensity_range, images)
    images.update(mapped_mean_std([p.bands for p in pairs if p.bands], intensity_range))
    return intensity_range


def _warning(mode: str | None, updates: dict[str, Any], reason: str) -> str | None:
    """What ``auto`` chose that a user should know of: in-between mask values read as binary."""
    if mode == "threshold" and updates and reason.startswith("near-binary"):
        return f"masks are {reason}; set data.mask_mode and data.mask_threshold to choose"
    return None


def _mapping(mapper: MaskMapper, histogram: dict[int, int], data_cfg: DataConfig) -> dict:
    values = np.array([sorted(histogram)], dtype=np.int64)
    classes = mapper(values, "k")[0].tolist()
    out: dict[int, str] = {}
    for value, cls in zip(values[0].tolist(), classes, strict=True):
        if mapper.mode == "trimap" and value == 3 and mapper.trimap_uncertain == "random":
            out[value] = "background or foreground (seeded per image)"
        else:
            out[value] = "ignored" if cls == mapper.ignore_index else data_cfg.classes[cls]
    return out


def _balance(
    pairs: Sequence[Pair], mapper: MaskMapper, data_cfg: DataConfig
) -> tuple[dict[str, float], list[str]]:
    """Class fractions over the labelled sampled pixels, and the masks with no foreground."""
    totals = np.zeros(len(data_cfg.classes), dtype=np.int64)
    empty = []
    for p in pairs:
        if p.values is None or p.counts is None:
            continue
        classes = mapper(p.values[None], p.sample.key)[0]
        labelled = classes != mapper.ignore_index
        per = np.bincount(classes[labelled], p.counts[labelled], minlength=len(totals))
        totals += per.astype(np.int64)
        if not per[1:].any():
            empty.append(p.sample.mask or p.sample.image)
    n = int(totals.sum())
    if not n:
        return {}, empty
    return {c: float(t) / n for c, t in zip(data_cfg.classes, totals, strict=True)}, empty


def _rel(root: Path, path: str | Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
