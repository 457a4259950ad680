"""Image decoding: every PIL mode, EXIF orientation, raw mask values, one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segray.data.io import ImageError, decode_image, encode_png, image_size, read_mask

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def png_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([c for colour in colours for c in colour])
    return img


def big_endian_16(values: np.ndarray) -> Image.Image:
    return Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())


MODES = {
    "1": lambda: Image.fromarray(RGB[..., 0] > 127),
    "L": lambda: Image.fromarray(RGB[..., 0]),
    "P": lambda: palette_image(RGB[..., 0] % 3, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]),
    "LA": lambda: Image.fromarray(RGB[..., :2].copy(), mode="LA"),
    "RGB": lambda: Image.fromarray(RGB),
    "RGBA": lambda: Image.fromarray(np.dstack([RGB, RGB[..., :1]])),
    "CMYK": lambda: Image.fromarray(RGB).convert("CMYK"),
    "I;16": lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 257),
    "I;16B": lambda: big_endian_16(RGB[..., 0].astype(np.uint16) * 257),
    "I": lambda: Image.fromarray(RGB[..., 0].astype(np.int32) * 1000),
    "F": lambda: Image.fromarray(RGB[..., 0].astype(np.float32) / 255),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_decodes_to_uint8_hwc(mode, channels, tmp_path):
    img = MODES[mode]()
    assert img.mode == mode
    path = tmp_path / "x.tiff"
    img.save(path)  # TIFF keeps every one of these modes
    for source in (path, str(path), path.read_bytes()):
        out = decode_image(source, channels=channels)
        assert out.shape == (5, 7, channels) and out.dtype == np.uint8
        assert out.flags.c_contiguous


def test_high_bit_depth_scales_by_the_full_range_of_its_type():
    values = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    for img in (Image.fromarray(values), big_endian_16(values)):
        out = decode_image(png_bytes(img, "TIFF"), channels=1)
        assert out[0, :, 0].tolist() == [0, 10, 255]
    big = Image.fromarray(np.array([[0, 2**30, 2**31 - 1]], dtype=np.int32))
    assert decode_image(png_bytes(big, "TIFF"), channels=1)[0, :, 0].tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert decode_image(png_bytes(floats, "TIFF"), channels=1)[0, :, 0].tolist() == [
        0,
        128,
        255,
        255,
    ]


def test_16bit_png_scales():
    img = Image.fromarray(np.array([[0, 257 * 200]], dtype=np.uint16))
    assert img.mode == "I;16"
    assert decode_image(png_bytes(img), channels=3)[0, 1].tolist() == [200, 200, 200]


def test_palette_keeps_colours_and_gray_is_replicated():
    img = palette_image(np.array([[0, 1, 2]]), [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    out = decode_image(png_bytes(img), channels=3)
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    gray = decode_image(png_bytes(Image.fromarray(RGB[..., 0])), channels=3)
    assert (gray == RGB[..., :1]).all()


def test_alpha_is_composited_on_black():
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 51]]], np.uint8)
    out = decode_image(png_bytes(Image.fromarray(rgba)), channels=3)
    assert out[0].tolist() == [[0, 0, 0], [200, 100, 50], [40, 20, 10]]
    clear = palette_image(np.array([[0, 1]]), [(255, 0, 0), (0, 255, 0)])
    out = decode_image(png_bytes(clear, transparency=1), channels=3)
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 0]]


def test_rgb_to_gray_uses_luma():
    img = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8))
    out = decode_image(png_bytes(img), channels=1)
    assert out[0, :, 0].tolist() == [76, 150]  # ITU-R 601: 0.299, 0.587


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    pixels = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40  # H=2, W=3
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif)
    out = decode_image(path, channels=1)[..., 0]
    assert out.tolist() == [[120, 0], [160, 40], [200, 80]]
    assert image_size(path) == (2, 3)  # (width, height) as decoded
    assert read_mask(path).shape == (3, 2)


def test_read_mask_keeps_raw_values():
    indices = np.array([[0, 1, 2, 7]])
    white = palette_image(indices, [(0, 0, 0)] + [(255, 255, 255)] * 7)
    mask = read_mask(png_bytes(white))
    assert mask.dtype == np.int64 and mask.tolist() == [[0, 1, 2, 7]]
    wide = np.array([[0, 1000, 65535]], dtype=np.uint16)
    assert read_mask(png_bytes(Image.fromarray(wide))).tolist() == [[0, 1000, 65535]]
    rgb = np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)
    assert read_mask(png_bytes(Image.fromarray(rgb))).tolist() == [[255, 0]]
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert read_mask(png_bytes(bilevel)).tolist() == [[255, 0]]


def test_read_mask_gray_stored_as_colour_gives_the_gray_value():
    gray = np.array([[0, 1, 128, 255]], np.uint8)
    alpha = np.array([[255, 0, 128, 255]], np.uint8)
    stored = {
        "LA": Image.fromarray(np.dstack([gray, alpha]), mode="LA"),
        "RGB": Image.fromarray(np.dstack([gray] * 3)),
        "RGBA": Image.fromarray(np.dstack([gray] * 3 + [alpha])),
    }
    for mode, img in stored.items():
        assert img.mode == mode
        assert read_mask(png_bytes(img)).tolist() == gray.tolist(), mode  # alpha is ignored


def test_read_mask_palette_with_alpha_keeps_indices(tmp_path):
    indices = np.array([[0, 1, 2, 7]], np.uint8)
    img = palette_image(indices, [(0, 0, 0)] + [(255, 255, 255)] * 7).convert("PA")
    path = tmp_path / "pa.tiff"
    img.save(path)
    assert Image.open(path).mode == "PA" and read_mask(path).tolist() == [[0, 1, 2, 7]]


def test_read_mask_rejects_a_real_colour_mask_in_one_line(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (128, 0, 0)
    rgb[1, 2] = (0, 128, 0)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(ImageError) as e:
        read_mask(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: colour mask (mode RGB; colours ")
    assert "(0, 128, 0), (128, 0, 0)" in msg  # the colours found, sorted
    assert "palette" in msg and "data.mask_mode=values" in msg


def test_encode_png_round_trips():
    assert (decode_image(encode_png(RGB), channels=3) == RGB).all()
    gray = RGB[..., 0]
    assert (decode_image(encode_png(gray), channels=1)[..., 0] == gray).all()
    assert (decode_image(encode_png(gray[..., None]), channels=1)[..., 0] == gray).all()
    with pytest.raises(ValueError, match="uint8"):
        encode_png(gray.astype(np.int64))


def _noise_png() -> bytes:
    return png_bytes(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file (0 bytes)"),
        (_noise_png()[:3000], "cannot decode image (truncated file)"),
        (b"these are my notes, not pixels\n", "not an image (cannot identify image file)"),
    ],
    ids=["empty", "truncated", "text"],
)
def test_bad_files_raise_one_line_errors_naming_the_file(content, problem, tmp_path):
    path = tmp_path / "sub" / "bad.png"
    path.parent.mkdir()
    path.write_bytes(content)
    for call in (
        lambda: decode_image(path, channels=3),
        lambda: read_mask(path),
    ):
        with pytest.raises(ImageError) as e:
            call()
        assert str(e.value) == f"{path}: {problem}"
    with pytest.raises(ImageError, match=r"^a/b\.png: "):
        decode_image(content, channels=1, name="a/b.png")
    with pytest.raises(ImageError, match=r"^<bytes>: "):
        decode_image(content, channels=1)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: cannot read file"):
        decode_image(tmp_path / "nope.png", channels=3)


def test_max_pixels_is_checked_before_decoding():
    # A 4000x3000 PNG whose pixel data is cut off: only the header is read.
    header = png_bytes(Image.new("L", (4000, 3000)))[:200]
    with pytest.raises(ImageError) as e:
        decode_image(header, channels=3, max_pixels=10_000_000, name="big.png")
    assert str(e.value) == (
        "big.png: 4000x3000 = 12000000 pixels exceeds the limit of 10000000 (segment.max_pixels)"
    )
    assert decode_image(png_bytes(Image.new("L", (10, 10))), channels=1, max_pixels=100).shape == (
        10,
        10,
        1,
    )


def test_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        decode_image(encode_png(RGB), channels=2)


def test_image_size_reads_the_header(tmp_path: Path):
    path = tmp_path / "x.jpg"
    Image.fromarray(RGB).save(path)
    assert image_size(path) == (7, 5)
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(ImageError, match="bad.png: not an image"):
        image_size(tmp_path / "bad.png")


def test_lazy_exports_match_the_submodules() -> None:
    """Every name in segray.data's lazy table is a public name of the submodule it points to."""
    import importlib

    import segray.data as data

    for module, names in data._EXPORTS.items():
        public = set(importlib.import_module(f"segray.data.{module}").__all__)
        assert set(names) <= public, (module, sorted(set(names) - public))
