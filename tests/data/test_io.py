"""Image decoding: every PIL mode, EXIF orientation, raw mask values, one-line errors."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segray.data.io import (
    ImageError,
    color_name,
    decode_image,
    encode_png,
    image_size,
    read_mask,
)

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
    with Image.open(path) as stored:
        assert stored.mode == "PA"
    assert read_mask(path).tolist() == [[0, 1, 2, 7]]


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
    # the one setting that reads it, with every colour of the mask as an example
    assert """'data.mask_colors={"#000000": 0, "#008000": 1, "#800000": 2}'""" in msg
    packed = read_mask(path, colors=True)
    assert [color_name(int(v)) for v in packed[:, 0]] == ["#800000", "#000000"]


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


# --------------------------------------------------------------- 8-bit conversion, memory
def old_float64_to_8bit(img: Image.Image) -> np.ndarray:
    """The float64 conversion `_to_8bit` used before it went to integers and row blocks."""
    full_range = {m: 257.0 for m in ("I;16", "I;16L", "I;16B", "I;16N")}
    full_range["I"] = (2**31 - 1) / 255
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in full_range:
        values = np.asarray(img).astype(np.float64) / full_range[img.mode]
    elif img.mode == "F":
        with np.errstate(over="ignore"):  # 255 * the largest float64 (from inf)
            values = np.nan_to_num(np.asarray(img, dtype=np.float64)) * 255
    else:
        array = np.asarray(img).astype(np.float64)
        values = array[..., :-1] * (array[..., -1:] / 255)
        values = values[..., 0] if img.mode == "LA" else values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _near_every_rounding_step(scale: float) -> np.ndarray:
    """Values just below, at and above each k + 0.5 of ``v / scale``, k = -1..255."""
    halves = (np.arange(-1, 256) + 0.5) * scale
    return np.concatenate([np.floor(halves) - 1, np.floor(halves), np.ceil(halves)])


def _conversion_inputs() -> dict[str, Image.Image]:
    every_16 = np.arange(2**16, dtype=np.uint16).reshape(256, 256)
    int_max = 2**31 - 1
    ints = np.concatenate(
        [
            [-(2**31), -1, 0, 1, 2**30, int_max - 1, int_max],
            np.clip(_near_every_rounding_step(int_max / 255), -(2**31), int_max),
            RNG.integers(-(2**31), int_max, 2000, endpoint=True),
        ]
    ).astype(np.int32)
    floats = np.concatenate(
        [
            [np.nan, np.inf, -np.inf, -0.5, 0.0, 0.5, 1.0, 1.5, 1e30],
            np.nextafter(_near_every_rounding_step(1 / 255), np.inf),
            RNG.random(2000) * 1.2 - 0.1,
        ]
    ).astype(np.float32)
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.dstack([colour, 255 - colour, colour // 2, alpha]).astype(np.uint8)
    clear = palette_image(every_16 // 257 % 4, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)])
    return {
        "I;16": Image.fromarray(every_16),
        "I;16B": big_endian_16(every_16),
        "I": Image.fromarray(ints.reshape(-1, 1).repeat(3, axis=1)),
        "F": Image.fromarray(floats.reshape(-1, 1).repeat(3, axis=1)),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba[..., 2:], mode="LA"),
        "P+transparency": Image.open(io.BytesIO(png_bytes(clear, transparency=3))),
    }


@pytest.mark.parametrize("block_pixels", [7, None], ids=["small-blocks", "default-blocks"])
@pytest.mark.parametrize("mode", sorted(_conversion_inputs()))
def test_to_8bit_gives_the_float64_values(mode, block_pixels, monkeypatch):
    """Integer / row-block conversion == the old float64 formulas, value for value."""
    from segray.data import io as image_io

    if block_pixels is not None:  # 7: many blocks of 2 or 3 rows, a ragged last one
        monkeypatch.setattr(image_io, "_BLOCK_PIXELS", block_pixels)
    img = _conversion_inputs()[mode]
    assert img.mode == mode.split("+")[0]
    expected = old_float64_to_8bit(img)
    got = np.asarray(image_io._to_8bit(img))
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("I;16", lambda shape: Image.fromarray(RNG.integers(0, 2**16, shape, dtype=np.uint16))),
        ("I", lambda shape: Image.fromarray(RNG.integers(0, 2**31, shape, dtype=np.int32))),
        ("F", lambda shape: Image.fromarray(RNG.random(shape, dtype=np.float32))),
        ("RGBA", lambda shape: Image.fromarray(RNG.integers(0, 256, (*shape, 4), np.uint8))),
    ],
)
def test_to_8bit_memory_is_about_two_bytes_a_pixel_and_channel(mode, make):
    """The float64 conversion traced 24 bytes a pixel (I;16) and 104 (RGBA); now the uint8
    result plus one block of rows."""
    import tracemalloc

    from segray.data.io import _to_8bit

    img = make((1500, 2000))  # 3 MP
    assert img.mode == mode
    img.load()
    channels = len(img.getbands())
    tracemalloc.start()
    try:
        _to_8bit(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * channels * 3_000_000, f"{peak / 3e6:.1f} bytes a pixel"


# --------------------------------------------------------------- pixel limits
PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS as shipped


def png_header(width: int, height: int) -> bytes:
    """A gray PNG's signature, IHDR and the start of an IDAT: the size without the pixels."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + ihdr
        + struct.pack(">I", zlib.crc32(ihdr))
        + struct.pack(">I", 4096)
        + b"IDAT\x78\x9c"
    )


