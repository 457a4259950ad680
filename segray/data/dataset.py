"""From the data config to train/val/test torch datasets.

cfg = prepare_data(cfg)            # on the driver, once: absolute root, synthetic data made,
                                   # dataset checked, data.mask_mode: auto resolved
datasets = build_datasets(cfg)     # on every worker: {"train": ..., "val": ..., "test": ...}
image, mask = datasets["train"][0] # (C, H, W) float32, (H, W) int64

A URI ``data.root`` (``s3://...``) stays a URI in the config; every reader gets its local
mirror from `segray.data.remote.dataset_root`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segray.config import Config, apply_overrides
from segray.data.folder import Sample
from segray.data.inspect import DEFAULT_SAMPLE, Fingerprint, fingerprint
from segray.data.io import ImageError, decode_image, image_size
from segray.data.masks import MaskMapper
from segray.data.remote import cache_dir, dataset_root, is_remote, shown_root
from segray.data.samples import Listing, list_samples
from segray.data.split import data_splits
from segray.data.synth import generate
from segray.data.transforms import sample_seed, transforms_from_config

__all__ = [
    "SegmentationDataset",
    "build_datasets",
    "cache_dir",
    "dataset_root",
    "inspect_data",
    "list_samples",
    "prepare_data",
    "prepared_with",
]

PairFn = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Decodes, maps and transforms one (image, mask) pair per item; errors name the file.

    With ``seed`` (training), an item ``(epoch, i)`` is augmented with
    ``sample_seed(seed, epoch, i)`` (`segray.engine.EpochSampler` yields such items), so the
    augmentation depends on (seed, epoch, index) only; a plain ``i`` uses the transform as is.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        channels: int,
        mapper: MaskMapper,
        transform: PairFn,
        seed: int | None = None,
        intensity_range: object = None,
    ) -> None:
        self.samples = list(samples)
        self.channels = channels
        self.intensity_range = intensity_range  # data.intensity_range (segray.data.intensity)
        self.mapper = mapper
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def image_size(self, i: int) -> tuple[int, int]:
        """``(width, height)`` of sample ``i``'s image from its header (EXIF-rotated)."""
        return image_size(self.samples[i].image)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (C, H, W) float32, mask (H, W) int64)`` of sample ``i`` (``item`` is ``i``
        or ``(epoch, i)``)."""
        epoch, i = item if isinstance(item, tuple) else (None, item)
        sample = self.samples[i]
        if sample.mask is None:
            raise ImageError(f"{sample.image}: no mask for this image")
        image = decode_image(
            sample.image, channels=self.channels, intensity_range=self.intensity_range
        )
        target = self.mapper.read(sample.mask, sample.key, name=sample.mask)
        if image.shape[:2] != target.shape:
            raise ImageError(
                f"{sample.image}: image is {image.shape[1]}x{image.shape[0]} but its mask "
                f"{sample.mask} is {target.shape[1]}x{target.shape[0]}"
            )
        if epoch is None or self.seed is None:
            return self.transform(image, target)
        return self.transform(image, target, seed=sample_seed(self.seed, epoch, i))


def prepare_data(cfg: Config) -> Config:
    """Run once on the driver before any worker starts; returns the config workers should use.

    A local ``data.root`` becomes absolute (workers run in other folders); a URI stays as it
    is (each node mirrors it, `segray.data.remote`; the driver's mirror is checked here). For
    ``synthetic`` the dataset is generated (or found complete) in ``data.root`` or the cache,
    that folder becomes ``data.root``, and ``data.mask_mode`` follows the generator's
    convention: ``threshold`` for 2 classes (0/255 masks), ``index`` for more. Every dataset is
    then fingerprinted (`segray.data.inspect`): a broken one (unmatched, unreadable or
    size-mismatched files, mask values no mode fits, no foreground in any mask) fails here, in
    one line, and ``data.mask_mode: auto`` becomes the concrete mode its mask values call for.
    """
    return inspect_data(cfg)[0]


def inspect_data(
    cfg: Config, *, echo: bool = False, strict: bool = True, sample: int = DEFAULT_SAMPLE
) -> tuple[Config, Fingerprint]:
    """`prepare_data` that also returns the dataset's `Fingerprint` (for ``fingerprint.json``).

    ``echo`` prints its one-line summary; ``strict=False`` returns an unusable dataset's
    fingerprint instead of raising (`Fingerprint.raise_if_unusable`); ``sample``: pairs whose
    pixels are read.
    """
    data = cfg.data
    root = dataset_root(data)  # a URI root is mirrored here, once
    updates: dict[str, object] = {"data.root": data.root if is_remote(data.root) else str(root)}
    if data.source == "synthetic":
        s = data.synthetic
        generate(root, num=s.num, size=s.size, num_classes=len(data.classes), seed=s.seed)
        updates["data.mask_mode"] = "threshold" if len(data.classes) == 2 else "index"
    prepared = apply_overrides(cfg, updates)
    fp = fingerprint(prepared.data, sample=sample, root=root, infer_classes=True)
    if strict:
        fp.raise_if_unusable()
        _check_bands(fp, cfg.model.in_channels)
    if fp.updates:
        prepared = apply_overrides(prepared, fp.updates)
    if fp.intensity_range not in ("auto", prepared.data.intensity_range):
        # high-bit-depth images: auto becomes the dataset's percentiles, saved with the config
        prepared = apply_overrides(prepared, {"data.intensity_range": fp.intensity_range})
    if echo:
        print(fp.summary(), flush=True)
    return prepared, fp


def prepared_with(cfg: Config, fp: Fingerprint | None) -> bool:
    """Whether ``cfg`` is `inspect_data`'s config for the dataset ``fp`` fingerprinted (its
    root, source and resolved reading), so that a caller holding both need not inspect again."""
    if fp is None or fp.listing is None:
        return False
    shown = shown_root(cfg.data, dataset_root(cfg.data))
    same = (fp.root, fp.source) == (shown, cfg.data.source)
    resolved = cfg.data.mask_mode == fp.mask_mode and fp.intensity_range in (
        "auto",
        cfg.data.intensity_range,
    )
    return same and resolved


def _check_bands(fp: Fingerprint, in_channels: int) -> None:
    """A one-line error when the images' data bands cannot feed ``model.in_channels``
    (gray <-> RGB converts; a 4th band that is data would otherwise be read as alpha)."""
    from segray.data.folder import DatasetError

    bands = fp.images.get("bands")
    if bands is None or bands == in_channels or {bands, in_channels} == {1, 3}:
        return
    raise DatasetError(
        f"{fp.root}: images have {bands} data bands but model.in_channels={in_channels}: "
        f"set model.in_channels={bands} (segray auto derives it)"
    )


def build_datasets(cfg: Config, listing: Listing | None = None) -> dict[str, SegmentationDataset]:
    """``{"train", "val", "test"}`` datasets (a split may be empty) of a prepared config.

    Splits come from ``data.split_ids`` if set, else the exact hash-order cut by ``data.split``,
    ``data.split_seed`` and ``data.group_by`` (`segray.data.split`), then the cross-validation fold if ``data.fold`` is set; train gets the training augmentation (each image
    ``data.samples_per_image`` times an epoch), val and test the eval one. ``listing``: the
    driver's (`segray.data.samples.Listing`), so that workers do not list the dataset again.
    """
    data = cfg.data
    samples = list_samples(data, check=False, listing=listing)  # checked on the driver
    splits = data_splits(samples, data)
    train_fn, eval_fn = transforms_from_config(data, cfg.model.in_channels)
    mapper = MaskMapper.from_config(data)
    return {
        name: SegmentationDataset(
            list(split) * (data.samples_per_image if name == "train" else 1),
            channels=cfg.model.in_channels,
            mapper=mapper,
            transform=train_fn if name == "train" else eval_fn,
            seed=cfg.train.seed if name == "train" else None,
            intensity_range=data.intensity_range,
        )
        for name, split in splits.items()
    }
