"""Datasets (folder pairs, Oxford Pet trimaps, synthetic), splits, augmentation and image I/O.

Read in data-flow order: `io` (decode files) -> `folder` / `pet` / `synth` (find samples) ->
`masks` (raw values -> classes) -> `split` (train/val/test) -> `transforms` (augment,
normalise) -> `dataset` (torch datasets from the config).
"""

from __future__ import annotations

from segray.data.dataset import (
    SegmentationDataset,
    build_datasets,
    cache_dir,
    list_samples,
    prepare_data,
)
from segray.data.folder import DatasetError, Sample, find_pairs, list_images
from segray.data.io import (
    IMAGE_EXTENSIONS,
    ImageError,
    decode_image,
    encode_png,
    image_size,
    read_mask,
)
from segray.data.masks import MaskMapper
from segray.data.pet import download_pet, pet_samples
from segray.data.split import assign_split, split_samples
from segray.data.synth import generate
from segray.data.transforms import (
    default_norm,
    eval_transform,
    train_transform,
    transforms_from_config,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "ImageError",
    "MaskMapper",
    "Sample",
    "SegmentationDataset",
    "assign_split",
    "build_datasets",
    "cache_dir",
    "decode_image",
    "default_norm",
    "download_pet",
    "encode_png",
    "eval_transform",
    "find_pairs",
    "generate",
    "image_size",
    "list_images",
    "list_samples",
    "pet_samples",
    "prepare_data",
    "read_mask",
    "split_samples",
    "train_transform",
    "transforms_from_config",
]
