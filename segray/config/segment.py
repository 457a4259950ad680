"""The ``segment`` section: bulk segmentation and the inference settings every consumer shares.

Tiles, precision, runtime, test-time augmentation, thresholds and post-processing: a
checkpoint's config carries them, so predict, evaluate, segment and export apply the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from segray.config.base import Section

__all__ = ["SegmentConfig"]


class SegmentConfig(Section):
    """Bulk segmentation with Ray Data."""

    batch_size: int = Field(8, ge=1, description="images per inference batch")
    concurrency: int = Field(1, ge=1, description="inference actors")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per inference actor")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per inference actor")
    tile_size: int = Field(512, ge=32, description="sliding-window tile side, pixels")
    tile_overlap: float = Field(0.25, ge=0, lt=0.9, description="tile overlap fraction")
    threshold: float = Field(0.5, gt=0, lt=1, description="binary probability threshold")
    # Inference settings shared by predict, evaluate, segment and export (`segray.inference`);
    # a checkpoint's config carries them, so every consumer of it applies the same.
    tta: Literal["none", "flip", "d4"] = Field(
        "none",
        description="test-time augmentation, averaged in probability space and inverted exactly: "
        "flip = identity, horizontal, vertical and both flips (nnU-Net's 2D mirroring); d4 = the "
        "8 rotations and reflections of the square (cost: 4x / 8x the forward passes)",
    )
    thresholds: list[float] | None = Field(
        None,
        description="per foreground class probability thresholds (binary: one value, which "
        "replaces `threshold`; K classes: K-1 values, a pixel whose winning class's probability "
        "is below that class's threshold becomes background, 0 = plain argmax); null: `threshold` / "
        "plain argmax",
    )
    min_component_px: int | list[int] = Field(
        0,
        description="post-processing: remove 8-connected foreground components smaller than "
        "this many pixels (0 = off); one value for every foreground class, or one per class",
    )
    fill_holes: bool | list[bool] = Field(
        False,
        description="post-processing: fill background holes enclosed by a class (after "
        "min_component_px); one value, or one per foreground class",
    )
    keep_largest: bool | list[bool] = Field(
        False,
        description="post-processing: keep only the largest 8-connected component of a class "
        "(ties: the first in raster order); one value, or one per foreground class",
    )
    max_pixels: int = Field(
        100_000_000, ge=1, description="larger images become error rows (decompression bombs)"
    )
    image_column: str = Field("image", description="Parquet inputs: column with image bytes")
    id_column: str | None = Field(None, description="Parquet inputs: column with image ids")
    shard_size: int = Field(
        256,
        ge=1,
        description="folder inputs: images per shard, the unit that is committed atomically and "
        "resumed (a tar or Parquet file is always one shard)",
    )
    io_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs reserved by each read / decode / write task; actors must leave at "
        "least this much free, or the pipeline never reads",
    )
    uncertain_low: float = Field(
        0.3, ge=0, le=1, description="uncertain_fraction: lower bound of the probability band"
    )
    uncertain_high: float = Field(
        0.7, ge=0, le=1, description="uncertain_fraction: upper bound of the probability band"
    )
    heap_reuse: bool = Field(
        True,
        description="glibc malloc settings on the inference actors, as train.heap_reuse: "
        "measured ~10% faster CPU inference in Ray's actor processes",
    )
    onednn_cache: int | None = Field(
        0,
        ge=0,
        description="oneDNN primitive-cache capacity of each inference actor (null: oneDNN's "
        "1024). Every new input shape (mixed image sizes, edge tiles) caches a compiled CPU "
        "kernel with its buffers, so a cache grows an actor's memory with the variety of "
        "sizes; 0, measured at the same speed, keeps it flat",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="inference precision of the actors, as train.precision (auto: bf16 where "
        "native, fp16 on older GPUs, else fp32)",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="NHWC memory format; auto = on CUDA and oneDNN CPUs (faster there)"
    )
    compile: bool = Field(
        False,
        description="torch.compile (inductor) the model in each actor: 1.39x the eager bf16 "
        "forward alone on CPU (benchmarks/cpu_runtime.py), but not faster end to end on mixed "
        "image sizes (measured: 38.2 vs 39.9 images/s over 4,000 images, warm compile cache), "
        "and each actor compiles first (~100 s cold on 2 cores). A compiled actor checks its "
        "first batch against eager and falls back to eager below 99.5% equal mask pixels",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 <= t < 1 for t in v)):
            raise ValueError("need one threshold per foreground class, each in [0, 1)")
        return v

    @field_validator("min_component_px")
    @classmethod
    def _min_px(cls, v: int | list[int]) -> int | list[int]:
        if any(n < 0 for n in (v if isinstance(v, list) else [v])) or v == []:
            raise ValueError("need one pixel count >= 0 per foreground class (0 = off)")
        return v

    @model_validator(mode="after")
    def _band(self) -> SegmentConfig:
        if self.uncertain_low >= self.uncertain_high:
            raise ValueError(
                f"uncertain_low {self.uncertain_low} must be below uncertain_high "
                f"{self.uncertain_high}"
            )
        if self.precision == "fp16" and self.gpus_per_actor == 0:
            raise ValueError(
                "precision 'fp16' needs gpus_per_actor > 0; on CPUs use 'bf16' or 'fp32'"
            )
        return self
