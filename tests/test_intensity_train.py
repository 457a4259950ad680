"""High-bit-depth and multi-band images through a real training on a local Ray.

12-bit images of faint contrast (a square 40 grey levels above a background of ~1000, in
16-bit PNGs) are learnt only when decoding maps them by the dataset's own percentiles
(``data.intensity_range: auto``); by the type's range (``type``) they decode to one flat grey.
A 4-band PNG (RGB + a 4th band that holds the object) trains with ``model.in_channels=4``.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segray.checkpoint import load_model
from segray.config import load_config
from segray.data.io import decode_image
from segray.inference.segmenter import load_segmenter
from segray.train import run_training

pytestmark = pytest.mark.integration

SIZE = 32
TRAIN, VAL = 16, 8


def _square(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    side = SIZE // 3
    y, x = rng.integers(0, SIZE - side + 1, 2)  # anywhere: its position alone says little
    mask[y : y + side, x : x + side] = 255
    return mask


def _write(root, make) -> list[str]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    keys = [f"{k:03d}" for k in range(TRAIN + VAL)]
    for key in keys:
        mask = _square(rng)
        Image.fromarray(make(rng, mask)).save(root / "images" / f"{key}.png")
        Image.fromarray(mask).save(root / "masks" / f"{key}.png")
    return keys


def _twelve_bit(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    image = 1000 + rng.integers(-6, 7, mask.shape) + (mask > 0) * 40
    image[0, 0] = 4095  # a hot pixel: the data uses 12 bits
    return image.astype(np.uint16)


def _four_band(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    rgb = np.array([120, 100, 80]) + rng.integers(-20, 21, (*mask.shape, 3))  # no object
    band = 60 + (mask > 0) * 120 + rng.integers(0, 30, mask.shape)  # the object is here
    return np.dstack([rgb, band]).astype(np.uint8)


def _overrides(root, keys: list[str], *extra: str) -> list[str]:
    ids = f"{{train: {keys[:TRAIN]}, val: {keys[TRAIN:]}}}"
    return [
        "data.source=folder",
        f"data.root={root}",
        f"data.split_ids={ids}",
        f"data.image_size={SIZE}",
        "data.train_transform=resize",
        "data.samples_per_image=4",
        "data.batch_size=8",
        "data.brightness_contrast=0",
        "model.name=unet",
        "model.base_width=8",
        "optim.lr=0.01",
        "train.epochs=6",
        "train.num_workers=1",
        *extra,
    ]


def _dice(pred: np.ndarray, mask: np.ndarray) -> float:
    p, t = pred > 0, mask > 0
    return 2 * float((p & t).sum()) / max(1, int(p.sum() + t.sum()))


def test_12_bit_faint_contrast_is_learnt_with_the_datasets_range(ray_local, tmp_path):
    root = tmp_path / "data"
    keys = _write(root, _twelve_bit)
    result = run_training(load_config(None, _overrides(root, keys)), tmp_path / "auto")
    _, cfg = load_model(result.best)
    lo, hi = cfg.data.intensity_range  # auto resolved from the fingerprint, saved with it
    assert 990 <= lo <= 1000 and 1040 <= hi <= 1050
    assert result.best_metrics["val_dice"] > 0.8, result.history

    # Segmenting a raw 12-bit file with the checkpoint decodes it the same way.
    seg = load_segmenter(result.best, device="cpu", precision="fp32")
    key = keys[-1]
    mask = np.asarray(Image.open(root / "masks" / f"{key}.png"))
    assert _dice(seg.predict(root / "images" / f"{key}.png"), mask) > 0.8
    assert np.array_equal(
        seg.to_array(root / "images" / f"{key}.png"),
        decode_image(root / "images" / f"{key}.png", channels=3, intensity_range=[lo, hi]),
    )

    # The same training decoding by the type's range sees one flat grey: nothing to learn.
    typed = _overrides(root, keys, "data.intensity_range=type")
    flat = run_training(load_config(None, typed), tmp_path / "type")
    assert flat.best_metrics["val_dice"] < 0.5, flat.history


def test_four_band_png_trains_with_in_channels_4(ray_local, tmp_path):
    root = tmp_path / "data"
    keys = _write(root, _four_band)
    overrides = _overrides(root, keys, "model.in_channels=4", "optim.lr=0.003")
    result = run_training(load_config(None, overrides), tmp_path / "run")
    model, cfg = load_model(result.best)
    assert cfg.model.in_channels == 4 and model.applied_hparams()["in_channels"] == 4
    assert result.best_metrics["val_dice"] > 0.8, result.history
    seg = load_segmenter(result.best, device="cpu", precision="fp32")
    key = keys[-1]
    assert seg.to_array(root / "images" / f"{key}.png").shape == (SIZE, SIZE, 4)
    mask = np.asarray(Image.open(root / "masks" / f"{key}.png"))
    assert _dice(seg.predict(root / "images" / f"{key}.png"), mask) > 0.8
