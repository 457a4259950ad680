"""Decode and segment: raw bytes -> pixels (tasks), pixels -> mask PNG + statistics (actors).

    ds.map_batches(decode, fn_kwargs=...)            # PIL, EXIF, any mode -> model channels
    ds.map_batches(SegmentActor, **actor_options(seg))  # one model per actor, masks + stats

Nothing here imports torch at module level (the model is loaded inside the actors): Ray's
decode tasks import this module in fresh worker processes, often, and torch would add over a
second of CPU to each.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from ray.data import ActorPoolStrategy

from segray.cluster import heap_env, onednn_cache_env, run_remote
from segray.config import Config, SegmentConfig
from segray.data.io import ImageError, decode_image
from segray.data.masks import MaskMapper
from segray.segment.read import IMAGE_ROW
from segray.segment.schema import OUTPUT_SCHEMA, empty_row
from segray.version import __version__

__all__ = [
    "DECODED_SCHEMA",
    "STAGE_SCHEMA",
    "SegmentActor",
    "actor_options",
    "actor_precision",
    "decode",
    "encode_mask_png",
    "ground_truth_metrics",
    "local_checkpoint",
    "mask_stats",
]

_TRIM_EVERY_S = 30.0  # how often an actor returns freed heap memory to the OS


# --------------------------------------------------------------------------- decode
DECODED_SCHEMA = pa.schema(
    [
        ("_shard", pa.string()),
        ("_total", pa.int64()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("pixels", pa.large_binary()),
        ("gt_mask", pa.string()),
        ("gt_target", pa.large_binary()),
        ("gt_error", pa.string()),
    ]
)
# The actor's output: the output columns plus the shard bookkeeping.
STAGE_SCHEMA = pa.schema(
    [("_shard", pa.string()), ("_total", pa.int64())]
    + [f.with_nullable(True) for f in OUTPUT_SCHEMA]
)


def decode(
    batch: pa.Table,
    *,
    channels: int,
    max_pixels: int,
    mapper: MaskMapper | None,
    intensity_range: object = None,
) -> pa.Table:
    """Raw bytes -> (H, W, channels) uint8 pixels (bytes + size), values mapped by the
    checkpoint's ``data.intensity_range`` as in training; ground truth -> classes."""
    out = []
    for row in batch.to_pylist():
        rec = {k: row.get(k) for k in DECODED_SCHEMA.names}
        rec["error"] = row["read_error"]
        if row["_total"] == IMAGE_ROW and rec["error"] is None:
            try:
                image = decode_image(
                    row["data"],
                    channels=channels,
                    max_pixels=max_pixels,
                    name=row["image_id"],
                    intensity_range=intensity_range,
                )
                rec["height"], rec["width"] = image.shape[:2]
                rec["pixels"] = image.tobytes()
            except ImageError as e:
                rec["error"] = str(e)
            if rec["pixels"] is not None and row["gt_mask"] is not None and mapper is not None:
                rec["gt_target"], rec["gt_error"] = _target(
                    row, image.shape[:2], mapper, max_pixels
                )
        out.append(rec)
    return pa.Table.from_pylist(out, schema=DECODED_SCHEMA)


def _target(row: dict[str, Any], shape: tuple[int, ...], mapper: MaskMapper, max_pixels: int):
    name = row["gt_mask"]
    if row["gt_data"] is None:
        return None, f"{name}: cannot read ground-truth mask"
    try:
        target = mapper.read(row["gt_data"], Path(name).stem, name=name, max_pixels=max_pixels)
    except ImageError as e:
        return None, str(e)
    if target.shape != tuple(shape):
        return None, (
            f"{name}: ground truth is {target.shape[1]}x{target.shape[0]}, the image "
            f"{shape[1]}x{shape[0]}"
        )
    return target.astype(np.int32).tobytes(), None


# --------------------------------------------------------------------------- segment
def local_checkpoint(checkpoint: str) -> str:
    """A local checkpoint directory: the path itself, or a per-process copy of what inference
    needs from a URI (`segray.checkpoint.fetch_checkpoint`; loads torch)."""
    from segray.checkpoint import CheckpointError, fetch_checkpoint
    from segray.segment.plan import InputError

    try:
        return str(fetch_checkpoint(checkpoint))
    except CheckpointError as e:
        raise InputError(f"checkpoint {e}") from None


