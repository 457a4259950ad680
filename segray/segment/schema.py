"""The output schema of bulk segmentation: one row per input image, in every Parquet file of
``OUTPUT/parquet/``. The README's table is `schema_markdown()` (a test keeps them equal)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["METRIC_COLUMNS", "OUTPUT_SCHEMA", "empty_row", "schema_markdown"]


_COLUMNS: list[tuple[str, pa.DataType, bool, str]] = [
    (
        "image_id",
        pa.string(),
        False,
        "stable id: path relative to the input folder, "
        "`shard.tar/member`, or `file.parquet/<id or row index>`",
    ),
    ("source", pa.string(), False, "the file that holds the image (image, tar or Parquet file)"),
    ("status", pa.string(), False, "`ok` or `error`"),
    ("error", pa.string(), True, "one-line reason when status is `error`, else null"),
    ("width", pa.int32(), True, "image width in pixels (after EXIF rotation); null on error"),
    ("height", pa.int32(), True, "image height in pixels; null on error"),
    (
        "mask_png",
        pa.binary(),
        True,
        "predicted mask at the image's resolution: 8-bit palette "
        "PNG whose pixel values are class indices (binary: 0 / 1); null on error",
    ),
    (
        "foreground_fraction",
        pa.float32(),
        True,
        "fraction of pixels predicted as any class but background",
    ),
    (
        "class_fraction",
        pa.list_(pa.float32()),
        True,
        "fraction of pixels per class 0..K-1 (binary: [background, foreground])",
    ),
    ("mean_confidence", pa.float32(), True, "mean over pixels of the winning class's probability"),
    (
        "uncertain_fraction",
        pa.float32(),
        True,
        "fraction of pixels whose (winning) probability "
        "lies in [segment.uncertain_low, segment.uncertain_high] (default 0.3-0.7)",
    ),
    (
        "num_components",
        pa.int32(),
        True,
        "8-connected components of the predicted mask, summed over the non-background classes",
    ),
    (
        "ensemble_disagreement",
        pa.float32(),
        True,
        "ensemble checkpoints: mean over pixels of the standard deviation of the members' "
        "probabilities (of the foreground; multi-class: of the ensemble's argmax class), a "
        "per-image uncertainty for review; null for a single model",
    ),
    (
        "gt_mask",
        pa.string(),
        True,
        "`--masks`: the ground-truth file matched to this image, else null",
    ),
    (
        "gt_error",
        pa.string(),
        True,
        "why a matched ground-truth mask gave no metrics (unreadable, "
        "wrong size, bad values), else null",
    ),
    (
        "gt_foreground_fraction",
        pa.float32(),
        True,
        "`--masks`: fraction of the ground truth's valid pixels of any class but background "
        "(0: an image without foreground); null without metrics",
    ),
    (
        "dice",
        pa.float32(),
        True,
        "`--masks`: Dice of the prediction (binary: foreground; multi-class: mean over "
        "classes 1..K-1 present in the ground truth or the prediction); null without ground "
        "truth, and where undefined: no foreground in either (never a vacuous 1.0)",
    ),
    ("iou", pa.float32(), True, "`--masks`: IoU, as dice"),
    (
        "precision",
        pa.float32(),
        True,
        "`--masks`: precision, as dice; null where nothing was predicted as foreground",
    ),
    (
        "recall",
        pa.float32(),
        True,
        "`--masks`: recall, as dice; null where the ground truth has no foreground",
    ),
    ("accuracy", pa.float32(), True, "`--masks`: pixel accuracy"),
    (
        "hd95",
        pa.float32(),
        True,
        "`--masks`: 95th-percentile Hausdorff distance between the predicted and true "
        "boundaries, in pixels (`segray.structure`; multi-class: as dice); the worst case, the "
        "image diagonal, where only one has foreground; null where neither has (as dice)",
    ),
    ("msd", pa.float32(), True, "`--masks`: mean surface distance in pixels, as hd95"),
    (
        "boundary_f1",
        pa.float32(),
        True,
        "`--masks`: F1 of boundary pixels matched within 2 pixels (0 where only one has "
        "foreground, null where neither has)",
    ),
    (
        "model_id",
        pa.string(),
        False,
        "content hash of the checkpoint (`segray.checkpoint.model_id`)",
    ),
    ("segray_version", pa.string(), False, "segray version that wrote the row"),
    (
        "run_id",
        pa.string(),
        False,
        "the `segray segment` run that segmented the image "
        "(a resumed run keeps earlier rows and their run ids)",
    ),
    ("segmented_at", pa.timestamp("ms", tz="UTC"), False, "when the image was segmented"),
]

#: The schema of every Parquet file of a segmentation output (``OUTPUT/parquet/*.parquet``).
OUTPUT_SCHEMA = pa.schema(
    [pa.field(n, t, nullable, metadata={"description": d}) for n, t, nullable, d in _COLUMNS]
)
METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "accuracy", "hd95", "msd", "boundary_f1")


def schema_markdown() -> str:
    """The README's table of `OUTPUT_SCHEMA` (column, type, description)."""
    lines = ["| column | type | description |", "| --- | --- | --- |"]
    for name, dtype, nullable, desc in _COLUMNS:
        kind = _type_name(dtype) + ("" if nullable else ", not null")
        lines.append(f"| `{name}` | {kind} | {desc} |")
    return "\n".join(lines)


def _type_name(dtype: pa.DataType) -> str:
    if pa.types.is_list(dtype):
        return f"list<{_type_name(dtype.value_type)}>"
    return {"float": "float32", "double": "float64"}.get(str(dtype), str(dtype))


def empty_row() -> dict[str, Any]:
    """A row of `OUTPUT_SCHEMA` with every column null (the caller fills it)."""
    return dict.fromkeys(OUTPUT_SCHEMA.names)
