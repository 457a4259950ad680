"""Datasets (folder pairs, Oxford Pet trimaps, synthetic), splits, augmentation and image I/O.

Read in data-flow order: `pillow` (open a file) -> `intensity` (bands, value ranges) -> `io`
(decode images and masks) -> `remote` (``data.root`` -> a local folder, mirroring a URI) ->
`folder` / `pet` / `synth` -> `samples` (find samples) -> `masks` (raw values -> classes) ->
`scan` -> `inspect` (the dataset's fingerprint, `fingerprint_record`; chooses ``mask_mode:
auto``, `mask_mode`) -> `split` (train/val/test) -> `transforms` (augment, normalise) ->
`dataset` (torch datasets from the config).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segray.data.dataset import (
        SegmentationDataset,
        build_datasets,
        cache_dir,
        inspect_data,
        prepare_data,
        prepared_with,
    )
    from segray.data.folder import (
        MASK_SUFFIXES,
        DatasetError,
        Problems,
        Sample,
        find_pairs,
        list_images,
        pair_files,
    )
    from segray.data.inspect import Fingerprint, fingerprint
    from segray.data.io import (
        IMAGE_EXTENSIONS,
        Header,
        ImageError,
        decode_image,
        encode_png,
        image_size,
        read_header,
        read_mask,
    )
    from segray.data.masks import MaskMapper
    from segray.data.pet import download_pet, pet_samples
    from segray.data.remote import Mirror, dataset_root, is_remote, local_root, mirror, root_setting
    from segray.data.samples import Listing, list_samples, listed_once
    from segray.data.split import assign_folds, assign_splits, data_splits, split_samples
    from segray.data.synth import generate
    from segray.data.transforms import (
        default_norm,
        eval_transform,
        train_transform,
        transforms_from_config,
    )

# Public name -> submodule. Imported on first use, so that the light modules (io, folder,
# masks: all that Ray's decode and write tasks need) never pull in torch and albumentations.
_EXPORTS = {
    "dataset": [
        "SegmentationDataset",
        "build_datasets",
        "cache_dir",
        "inspect_data",
        "prepare_data",
        "prepared_with",
    ],
    "folder": [
        "MASK_SUFFIXES",
        "DatasetError",
        "Problems",
        "Sample",
        "find_pairs",
        "list_images",
        "pair_files",
    ],
    "inspect": ["Fingerprint", "fingerprint"],
    "io": [
        "IMAGE_EXTENSIONS",
        "Header",
        "ImageError",
        "decode_image",
        "encode_png",
        "image_size",
        "read_header",
        "read_mask",
    ],
    "masks": ["MaskMapper"],
    "samples": ["Listing", "list_samples", "listed_once"],
    "pet": ["download_pet", "pet_samples"],
    "remote": ["Mirror", "dataset_root", "is_remote", "local_root", "mirror", "root_setting"],
    "split": ["assign_folds", "assign_splits", "data_splits", "split_samples"],
    "synth": ["generate"],
    "transforms": ["default_norm", "eval_transform", "train_transform", "transforms_from_config"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "IMAGE_EXTENSIONS",
    "Listing",
    "MASK_SUFFIXES",
    "DatasetError",
    "Fingerprint",
    "Header",
    "ImageError",
    "MaskMapper",
    "Mirror",
    "Problems",
    "Sample",
    "SegmentationDataset",
    "assign_folds",
    "assign_splits",
    "build_datasets",
    "cache_dir",
    "data_splits",
    "dataset_root",
    "decode_image",
    "default_norm",
    "download_pet",
    "encode_png",
    "eval_transform",
    "find_pairs",
    "fingerprint",
    "generate",
    "image_size",
    "inspect_data",
    "is_remote",
    "list_images",
    "list_samples",
    "listed_once",
    "local_root",
    "mirror",
    "pair_files",
    "pet_samples",
    "prepare_data",
    "prepared_with",
    "read_header",
    "read_mask",
    "root_setting",
    "split_samples",
    "train_transform",
    "transforms_from_config",
]
