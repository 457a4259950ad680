"""The Oxford-IIIT Pet dataset (37 breeds, ~7,400 images with trimaps), in its published layout.

    ROOT/images/Abyssinian_100.jpg
    ROOT/annotations/trimaps/Abyssinian_100.png      1 = pet, 2 = background, 3 = border
    ROOT/annotations/trainval.txt, test.txt          "Abyssinian_100 1 1 1" per line

``ROOT`` may also be the folder above, as torchvision downloads to ``ROOT/oxford-iiit-pet``.
Use it with ``data.source: pet`` and ``data.mask_mode: trimap``.
"""

from __future__ import annotations

from pathlib import Path

from segray.data.folder import DatasetError, Sample

__all__ = ["PET_URL", "download_pet", "pet_samples"]

PET_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
_SUBFOLDER = "oxford-iiit-pet"  # where torchvision.datasets.OxfordIIITPet puts the files
_SPLITS = ("trainval", "test")


def _manual(root: Path) -> str:
    return f"download images.tar.gz and annotations.tar.gz from {PET_URL}, unpack both into {root}"


def _how_to_get(root: Path) -> str:
    return f"get the data with segray.data.download_pet({str(root)!r}), or {_manual(root)}"


def _base(root: str | Path) -> Path:
    """``root`` itself or ``root/oxford-iiit-pet``, whichever holds ``annotations/``."""
    root = Path(root).expanduser().absolute()
    for base in (root, root / _SUBFOLDER):
        if (base / "annotations").is_dir():
            return base
    raise DatasetError(f"{root}: no Oxford-IIIT Pet annotations/ folder here; {_how_to_get(root)}")


def pet_samples(root: str | Path, split: str = "trainval") -> list[Sample]:
    """The samples of the official ``trainval`` or ``test`` list, sorted by key (image name)."""
    if split not in _SPLITS:
        raise ValueError(f"unknown Oxford Pet split {split!r}; valid: {', '.join(_SPLITS)}")
    base = _base(root)
    listing = base / "annotations" / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing}: file not found; {_how_to_get(base)}")
    names = sorted(
        {
            line.split()[0]
            for line in listing.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        }
    )
    samples = [
        Sample(
            name,
            str(base / "images" / f"{name}.jpg"),
            str(base / "annotations" / "trimaps" / f"{name}.png"),
        )
        for name in names
    ]
    missing = [p for s in samples for p in (s.image, s.mask) if not Path(p).is_file()]
    if missing:
        raise DatasetError(
            f"{missing[0]}: file not found ({len(missing)} of the {2 * len(samples)} files "
            f"listed in {listing.name} are missing); {_how_to_get(base)}"
        )
    return samples


def download_pet(root: str | Path) -> Path:
    """Download both splits with torchvision into ``root/oxford-iiit-pet``; returns that folder."""
    from torchvision.datasets import OxfordIIITPet

    root = Path(root).expanduser().absolute()
    try:
        for split in _SPLITS:
            OxfordIIITPet(str(root), split=split, target_types="segmentation", download=True)
    except OSError as e:  # URLError, socket errors and timeouts are OSErrors
        raise RuntimeError(
            f"cannot download Oxford-IIIT Pet ({' '.join(str(e).split())}): no network? "
            f"{_manual(root / _SUBFOLDER)}"
        ) from None
    return root / _SUBFOLDER
