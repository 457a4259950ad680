"""The samples of the configured source: image/mask pairs of a folder, the Oxford Pet layout
or the synthetic dataset, sorted by key.

    samples = list_samples(cfg.data)                  # file headers checked, errors raised
    samples, problems = list_pairs(cfg.data, root)    # no header read; problems recorded
"""

from __future__ import annotations

from pathlib import Path

from segray.config import DataConfig
from segray.data.folder import Problems, Sample, find_pairs, pair_files
from segray.data.pet import pet_samples
from segray.data.remote import dataset_root, renamed

__all__ = ["list_pairs", "list_samples"]


def list_samples(data_cfg: DataConfig, *, check: bool = True) -> list[Sample]:
    """Every sample of the configured source, sorted by key (``check``: read file headers)."""
    root = dataset_root(data_cfg)
    with renamed(data_cfg.root, root):
        if data_cfg.source == "pet":
            return pet_samples(root, "trainval")
        if data_cfg.source == "synthetic":
            return find_pairs(root / "images", root / "masks", check=check)
        return find_pairs(
            root / data_cfg.images_dir,
            root / data_cfg.masks_dir,
            check=check,
            mask_suffix=data_cfg.mask_suffix,
        )


def list_pairs(data_cfg: DataConfig, root: Path) -> tuple[list[Sample], Problems]:
    """The samples under the local ``root`` of ``data_cfg``'s dataset, and the pairing problems
    (unmatched files), recorded instead of raised."""
    if data_cfg.source == "pet":
        return pet_samples(root, "trainval"), Problems(root)
    if data_cfg.source == "synthetic":
        return pair_files(root / "images", root / "masks")
    return pair_files(
        root / data_cfg.images_dir, root / data_cfg.masks_dir, mask_suffix=data_cfg.mask_suffix
    )