def test_importing_io_leaves_pillows_global_limit_alone():
    code = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
        "import segray.data.io, segray.data; print(before, Image.MAX_IMAGE_PIXELS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(PILLOW_DEFAULT_LIMIT)] * 2


def test_max_pixels_replaces_pillows_default_limit_per_call(tmp_path):
    """At Pillow's shipped limit (warning above 89 MP, error above 179 MP), only the header is
    read: our limit decides, Pillow's global stays as it was, no warning escapes."""
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(14_000, 14_000))  # 196 MP: Pillow's own check would raise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for source in (path, path.read_bytes()):
            for read in (partial(decode_image, channels=3), read_mask):
                with pytest.raises(ImageError) as e:
                    read(source, max_pixels=100_000_000, name="x")
                assert str(e.value) == (
                    "x: 14000x14000 = 196000000 pixels exceeds the limit of 100000000 "
                    "(segment.max_pixels)"
                )
            # Above both of Pillow's thresholds, under ours: past the size checks, only the
            # (missing) pixel data fails.
            for read in (partial(decode_image, channels=1), read_mask):
                with pytest.raises(ImageError, match=r"^x: cannot decode image \(truncated"):
                    read(source, max_pixels=200_000_000, name="x")
        assert image_size(path) == (14_000, 14_000)  # the header alone has no limit
        # Pillow's warning zone (89.5 to 179 MP), under our default: no warning, no error.
        with pytest.raises(ImageError, match=r"^x: cannot decode image \(truncated"):
            decode_image(png_header(9_500, 9_500), channels=1, max_pixels=100_000_000, name="x")
    with pytest.raises(ImageError) as e:  # max_pixels=None: Pillow's own check stands
        read_mask(path)
    assert str(e.value) == (
        f"{path}: 14000x14000 = 196000000 pixels exceeds Pillow's decompression-bomb limit of "
        f"{2 * PILLOW_DEFAULT_LIMIT} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS, a process-wide "
        "setting): pass max_pixels (segment.max_pixels) to apply segray's own limit instead"
    )
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT


def test_images_above_pillows_limit_decode_under_ours(monkeypatch, tmp_path):
    """Real decoding around a (shrunk) Pillow limit: it warns above 1000 pixels, refuses above
    2000; with max_pixels=5000 segray decodes both, and still refuses above 5000."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    def gray16(width: int, height: int, fmt: str = "PNG") -> bytes:
        values = (np.arange(width * height) % 256).reshape(height, width).astype(np.uint16)
        return png_bytes(Image.fromarray(values * 257), fmt)

    expected = (np.arange(3000) % 256).reshape(50, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        for data, rows in ((gray16(60, 20), 20), (gray16(60, 50), 50)):  # 1200 and 3000 px
            out = decode_image(data, channels=1, max_pixels=5000)
            np.testing.assert_array_equal(out[..., 0], expected[:rows])
            assert (read_mask(data, max_pixels=5000) == expected[:rows] * 257).all()
        path = tmp_path / "big.png"
        path.write_bytes(gray16(60, 50))
        assert decode_image(path, channels=3, max_pixels=5000).shape == (50, 60, 3)
        with pytest.raises(ImageError) as e:
            decode_image(gray16(100, 80), channels=3, max_pixels=5000, name="a.png")
        assert str(e.value) == (
            "a.png: 100x80 = 8000 pixels exceeds the limit of 5000 (segment.max_pixels)"
        )
        with pytest.raises(ImageError) as e:
            read_mask(gray16(100, 80), max_pixels=5000, name="a.png")
        assert "exceeds the limit of 5000 (segment.max_pixels)" in str(e.value)
        # TIFF's decoder checks Pillow's limit again while loading: a one-line ImageError.
        with pytest.raises(ImageError) as e:
            decode_image(gray16(60, 50, "TIFF"), channels=1, max_pixels=5000, name="t.tif")
        assert "\n" not in str(e.value) and str(e.value).startswith(
            "t.tif: 60x50 = 3000 pixels is within max_pixels, but Pillow's TIFF decoder "
            "refuses more than 2000 pixels"
        )
    # max_pixels=None: Pillow's check as it is (warning, then error).
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(gray16(60, 20), channels=1).shape == (20, 60, 1)
    with pytest.raises(ImageError, match=r"^<bytes>: 60x50 = 3000 pixels exceeds Pillow's"):
        decode_image(gray16(60, 50), channels=1)
    assert Image.MAX_IMAGE_PIXELS == 1000
