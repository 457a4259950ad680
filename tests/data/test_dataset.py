"""From a config to torch datasets: synthetic, folder and Oxford Pet sources."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segray.models  # noqa: F401  (ModelConfig's validator imports it; pay that at collection)
from segray.config import load_config
from segray.data import (
    DatasetError,
    ImageError,
    MaskMapper,
    Sample,
    SegmentationDataset,
    build_datasets,
    eval_transform,
    pet_samples,
    prepare_data,
)

TINY = {
    "data.synthetic.num": 12,
    "data.synthetic.size": 48,
    "data.image_size": 32,
    "model.name": "unet",
}


def config(**overrides):
    return load_config(None, {**TINY, **overrides})


def keys(dataset) -> list[str]:
    return [s.key for s in dataset.samples]


def test_synthetic_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = prepare_data(config(**{"data.root": "synth"}))  # relative: resolved on the driver
    assert cfg.data.root == str(tmp_path / "synth") and cfg.data.mask_mode == "threshold"
    datasets = build_datasets(cfg)
    assert list(datasets) == ["train", "val", "test"]
    all_keys = [k for ds in datasets.values() for k in keys(ds)]
    assert sorted(all_keys) == [f"{i:04d}" for i in range(12)]  # disjoint, covering
    assert len(datasets["train"]) > 0 and len(datasets["val"]) > 0
    image, mask = datasets["train"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32  # random 32 crop
    assert mask.shape == (32, 32) and mask.dtype == torch.int64
    image, mask = datasets["val"][0]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)  # eval: full resolution
    assert set(mask.unique().tolist()) <= {0, 1}
    assert 0 < mask.float().mean() < 1


def test_synthetic_default_root_is_the_cache(tmp_path):
    cfg = prepare_data(config())
    root = Path(cfg.data.root)
    assert root.parent == Path(os.environ["SEGRAY_CACHE"]) / "synth"
    assert (root / "synth.json").is_file()
    assert prepare_data(config()).data.root == cfg.data.root  # same parameters, same folder
    other = prepare_data(config(**{"data.synthetic.seed": 1}))
    assert other.data.root != cfg.data.root


def test_synthetic_mask_mode_follows_the_generator(tmp_path):
    binary = prepare_data(config(**{"data.root": str(tmp_path / "b"), "data.mask_mode": "index"}))
    assert binary.data.mask_mode == "threshold"  # 0/255 masks: 'index' would ignore all of 255
    multi = prepare_data(
        config(
            **{
                "data.root": str(tmp_path / "m"),
                "data.classes": ["bg", "a", "b"],
                "data.mask_mode": "index",
            }
        )
    )
    assert multi.data.mask_mode == "index"
    values = set()
    for ds in build_datasets(multi).values():
        for i in range(len(ds)):
            values |= set(ds[i][1].unique().tolist())
    assert values == {0, 1, 2}


def make_folder(root: Path, names, size=(20, 16)) -> None:
    """Random RGB images and 0/255 masks (``data.mask_mode: auto`` -> threshold)."""
    rng = np.random.default_rng(0)
    for name in names:
        for sub, shape, high in (("img", (size[1], size[0], 3), 256), ("lbl", size[::-1], 2)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, high, shape, dtype=np.uint8) * (255 if high == 2 else 1)
            Image.fromarray(pixels).save(root / sub / f"{name}.png")


def folder_config(root: Path, **overrides):
    """A prepared config of `make_folder`'s layout, train = a, b and val = c."""
    return prepare_data(
        config(
            **{
                "data.source": "folder",
                "data.root": str(root),
                "data.images_dir": "img",
                "data.masks_dir": "lbl",
                "data.split_ids": {"train": ["a", "b"], "val": ["c"]},
                **overrides,
            }
        )
    )


def test_folder_source_grayscale_with_explicit_splits(tmp_path):
    make_folder(tmp_path, ["a", "b", "c", "d"])
    cfg = folder_config(tmp_path, **{"data.eval_transform": "pad", "model.in_channels": 1})
    datasets = build_datasets(cfg)
    assert [keys(datasets[s]) for s in ("train", "val", "test")] == [["a", "b"], ["c"], []]
    image, mask = datasets["val"][0]
    assert image.shape == (1, 32, 32)
    assert (mask[16:] == cfg.data.ignore_index).all() and set(mask[:16, :20].unique().tolist()) <= {
        0,
        1,
    }


