"""Augmentation presets: shapes, dtypes, exact mask values, shared geometry, ignore padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from segray.config import DataConfig
from segray.data.transforms import (
    default_norm,
    eval_transform,
    sample_seed,
    train_transform,
    transforms_from_config,
)

IGNORE = 255
RNG = np.random.default_rng(0)
NORM3 = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def random_pair(h: int, w: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    image = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = RNG.integers(0, classes, (h, w)).astype(np.int64)
    return image, mask


def position_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image channels hold (row, col, 0); the mask holds row * 1000 + col."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    return image, (rows * 1000 + cols).astype(np.int64)


def unnormalise(image: torch.Tensor) -> np.ndarray:
    """Inverse of NORM3, back to 0..255 integers, (H, W, C)."""
    return np.rint((image.numpy() * 0.5 + 0.5) * 255).astype(np.int64).transpose(1, 2, 0)


def test_default_norm():
    assert default_norm(3) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert default_norm(1) == ([0.5], [0.5])
    # N bands: ImageNet's channel average on each (the adapted pretrained stem expects it)
    assert default_norm(4) == ([0.449] * 4, [0.226] * 4)
    with pytest.raises(ValueError):
        default_norm(0)


@pytest.mark.parametrize("mode", ["random_crop", "resize"])
def test_train_shapes_dtypes_and_mask_values(mode):
    fn = train_transform(
        size=32,
        mode=mode,
        hflip=0.5,
        vflip=0.5,
        rotate90=0.5,
        brightness_contrast=0.5,
        ignore_index=IGNORE,
        **NORM3,
    )
    for h, w in ((45, 61), (20, 28)):
        image, mask = random_pair(h, w)
        for _ in range(5):
            x, y = fn(image, mask)
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert y.shape == (32, 32) and y.dtype == torch.int64
            assert set(y.unique().tolist()) <= {0, 1, 2, IGNORE}


def test_resize_keeps_mask_values_exact():
    # Nearest interpolation: no value between two classes ever appears.
    mask = np.zeros((37, 53), np.int64)
    mask[:, 20:] = 4
    mask[10:20, 30:40] = 9
    image = np.zeros((37, 53, 3), np.uint8)
    for fn in (
        train_transform(size=64, mode="resize", hflip=0, brightness_contrast=0, **NORM3),
        eval_transform(size=17, mode="resize", **NORM3),
    ):
        y = fn(image, mask)[1]
        assert set(y.unique().tolist()) == {0, 4, 9}


def test_random_crop_pads_small_images_with_ignore():
    fn = train_transform(size=32, hflip=0, brightness_contrast=0, ignore_index=IGNORE, **NORM3)
    image = np.full((10, 12, 3), 255, np.uint8)
    mask = np.ones((10, 12), np.int64)
    x, y = fn(image, mask)
    assert (y == 1).sum() == 120 and (y == IGNORE).sum() == 32 * 32 - 120
    assert ((x[0] == 1.0) == (y == 1)).all()  # image pixels exactly where mask pixels are
    assert (x[:, y == IGNORE] == -1.0).all()  # padded image: 0, normalised


def test_same_random_geometry_for_image_and_mask():
    fn = train_transform(
        size=24,
        hflip=0.5,
        vflip=0.5,
        rotate90=0.5,
        brightness_contrast=0,
        ignore_index=10**6,
        **NORM3,
    )
    image, mask = position_pair(50, 40)
    corners = set()
    for _ in range(20):
        x, y = fn(image, mask)
        pos = unnormalise(x)
        assert (pos[..., 0] == y.numpy() // 1000).all()
        assert (pos[..., 1] == y.numpy() % 1000).all()
        corners.add(int(y[0, 0]))
    assert len(corners) > 5  # the crop (and flips) really are random


def test_eval_pad_pads_with_ignore_and_never_crops():
    fn = eval_transform(size=32, mode="pad", ignore_index=IGNORE, **NORM3)
    image, mask = random_pair(20, 30)
    x, y = fn(image, mask)
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert (y[:20, :30].numpy() == mask).all()  # original at the top left
    assert (y[20:] == IGNORE).all() and (y[:, 30:] == IGNORE).all()
    x, y = fn(*random_pair(40, 33))
    assert x.shape == (3, 40, 33) and y.shape == (40, 33)


def test_eval_none_only_normalises():
    image, mask = random_pair(13, 17)
    x, y = eval_transform(size=32, mode="none", **NORM3)(image, mask)
    expected = (image.astype(np.float32) / 255 - 0.5) / 0.5
    assert np.allclose(x.numpy().transpose(1, 2, 0), expected, atol=1e-6)
    assert (y.numpy() == mask).all()


def test_grayscale_and_config():
    cfg = DataConfig(image_size=32, train_transform="resize", eval_transform="pad", mean=[0.2])
    train_fn, eval_fn = transforms_from_config(cfg, channels=1)
    image = np.full((16, 16, 1), 51, np.uint8)
    mask = np.zeros((16, 16), np.int64)
    x, _ = train_fn(image, mask)
    assert x.shape == (1, 32, 32)
    x, y = eval_fn(image, mask)
    assert x.shape == (1, 32, 32) and torch.allclose(x[0, 0, 0], torch.tensor(0.0), atol=1e-6)
    assert (y[16:] == cfg.ignore_index).all()
    train3, _ = transforms_from_config(cfg, channels=3)  # one mean value for every channel
    assert train3(random_pair(16, 16)[0], mask)[0].shape == (3, 32, 32)


def test_mismatched_sizes_and_bad_modes():
    fn = eval_transform(size=8, **NORM3)
    with pytest.raises(ValueError, match="differ in size"):
        fn(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match="unknown train transform"):
        train_transform(size=8, mode="zoom", **NORM3)
    with pytest.raises(ValueError, match="unknown eval transform"):
        eval_transform(size=8, mode="crop", **NORM3)


class _Crops(Dataset):
    def __init__(self) -> None:
        self.fn = train_transform(size=8, hflip=0, brightness_contrast=0, **NORM3)
        self.pair = position_pair(64, 64)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        return int(self.fn(*self.pair)[1][0, 0])  # encodes the crop's top-left corner


def test_augmentations_are_reproducible_and_differ_between_loader_workers():
    torch.manual_seed(0)
    first = [_Crops()[i] for i in range(8)]
    torch.manual_seed(0)
    assert first == [_Crops()[i] for i in range(8)]
    torch.manual_seed(0)
    loader = DataLoader(_Crops(), batch_size=4, num_workers=2, multiprocessing_context="fork")
    batch_worker0, batch_worker1 = (b.tolist() for b in loader)  # batch i comes from worker i
    assert batch_worker0 != batch_worker1


class _SeededCrops(Dataset):
    """Items ``(epoch, i)`` cropped with ``sample_seed(7, epoch, i)``, as training does."""

    def __init__(self) -> None:
        self.fn = train_transform(size=16, hflip=0.0, brightness_contrast=0.0, **NORM3)
        self.pair = position_pair(64, 64)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, item: tuple[int, int]) -> int:
        epoch, i = item
        return int(self.fn(*self.pair, seed=sample_seed(7, epoch, i))[1][0, 0])


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only():
    """A resumed epoch k sees epoch k's crops, whatever ran before and in which process."""
    ds = _SeededCrops()
    epoch2 = [ds[(2, i)] for i in range(8)]
    assert len(set(epoch2)) > 4  # the crops differ between samples
    assert [ds[(1, i)] for i in range(8)] != epoch2  # and between epochs
    fresh = _SeededCrops()  # a new process that starts at epoch 2, in reverse order
    assert [fresh[(2, i)] for i in reversed(range(8))] == epoch2[::-1]
    items = [(2, i) for i in range(8)]
    loader = DataLoader(
        ds, batch_size=4, sampler=items, num_workers=2, multiprocessing_context="fork"
    )
    assert [x for b in loader for x in b.tolist()] == epoch2  # worker processes agree
    assert sample_seed(7, 2, 3) != sample_seed(8, 2, 3)