@functools.cache
def _libc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _release_memory() -> None:
    """Give freed heap pages back to the OS. Images of many sizes leave glibc's heap
    fragmented, and an actor that lives for millions of images would otherwise creep up
    (measured: +300 MB over 1,200 mixed-size images). Trimming after every batch costs ~15%
    throughput (the pages are faulted in again), so the actor trims every _TRIM_EVERY_S."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class SegmentActor:
    """One model per actor: decoded images in, output rows (mask PNG + statistics) out."""

    def __init__(self, *, checkpoint: str, config: dict[str, Any], model: str, run_id: str) -> None:
        import torch

        from segray.inference.segmenter import load_segmenter

        cfg = Config.from_dict(config)
        seg = cfg.segment
        torch.set_num_threads(max(1, int(seg.cpus_per_actor + 0.5)))  # the CPUs it reserved
        if seg.gpus_per_actor > 0 and not torch.cuda.is_available():
            raise RuntimeError(cuda_missing(seg))
        device = "cuda" if seg.gpus_per_actor > 0 else "cpu"
        # A single or an ensemble checkpoint; cfg's segment.* (TTA, thresholds, post-processing)
        self.segmenter = load_segmenter(
            local_checkpoint(checkpoint),
            config=cfg,
            device=device,
            model_id=model,
            precision=seg.precision,
            channels_last=seg.channels_last,
            compile=seg.compile,
        )
        self.unverified = self.segmenter.compiled
        self.cfg, self.model, self.run_id = cfg, model, run_id
        self.channels = self.segmenter.channels
        self.labels = max(2, self.segmenter.num_classes)
        self.trimmed = time.monotonic()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        now = datetime.now(timezone.utc)
        out = [self._row(r, now) for r in rows]
        todo = [i for i, r in enumerate(rows) if r["_total"] == IMAGE_ROW and r["error"] is None]
        images = [
            np.frombuffer(rows[i]["pixels"], np.uint8).reshape(
                rows[i]["height"], rows[i]["width"], self.channels
            )
            for i in todo
        ]
        if self.unverified and images:  # the parity gate of the compiled network
            self.unverified = False
            agreement = self.segmenter.verify_compiled(images[: self.segmenter.batch_size])
            print(
                f"segment actor: torch.compile masks equal eager on {agreement:.4%} of pixels: "
                + ("compiled" if self.segmenter.compiled else "below 99.5%, running eager"),
                flush=True,
            )
        # Each image's probabilities become its mask and statistics as soon as they are
        # ready, and are dropped then: one forward batch of them is held, not the whole batch.
        for k, proba, disagreement in self.segmenter.iter_batch_outputs(images):
            i = todo[k]
            out[i].update(self._result(rows[i], proba))
            out[i]["ensemble_disagreement"] = disagreement
            del proba
        table = pa.Table.from_pylist(out, schema=STAGE_SCHEMA)
        if time.monotonic() - self.trimmed > _TRIM_EVERY_S:
            del rows, images
            _release_memory()
            self.trimmed = time.monotonic()
        return table

    def _row(self, r: dict[str, Any], now: datetime) -> dict[str, Any]:
        row = empty_row()
        row.update(
            _shard=r["_shard"],
            _total=r["_total"],
            image_id=r["image_id"],
            source=r["source"],
            model_id=self.model,
            segray_version=__version__,
            run_id=self.run_id,
            segmented_at=now,
        )
        if r["_total"] == IMAGE_ROW and r["error"] is not None:
            row.update(status="error", error=r["error"])
        elif r["_total"] != IMAGE_ROW:  # a shard's end marker: why it is short, if it is
            row["error"] = r["error"]
        return row

    def _result(self, r: dict[str, Any], proba: np.ndarray) -> dict[str, Any]:
        seg = self.cfg.segment
        mask = self.segmenter.mask_from_proba(proba)
        res: dict[str, Any] = {
            "status": "ok",
            "width": r["width"],
            "height": r["height"],
            "mask_png": encode_mask_png(mask, self.labels),
            "gt_mask": r["gt_mask"],
            "gt_error": r["gt_error"],
            **mask_stats(proba, mask, low=seg.uncertain_low, high=seg.uncertain_high),
        }
        if r["gt_target"] is not None:
            target = np.frombuffer(r["gt_target"], np.int32).reshape(mask.shape)
            try:
                res.update(
                    ground_truth_metrics(
                        mask,
                        target,
                        num_classes=self.cfg.num_classes,
                        ignore_index=self.cfg.data.ignore_index,
                    )
                )
            except ValueError as e:
                res["gt_error"] = f"{r['gt_mask']}: {e}"
        return res


def actor_precision(seg: SegmentConfig, *, on_worker: bool = False) -> dict[str, Any]:
    """The precision the actors resolve (`segray.precision`): ``precision`` (never ``auto``
    once resolved), ``channels_last`` and a line for the log (``describe``).

    A GPU actor's ``auto`` is decided on its GPU (bf16 where native, else fp16). A driver
    without such a GPU resolves it with one tiny task on a GPU worker (``on_worker``, Ray
    running); else it returns the setting unresolved, with ``unresolved: True``.
    """
    device = "cuda" if seg.gpus_per_actor > 0 else "cpu"
    if device == "cuda" and not _cuda_here():
        if not on_worker:
            return {
                "precision": seg.precision,
                "channels_last": seg.channels_last,
                "unresolved": True,
                "describe": f"{seg.precision} on the actors' GPUs",
            }
        return run_remote(
            _resolved_precision,
            seg.precision,
            device,
            seg.channels_last,
            num_cpus=0,
            num_gpus=seg.gpus_per_actor,
        )
    return _resolved_precision(seg.precision, device, seg.channels_last)


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolved_precision(precision: str, device: str, channels_last: Any) -> dict[str, Any]:
    from segray.precision import resolve_precision

    resolved = resolve_precision(precision, device, channels_last)
    return {**resolved.record(), "describe": f"{resolved.describe()} on the actors' {device}"}


def cuda_missing(seg: SegmentConfig) -> str:
    return (
        f"segment.gpus_per_actor={seg.gpus_per_actor:g} but CUDA is not available where the "
        "actors run (no GPU, or a CPU-only torch): set segment.gpus_per_actor=0 to segment on "
        "CPUs, or run on nodes with GPUs and a CUDA build of torch"
    )


def actor_options(seg: SegmentConfig) -> dict[str, Any]:
    """Ray options of the inference actors: pool size, resources, environment."""
    return {
        "compute": ActorPoolStrategy(size=seg.concurrency),
        "num_cpus": seg.cpus_per_actor,
        "num_gpus": seg.gpus_per_actor,
        "runtime_env": {"env_vars": heap_env(seg.heap_reuse) | onednn_cache_env(seg.onednn_cache)},
    }


# --------------------------------------------------------------------------- per-image results
_PALETTE = [
    (0, 0, 0),
    (255, 255, 255),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
]


def encode_mask_png(mask: np.ndarray, num_labels: int) -> bytes:
    """(H, W) uint8 class indices -> palette PNG: the pixel values stay the class indices
    (``np.asarray(Image.open(...))`` returns them) while viewers show colours."""
    height, width = mask.shape
    img = Image.frombytes(
        "P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
    )
    colours = [_PALETTE[i] if i < len(_PALETTE) else _colour(i) for i in range(max(2, num_labels))]
    img.putpalette([c for rgb in colours for c in rgb])
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    h = hashlib.sha1(str(i).encode()).digest()
    return h[0], h[1], h[2]


def mask_stats(proba: np.ndarray, mask: np.ndarray, *, low: float, high: float) -> dict[str, Any]:
    """Statistics of one prediction: class fractions, confidence, uncertainty, components.

    ``proba`` is (H, W) P(foreground) for a binary model or (K, H, W); ``mask`` the (H, W)
    class map derived from it.
    """
    from scipy import ndimage

    if proba.ndim == 2:
        top = np.maximum(proba, 1.0 - proba)
        band = (proba >= low) & (proba <= high)
        labels = 2
    else:
        top = proba.max(axis=0)
        band = (top >= low) & (top <= high)
        labels = proba.shape[0]
    n = mask.size
    counts = np.bincount(mask.ravel(), minlength=labels)[:labels] / max(n, 1)
    structure = np.ones((3, 3), dtype=bool)
    components = sum(
        int(ndimage.label(mask == k, structure=structure)[1]) for k in range(1, labels)
    )
    return {
        "foreground_fraction": float(1.0 - counts[0]),
        "class_fraction": [float(c) for c in counts],
        "mean_confidence": float(top.mean()),
        "uncertain_fraction": float(band.mean()),
        "num_components": components,
    }


def ground_truth_metrics(
    mask: np.ndarray, target: np.ndarray, *, num_classes: int, ignore_index: int | None
) -> dict[str, float | None]:
    """``gt_foreground_fraction`` and the `METRIC_COLUMNS` of one (H, W) predicted class map
    against its ground truth, as output values: `segray.metrics.per_image_metrics` and
    `segray.structure.surface_metrics`, undefined values (NaN: e.g. Dice on an image with no
    foreground predicted or true) as null.

    Raises:
        ValueError: the ground truth holds values that are not class indices.
    """
    from segray.metrics import per_image_metrics  # torch: loaded only where metrics are made
    from segray.structure import surface_metrics

    kw = {"num_classes": num_classes, "ignore_index": ignore_index}
    scores = per_image_metrics(mask, target, **kw)
    scores.update(surface_metrics(mask, target, **kw))
    valid = target[target != ignore_index] if ignore_index is not None else target
    fraction = np.count_nonzero(valid) / valid.size if valid.size else None
    out: dict[str, float | None] = {"gt_foreground_fraction": fraction, **scores}
    return {k: None if v is None or np.isnan(v) else float(v) for k, v in out.items()}