def test_broken_folder_fails_in_prepare_data(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "lbl" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 problem \(1 image without a mask\)"):
        prepare_data(
            config(
                **{
                    "data.source": "folder",
                    "data.root": str(tmp_path),
                    "data.images_dir": "img",
                    "data.masks_dir": "lbl",
                }
            )
        )


def test_item_errors_name_the_file(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    Image.new("L", (5, 5)).save(tmp_path / "lbl" / "b.png")
    (tmp_path / "img" / "a.png").write_bytes(b"")
    samples = [
        Sample(k, str(tmp_path / "img" / f"{k}.png"), str(tmp_path / "lbl" / f"{k}.png"))
        for k in ("a", "b")
    ]
    ds = SegmentationDataset(
        samples,
        channels=3,
        mapper=MaskMapper("threshold", 2),
        transform=eval_transform(size=32, mean=[0.5] * 3, std=[0.5] * 3),
    )
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'img' / 'a.png'}: empty file"):
        ds[0]
    with pytest.raises(ImageError, match=r"b\.png: image is 20x16 but its mask .*b\.png is 5x5"):
        ds[1]


# --------------------------------------------------------------------------- Oxford Pet
PET_NAMES = ["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2"]


def make_pet(root: Path) -> Path:
    """A tiny copy of the Oxford-IIIT Pet layout, as torchvision downloads it."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    for i, name in enumerate(PET_NAMES):
        Image.new("RGB", (24, 20), (10 * i, 80, 160)).save(base / "images" / f"{name}.jpg")
        trimap = np.full((20, 24), 2, np.uint8)
        trimap[5:15, 6:18] = 3
        trimap[7:13, 8:16] = 1
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
    (base / "annotations" / "trainval.txt").write_text(
        "# Image CLASS-ID SPECIES BREED ID\n"
        + "".join(f"{n} 1 1 1\n" for n in PET_NAMES[:3])
        + "\n"
    )
    (base / "annotations" / "test.txt").write_text(f"{PET_NAMES[3]} 2 2 1\n")
    return base


def test_pet_samples(tmp_path):
    base = make_pet(tmp_path)
    samples = pet_samples(tmp_path)
    assert [s.key for s in samples] == PET_NAMES[:3]
    assert samples[0].image == str(base / "images" / "Abyssinian_1.jpg")
    assert samples[0].mask == str(base / "annotations" / "trimaps" / "Abyssinian_1.png")
    assert pet_samples(base, "test") == [
        Sample(
            "beagle_2",
            str(base / "images/beagle_2.jpg"),
            str(base / "annotations/trimaps/beagle_2.png"),
        )
    ]
    with pytest.raises(ValueError, match="unknown Oxford Pet split"):
        pet_samples(tmp_path, "val")


def test_pet_missing_files_say_how_to_get_the_data(tmp_path):
    with pytest.raises(DatasetError, match=r"no Oxford-IIIT Pet annotations/ folder.*download_pet"):
        pet_samples(tmp_path)
    base = make_pet(tmp_path)
    (base / "images" / "beagle_1.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        pet_samples(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{base / 'images' / 'beagle_1.jpg'}: file not found (1 of the 6 files")
    assert "download_pet" in msg and "robots.ox.ac.uk" in msg


def test_pet_source_builds_binary_masks(tmp_path):
    make_pet(tmp_path)
    cfg = prepare_data(
        config(
            **{
                "data.source": "pet",
                "data.root": str(tmp_path),
                "data.mask_mode": "trimap",
                "data.trimap_uncertain": "ignore",
            }
        )
    )
    datasets = build_datasets(cfg)
    assert sorted(k for ds in datasets.values() for k in keys(ds)) == PET_NAMES[:3]
    ds = next(ds for ds in datasets.values() if len(ds) and ds is not datasets["train"])
    image, mask = ds[0]
    assert image.shape == (3, 20, 24)
    assert set(mask.unique().tolist()) == {0, 1, 255}
    assert (mask == 1).sum() == 6 * 8


def test_samples_per_image_repeats_train_only(tmp_path):
    make_folder(tmp_path, ["a", "b", "c"])
    cfg = folder_config(tmp_path, **{"data.samples_per_image": 3})
    datasets = build_datasets(cfg)
    assert keys(datasets["train"]) == ["a", "b"] * 3  # three random crops of each an epoch
    assert keys(datasets["val"]) == ["c"]  # every val image once
    first, again = datasets["train"][0][0], datasets["train"][2][0]  # both image "a"
    assert first.shape == again.shape == (3, 32, 32)
    with pytest.raises(Exception, match="samples_per_image"):
        config(**{"data.samples_per_image": 0})
