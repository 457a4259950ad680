"""Tests of segray.data.intensity: every band kept, high-bit-depth values mapped by a range."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from segray.auto.derive import Resources, derive_config
from segray.config import ConfigError, DataConfig, load_config
from segray.data import prepare_data
from segray.data.inspect import fingerprint
from segray.data.intensity import Bands, read_bands, to_uint8
from segray.data.io import ImageError, decode_image, read_header


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _twelve_bit(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit image of faint contrast (background ~1000, square ~1040, one hot pixel 4095)
    in uint16, and its 0/255 mask."""
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(2, size // 2, 2)
    mask[y : y + size // 3, x : x + size // 3] = 255
    image = 1000 + rng.integers(-6, 7, (size, size)) + (mask > 0) * 40
    image[0, 0] = 4095
    return image.astype(np.uint16), mask


# --------------------------------------------------------------------------- decoding
def test_12_bit_png_keeps_its_contrast_only_with_a_range():
    values = np.array([[1000, 1020, 1040, 4095]], np.uint16)
    png = _png(values)
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    by_type = decode_image(png, channels=1)[0, :, 0].tolist()
    assert by_type == [4, 4, 4, 16]  # the type's range: the faint contrast is gone
    mapped = decode_image(png, channels=1, intensity_range=[1000, 1040])[0, :, 0].tolist()
    assert mapped == [0, 128, 255, 255]  # lo..hi onto 0..255, clipped
    assert decode_image(png, channels=1, intensity_range="type")[0, :, 0].tolist() == by_type
    rgb = decode_image(png, channels=3, intensity_range=[1000, 1040])
    assert rgb.shape == (1, 4, 3) and (rgb == np.array(mapped)[None, :, None]).all()


def test_float_tiff_of_0_to_1000_is_mapped_not_saturated():
    values = np.array([[0.0, 250.0, 500.0, 1000.0, np.nan]], np.float32)
    tif = _tiff(values)
    assert decode_image(tif, channels=1)[0, :, 0].tolist() == [0, 255, 255, 255, 0]
    got = decode_image(tif, channels=1, intensity_range=[0, 1000])[0, :, 0].tolist()
    assert got == [0, 64, 128, 255, 0]


@pytest.mark.parametrize("layout", ["contig", "pages"])
def test_multi_band_tiff_keeps_every_band(tmp_path, layout):
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 4096, (6, 7, 5), dtype=np.uint16)
    if layout == "contig":
        data = _tiff(bands, photometric="minisblack", planarconfig="contig")
    else:  # one page per band, as microscopes save channels
        data = _tiff(np.moveaxis(bands, -1, 0), photometric="minisblack")
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    header = read_header(path)
    assert (header.width, header.height, header.bands, header.bit_depth) == (7, 6, 5, 16)
    out = decode_image(path, channels=5, intensity_range=[0, 4095])
    expected = np.rint(bands / 4095 * 255).astype(np.uint8)
    assert out.shape == (6, 7, 5) and np.array_equal(out, expected)
    per_band = [[0, 4095]] * 4 + [[0, 2047]]
    last = decode_image(path, channels=5, intensity_range=per_band)[..., 4]
    assert np.array_equal(last, np.rint(np.clip(bands[..., 4] / 2047, 0, 1) * 255))
    with pytest.raises(ImageError) as e:
        decode_image(path, channels=3)
    assert str(e.value) == (
        f"{path}: image has 5 bands (uint16x5) but the model takes 3 (model.in_channels=3): "
        "set model.in_channels=5 or convert the image"
    )
    with pytest.raises(ImageError, match="gives 2 ranges but the image has 5 bands"):
        decode_image(path, channels=5, intensity_range=[[0, 1], [0, 2]])


def test_16_bit_rgb_png_keeps_every_bit():
    rgb = np.zeros((3, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 4000, 2000, 100
    ok, encoded = cv2.imencode(".png", rgb[..., ::-1])  # OpenCV writes BGR
    assert ok
    assert Image.open(io.BytesIO(encoded.tobytes())).mode == "RGB"  # Pillow: high byte only
    out = decode_image(encoded.tobytes(), channels=3, intensity_range=[0, 4000])
    assert out[0, 0].tolist() == [255, 128, 6]


def test_rgba_alpha_vs_a_fourth_band():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    png = _png(rgba)
    # Four channels asked: the 4th band is data, kept as it is.
    assert np.array_equal(decode_image(png, channels=4), rgba)
    # Three asked: alpha composited on black, as before.
    composited = (rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255
    assert np.array_equal(decode_image(png, channels=3), composited)
    stats = {
        "data": rgba,
        "opaque": np.dstack([rgba[..., :3], np.full((8, 8), 255, np.uint8)]),
        "alpha": np.dstack([rgba[..., :3], (rgba[..., 3] > 127).astype(np.uint8) * 255]),
    }
    from segray.data.intensity import band_stats

    for kind, array in stats.items():
        got = band_stats(read_bands(_png(array)))
        assert (got["alpha"], got["bands"]) == (kind, 4 if kind == "data" else 3), kind


def test_to_uint8_luma_matches_pillow():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = to_uint8(Bands(rgb, False, "RGB"), channels=1)[..., 0]
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("L")))


def test_eight_bit_images_decode_as_before_whatever_the_setting():
    rgb = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    png = _png(rgb)
    for value in (None, "auto", "type"):
        assert np.array_equal(decode_image(png, channels=3, intensity_range=value), rgb)


def test_config_accepts_ranges_and_any_in_channels():
    cfg = load_config(None, ["data.intensity_range=[100, 4000]", "model.in_channels=4"])
    assert cfg.data.intensity_range == [100.0, 4000.0] and cfg.model.in_channels == 4
    per_band = load_config(None, ["data.intensity_range=[[0, 1], [0, 2]]"])
    assert per_band.data.intensity_range == [[0.0, 1.0], [0.0, 2.0]]
    assert DataConfig().intensity_range == "auto"
    with pytest.raises(ConfigError, match="lo < hi"):
        load_config(None, ["data.intensity_range=[5, 1]"])
    with pytest.raises(ConfigError, match="model.in_channels"):
        load_config(None, ["model.in_channels=0"])


# --------------------------------------------------------------------------- fingerprint
def _dataset(root, images: list[np.ndarray], masks: list[np.ndarray], ext: str = ".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if ext == ".tif":
            tifffile.imwrite(root / "images" / f"{k:03d}.tif", image, photometric="minisblack")
        else:
            Image.fromarray(image).save(root / "images" / f"{k:03d}{ext}")
        Image.fromarray(mask).save(root / "masks" / f"{k:03d}.png")


def test_fingerprint_records_percentiles_bits_and_resolves_the_range(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [_twelve_bit(rng) for _ in range(6)]
    _dataset(tmp_path, [p[0] for p in pairs], [p[1] for p in pairs])
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    fp = fingerprint(cfg.data)
    images = fp.to_dict()["images"]
    assert images["bit_depth_used"] == 12 and images["high_bit_depth"]
    assert images["bands"] == 1 and images["value_type"] == "uint16"
    ((lo, hi),) = images["percentiles"]
    assert 993 <= lo <= 996 and 1040 <= hi <= 1046  # the hot pixels are clipped away
    assert fp.intensity_range == [lo, hi]
    assert 0.1 < images["mean"][0] < 0.6  # mean / std as the range maps the values
    assert "12 bits used" in fp.table() and "0.5..99.5 percentiles" in fp.table()
    prepared = prepare_data(cfg)
    assert prepared.data.intensity_range == [lo, hi]  # saved with every checkpoint's config
    assert json.loads(fp.to_json())["intensity_range"] == [lo, hi]
    # An explicit setting is kept; 8-bit data keeps auto (decoded as it is).
    fixed = load_config(
        None, ["data.source=folder", f"data.root={tmp_path}", "data.intensity_range=type"]
    )
    assert prepare_data(fixed).data.intensity_range == "type"


def test_fingerprint_of_8_bit_data_keeps_auto(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    masks = [np.where(rng.random((32, 32)) > 0.5, 255, 0).astype(np.uint8) for _ in range(4)]
    _dataset(tmp_path, images, masks)
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    fp = fingerprint(cfg.data)
    assert fp.images["bit_depth_used"] == 8 and not fp.images["high_bit_depth"]
    assert fp.intensity_range == "auto"
    assert prepare_data(cfg).data.intensity_range == "auto"


def test_four_band_dataset_reports_its_bands_and_auto_derives_in_channels_4(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 4), dtype=np.uint8) for _ in range(4)]
    masks = [np.where(rng.random((32, 32)) > 0.5, 255, 0).astype(np.uint8) for _ in range(4)]
    _dataset(tmp_path, images, masks)
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    fp = fingerprint(cfg.data)
    assert fp.images["bands"] == 4 and fp.images["alpha"] == {"data": 4}
    assert "data bands" in fp.table() and "last band: data (4)" in fp.table()
    derived = derive_config(fp.to_dict(), Resources(cpus=2), root=str(tmp_path), base=cfg)
    assert derived.config.model.in_channels == 4
    assert len(derived.config.data.mean) in (1, 4)
    # train with in_channels 3 on it: one line, naming the setting
    with pytest.raises(Exception, match="4 data bands but model.in_channels=3"):
        prepare_data(cfg)
    assert prepare_data(
        load_config(None, [f"data.root={tmp_path}", "data.source=folder", "model.in_channels=4"])
    )


def test_auto_derives_the_range_of_a_multi_band_tiff_dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 3000, (3, 24, 24), dtype=np.uint16) for _ in range(4)]
    masks = [np.where(rng.random((24, 24)) > 0.5, 255, 0).astype(np.uint8) for _ in range(4)]
    images[0][2] += 10000  # the third band's range differs
    _dataset(tmp_path, images, masks, ext=".tif")
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    fp = fingerprint(cfg.data)
    assert fp.images["bands"] == 3 and fp.images["value_type"] == "uint16"
    ranges = fp.intensity_range
    assert len(ranges) == 3 and ranges[2][1] > 10000 > ranges[0][1]
    derived = derive_config(fp.to_dict(), Resources(cpus=2), root=str(tmp_path), base=cfg)
    assert derived.config.data.intensity_range == ranges
    assert "percentiles" in derived.reasons["data.intensity_range"]


def test_segmenter_maps_raw_arrays_and_files_as_decoding_does(tmp_path):
    from segray.config import apply_overrides
    from segray.inference.segmenter import Segmenter
    from segray.models import create_model

    cfg = apply_overrides(load_config(None, []), {"data.intensity_range": [1000, 1040]})
    gray = Segmenter(create_model("unet", base_width=4, in_channels=1), cfg)
    raw = np.array([[1000, 1020, 1040, 4095]], np.uint16)
    assert gray.to_array(raw)[0, :, 0].tolist() == [0, 128, 255, 255]
    path = tmp_path / "x.png"
    path.write_bytes(_png(raw))
    assert gray.to_array(path)[0, :, 0].tolist() == [0, 128, 255, 255]
    decoded = np.array([[7, 8]], np.uint8)  # uint8 arrays are taken as decoded
    assert gray.to_array(decoded)[0, :, 0].tolist() == [7, 8]
    bands = Segmenter(create_model("unet", base_width=4, in_channels=4), load_config(None, []))
    four = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    assert np.array_equal(bands.to_array(four), four)  # a 4th band is data, not alpha
