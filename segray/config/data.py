"""The ``data`` section: where images and masks come from, how masks map to classes, splits,
augmentation and intensities; and the parser of its ``intensity_range`` value (shared with
`segray.data.intensity`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from segray.config.base import Section, optional

__all__ = ["DataConfig", "SynthConfig", "intensity_ranges"]


# --------------------------------------------------------------------------- values
def intensity_ranges(value: Any) -> list[tuple[float, float]] | None:
    """``data.intensity_range`` as ``[(lo, hi), ...]`` (one pair, or one per band); None for
    ``type`` and for an unresolved ``auto`` (both scale by the value type)."""
    if value is None or isinstance(value, str):
        if value not in (None, "auto", "type"):
            raise ValueError(f"data.intensity_range must be auto, type or [lo, hi], got {value!r}")
        return None
    pairs = [value] if value and not isinstance(value[0], Sequence) else list(value)
    out = []
    for pair in pairs:
        if len(pair) != 2 or not float(pair[0]) < float(pair[1]):
            raise ValueError(f"data.intensity_range needs [lo, hi] with lo < hi, got {value!r}")
        out.append((float(pair[0]), float(pair[1])))
    return out


# --------------------------------------------------------------------------- sections
class SynthConfig(Section):
    """The built-in synthetic dataset (``data.source: synthetic``); classes come from data.classes."""

    num: int = Field(64, ge=4, description="number of image/mask pairs to generate")
    size: int = Field(96, ge=32, le=4096, description="side of the square images, pixels")
    seed: int = Field(0, description="generator seed: same seed, same pixels")


class DataConfig(Section):
    """Where images and masks come from, how masks map to classes, splits and augmentation."""

    source: Literal["synthetic", "folder", "pet"] = Field(
        "synthetic",
        description="synthetic: generated on first use; folder: ROOT/images + ROOT/masks matched "
        "by stem; pet: the Oxford-IIIT Pet layout (images/, annotations/trimaps/)",
    )
    root: str | None = optional(
        description="dataset root (any relative path is resolved against the working directory "
        "before workers start); synthetic: where to generate (default: a cache dir)",
    )
    images_dir: str = Field("images", description="folder source: image folder under root")
    masks_dir: str = Field("masks", description="folder source: mask folder under root")
    classes: list[str] = Field(
        ["background", "foreground"],
        description="class names, background first; 2 names = binary (one sigmoid logit)",
    )
    mask_suffix: str | None = optional(
        description="folder source: mask name = image name + this suffix (e.g. _mask); "
        "x_mask and x_segmentation are matched without it",
    )
    mask_mode: Literal["auto", "threshold", "index", "values", "trimap", "colors"] = Field(
        "auto",
        description="auto: chosen from the dataset's mask values before training (0/1, 0/255 "
        "and near-binary 0/255 with < 1% in-between edge pixels, 0..K-1, Pet trimaps, "
        "mask_colors; see `segray inspect`); threshold: value > mask_threshold is foreground; "
        "index: pixel value is the class index; values: mask_values maps pixel values to "
        "classes; trimap: Oxford Pet; colors: mask_colors maps colours to classes",
    )
    mask_threshold: int = Field(127, ge=0, le=65534, description="threshold mode cut-off")
    mask_values: dict[int, int] | None = optional(
        description="values mode: pixel value -> class index; other values are ignored"
    )
    mask_colors: dict[str, int] | None = optional(
        description="colour masks: colour ('#rrggbb' or 'r,g,b') -> class index, e.g. "
        "{'#000000': 0, '#ff0000': 1}; every colour in a mask must be listed (mask_mode: "
        "auto or colors)",
    )
    trimap_uncertain: Literal["foreground", "ignore", "random"] = Field(
        "foreground",
        description="trimap class 3 (border): foreground, ignored, or a seeded coin per image",
    )
    ignore_index: int = Field(255, ge=0, description="target value of pixels that never count")
    split: list[float] = Field(
        [0.7, 0.15, 0.15],
        description="train/val/test fractions: stems (or groups) in a seeded hash order, cut "
        "exactly at these fractions (`segray.data.split`); every run lists them in splits.json",
    )
    split_seed: int = Field(0, description="seed of the stem-hash order of the split")
    split_ids: dict[Literal["train", "val", "test"], list[str]] | None = optional(
        description="explicit stems per split; overrides `split` when set"
    )
    folds: int | None = optional(
        ge=2,
        description="k-fold cross-validation (`segray cv` sets it): train + val of the split "
        "above are dealt into this many folds; test stays held out",
    )
    fold: int | None = optional(
        ge=0, description="with `folds`: the fold used for validation, the rest train"
    )
    group_by: str | None = optional(
        description="regex over file stems: stems with the same match (its first group if it "
        "has one) stay in one split (train, val or test) and one fold, e.g. '^(case_\\d+)' "
        "keeps a volume's slices together",
    )
    image_size: int = Field(256, ge=32, description="train crop/resize side; eval resize side")
    train_transform: Literal["random_crop", "resize"] = Field(
        "random_crop", description="how training images reach image_size"
    )
    eval_transform: Literal["none", "resize", "pad"] = Field(
        "none",
        description="none: full resolution; resize: to image_size; pad: up to image_size with "
        "ignored mask pixels",
    )
    hflip: float = Field(0.5, ge=0, le=1, description="p of a horizontal flip (train)")
    vflip: float = Field(0.0, ge=0, le=1, description="p of a vertical flip (train)")
    rotate90: float = Field(0.0, ge=0, le=1, description="p of a random 90-degree rotation")
    brightness_contrast: float = Field(0.2, ge=0, le=1, description="p of brightness/contrast")
    intensity_range: Literal["auto", "type"] | list[float] | list[list[float]] = Field(
        "auto",
        description="how image values map to the network's 0..255 before normalisation: type "
        "= by the value type's range (16 bits / 257, floats as [0, 1]); [lo, hi] (or one per "
        "band) = lo..hi linearly, clipped; auto = the dataset's 0.5/99.5 percentiles per band "
        "when images hold more than 8 bits, else type (resolved from the fingerprint and saved "
        "with every checkpoint; segray.data.intensity)",
    )
    mean: list[float] | None = optional(
        description="per-channel normalisation mean in [0, 1]; default ImageNet for 3 "
        "channels, 0.5 for 1, ImageNet's channel average (0.449) for N",
    )
    std: list[float] | None = optional(description="per-channel normalisation std")
    batch_size: int = Field(8, ge=1, description="training batch size per worker")
    samples_per_image: int = Field(
        1,
        ge=1,
        description="training samples (random crops) per image per epoch: few large images "
        "make short epochs, whose evaluation and checkpoint then dominate",
    )
    eval_batch_size: int | None = optional(ge=1, description="default: batch_size")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per worker")
    synthetic: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("need at least 2 class names, background first (2 = binary)")
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @field_validator("mask_colors")
    @classmethod
    def _colors(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is None:
            return v
        out: dict[str, int] = {}
        for colour, index in v.items():
            text = str(colour).strip().strip("()[]")
            parts = [p for p in re.split(r"[,\s]+", text) if p]
            if re.fullmatch(r"#?[0-9a-fA-F]{6}", text):
                name = "#" + text.lstrip("#").lower()
            elif len(parts) == 3 and all(p.isdigit() and int(p) < 256 for p in parts):
                name = "#" + "".join(f"{int(p):02x}" for p in parts)
            else:
                raise ValueError(f"colour {colour!r}: expected '#rrggbb' or 'r,g,b' (0-255 each)")
            if name in out:
                raise ValueError(f"colour {colour!r} is listed twice (as {name})")
            out[name] = index
        return out

    @field_validator("split")
    @classmethod
    def _split(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(f < 0 for f in v) or v[0] <= 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError("need 3 fractions [train, val, test], >= 0, train > 0, summing to 1")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _norm(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(x < 0 for x in v)):
            raise ValueError("need non-negative values: one, or one per input channel")
        return v

    @field_validator("intensity_range")
    @classmethod
    def _intensity_range(cls, v: Any) -> Any:
        intensity_ranges(v)  # [lo, hi] with lo < hi, or one such pair per band
        return v

    @model_validator(mode="after")
    def _modes(self) -> DataConfig:
        if self.mask_mode == "values" and not self.mask_values:
            raise ValueError("mask_mode 'values' needs data.mask_values (pixel value -> class)")
        if (self.mask_mode == "colors") != bool(self.mask_colors) and self.mask_mode != "auto":
            raise ValueError(
                "data.mask_colors is read by mask_mode 'colors' (or auto) only"
                if self.mask_colors
                else "mask_mode 'colors' needs data.mask_colors (colour -> class)"
            )
        if self.source == "folder" and not self.root:
            raise ValueError("source 'folder' needs data.root (a folder with images/ and masks/)")
        if self.source == "pet" and not self.root:
            raise ValueError("source 'pet' needs data.root (the Oxford-IIIT Pet folder)")
        if self.std is not None and any(x == 0 for x in self.std):
            raise ValueError("data.std must be > 0")
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"data.fold {self.fold} needs data.folds > {self.fold}")
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as e:
                raise ValueError(f"data.group_by {self.group_by!r} is not a regex: {e}") from None
        return self
