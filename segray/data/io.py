"""Image and mask decoding shared by training and the bulk-segmentation job.

Every failure is an `ImageError` whose message is one line, ``"<name>: <problem>"``, so a bad
file in a folder of thousands (or a bad row in a Parquet shard) is named, not just reported.

    image = decode_image("photo.jpg", channels=3)          # (H, W, 3) uint8, EXIF-rotated
    raw = read_mask("mask.png")                             # (H, W) int64, raw values
    png = encode_png(prediction.astype(np.uint8) * 255)     # bytes
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, features

from segray.data.intensity import intensity_ranges, own_reader, read_bands, tiff_header, to_uint8
from segray.data.pillow import (
    EXIF_ERRORS,
    ImageError,
    Source,
    composite_on_black,
    open_header,
    open_image,
    pillow_limit_lifted,
    scale_16,
    scale_float,
    scale_int32,
    source_label,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "COLOR_BASE",
    "Header",
    "ImageError",
    "color_name",
    "decode_image",
    "encode_png",
    "image_size",
    "read_header",
    "read_mask",
]

# The file extensions read as images. Pillow reads them all (.jpe and .jfif are JPEG);
# JPEG 2000 (.jp2, .j2k) only where Pillow was built with OpenJPEG, as its wheels are.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".gif", ".webp",
    *((".jp2", ".j2k") if features.check("jpg_2000") else ()),
)  # fmt: skip

# 16-bit modes, scaled by the full range of their type (value / 257).
_MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N")
# Single-channel modes whose values read_mask returns as they are.
_RAW_MASK_MODES = ("L", "P", "F", "I", *_MODES_16)
# Pixels converted at a time by _to_8bit: bounds its temporaries (at most 8 bytes a value).
_BLOCK_PIXELS = 1 << 16
# EXIF orientations that swap width and height (transpose, rotations by 90 degrees).
_SWAPS_AXES = {5, 6, 7, 8}
COLOR_BASE = 1 << 24  # read_mask(colors=True): COLOR_BASE + rgb, above any gray value


def decode_image(
    source: Source,
    *,
    channels: int,
    max_pixels: int | None = None,
    name: str | None = None,
    intensity_range: object = None,
) -> np.ndarray:
    """Decode an image file or its bytes to ``(H, W, channels)`` uint8.

    EXIF orientation is applied. Any PIL mode is accepted: palette and bilevel images keep their
    colours, alpha is composited on black (kept as a band when ``channels`` counts it),
    16-bit and 32-bit integers are scaled by the full range of their type (``value / 257``
    for 16 bits) and float (``F``) images are taken as intensities in [0, 1], unless
    ``intensity_range`` (``data.intensity_range``: ``[lo, hi]`` or one per band) maps
    ``lo..hi`` onto 0..255 instead. ``channels`` is 1 (grayscale, ITU-R 601 luma), 3 (RGB)
    or the image's own band count (a 4th PNG band, multi-band TIFFs through ``tifffile``);
    `segray.data.intensity` has the rules.

    ``max_pixels`` (``segment.max_pixels``) is checked from the header, before any pixel is
    decoded, and replaces Pillow's process-wide ``PIL.Image.MAX_IMAGE_PIXELS`` for this call
    (that setting is never changed). ``None`` leaves Pillow's own check in force: its
    decompression-bomb error becomes an ImageError.
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    label = source_label(source, name)
    ranges = intensity_ranges(intensity_range)
    if channels not in (1, 3) or ranges is not None or own_reader(source) is not None:
        bands = read_bands(source, max_pixels=max_pixels, name=label)
        return to_uint8(bands, channels=channels, intensity_range=ranges, name=label)
    img = open_image(source, label, max_pixels)
    try:
        rgb = _to_8bit(img)
        out = rgb.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{label}: cannot convert mode {img.mode} ({e})") from None
    return _rows_to_array(out, channels, _same)


def read_mask(
    source: Source,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    colors: bool = False,
) -> np.ndarray:
    """Decode a mask to ``(H, W)`` int64 holding its RAW values (no class mapping).

    Palette images (``P``, ``PA``) keep their palette indices, grayscale and 16-bit images
    their values, bilevel images become 0/255. Gray stored as colour (``LA``, or ``RGB`` /
    ``RGBA`` whose three channels are equal everywhere) gives its gray value; alpha is
    ignored. A real colour mask is an ImageError naming the file, its first colours and
    ``data.mask_colors``. With ``colors`` every pixel is its colour instead, packed as
    ``COLOR_BASE + (r << 16 | g << 8 | b)`` (palettes as their colours, gray as gray),
    above any gray value (`color_name` shows one). ``max_pixels`` works as in `decode_image`.
    """
    label = source_label(source, name)
    img = open_image(source, label, max_pixels)
    mode = img.mode
    if colors:
        try:
            rgb = np.asarray(img if mode == "RGB" else img.convert("RGB")).astype(np.int64)
        except (OSError, ValueError) as e:
            raise ImageError(f"{label}: cannot convert mask mode {mode} ({e})") from None
        return COLOR_BASE + (rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    try:
        if mode in ("PA", "LA"):
            img = img.getchannel(0)
        elif mode not in _RAW_MASK_MODES:
            img = img.convert("L" if mode == "1" else "RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{label}: cannot convert mask mode {mode} ({e})") from None
    if img.mode == "RGB":
        return _gray_of_colour(np.asarray(img), label, mode)
    array = np.asarray(img)
    if array.dtype.kind == "f":
        array = np.rint(array)
    return array.astype(np.int64)


def _gray_of_colour(rgb: np.ndarray, label: str, mode: str) -> np.ndarray:
    """The gray value of an (H, W, 3) mask whose channels are equal; else a one-line error."""
    red = rgb[..., 0]
    coloured = (rgb[..., 1] != red) | (rgb[..., 2] != red)
    if not coloured.any():
        return red.astype(np.int64)
    weights = np.array([1 << 16, 1 << 8, 1])
    packed = np.unique(rgb[coloured].astype(np.int64) @ weights)
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in packed[:4].tolist())
    more = f" and {len(packed) - 4} more" if len(packed) > 4 else ""
    every = np.unique(rgb.reshape(-1, 3).astype(np.int64) @ weights)[:4].tolist()
    example = ", ".join(f'"{color_name(COLOR_BASE + c)}": {i}' for i, c in enumerate(every))
    raise ImageError(
        f"{label}: colour mask (mode {mode}; colours {shown}{more}): set data.mask_colors to "
        f"each colour's class, e.g. 'data.mask_colors={{{example}}}'"
    )


def color_name(value: int) -> str:
    """``#rrggbb`` of a packed colour (`read_mask` with ``colors``)."""
    return f"#{value - COLOR_BASE:06x}"


@dataclass(frozen=True)
class Header:
    """What a file's header says: size as decoded (EXIF-rotated), PIL mode, bands, bits."""

    width: int
    height: int
    mode: str
    bands: int
    bit_depth: int
    format: str


def read_header(path: str | Path) -> Header:
    """The `Header` of an image file, read lazily: no pixel is decoded."""
    label = str(path)
    reader = own_reader(path)
    if reader == "tiff":
        return Header(*tiff_header(path), "TIFF")
    if reader == "png16":
        bands = read_bands(path)  # OpenCV has no header-only read; these files are rare
        h, w, count = bands.array.shape
        return Header(w, h, bands.mode, count, 16, "PNG")
    with pillow_limit_lifted(True):  # no pixel is decoded: no limit applies
        img = open_header(path, label, None, pillow_check=False)
    with img:
        width, height = img.size
        try:
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except EXIF_ERRORS:  # decoding ignores unreadable EXIF too
            orientation = 1
        if orientation in _SWAPS_AXES:
            width, height = height, width
        mode = img.mode
        bits = 1 if mode == "1" else 16 if mode.startswith("I;16") else 32 if mode in "IF" else 8
        return Header(width, height, mode, len(img.getbands()), bits, img.format or "")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as `decode_image` returns it, from the header only."""
    header = read_header(path)
    return header.width, header.height


def encode_png(array: np.ndarray) -> bytes:
    """``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 -> PNG bytes (fast level)."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"encode_png needs (H, W) or (H, W, 1|3|4), got {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------- helpers


def _to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit image PIL converts to L or RGB correctly: palettes expanded, high bit depths
    scaled by the range of their type, alpha composited on black.

    The values are those of the float64 formulas ``rint(v / 257)`` (16 bits),
    ``rint(v / ((2**31 - 1) / 255))`` (mode I, clipped at 0), ``rint(v * 255)`` (mode F,
    clipped to 0..255, NaN as 0) and ``rint(c * a / 255)`` (alpha), computed in integers
    where the input is integer (the divisors are odd, so there is no tie to round) and a
    block of rows at a time: besides the uint8 result, memory stays a few MB.
    """
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in _MODES_16:
        return _map_row_blocks(img, 1, scale_16)
    if img.mode == "I":
        return _map_row_blocks(img, 1, scale_int32)
    if img.mode == "F":
        return _map_row_blocks(img, 1, scale_float)
    if img.mode in ("LA", "RGBA"):
        return _map_row_blocks(img, len(img.mode) - 1, composite_on_black)
    return img


def _map_row_blocks(
    img: Image.Image, bands: int, fn: Callable[[np.ndarray], np.ndarray]
) -> Image.Image:
    """`_rows_to_array` as an L (one band) or RGB image."""
    out = _rows_to_array(img, bands, fn)
    return Image.fromarray(out[..., 0] if bands == 1 else out)


def _rows_to_array(
    img: Image.Image, bands: int, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``fn`` over blocks of whole rows of ``img``, each (rows, W[, C]) -> (rows, W, bands)
    uint8, written into one (H, W, bands) uint8 array. Unlike ``np.asarray(img)`` (a bytes
    copy of the whole image, joined from chunks) only one block is copied at a time.

    A block stays within ``PIL.Image.MAX_IMAGE_PIXELS``, which `Image.crop` checks too; if
    not even one row fits (a tiny limit), the image is converted whole."""
    width, height = img.size
    out = np.empty((height, width, bands), np.uint8)
    block_pixels = min(_BLOCK_PIXELS, Image.MAX_IMAGE_PIXELS or _BLOCK_PIXELS)
    step = block_pixels // max(1, width)
    if step == 0:
        out[:] = fn(np.asarray(img)).reshape(height, width, bands)
        return out
    for top in range(0, height, step):
        bottom = min(height, top + step)
        block = np.asarray(img.crop((0, top, width, bottom)))
        out[top:bottom] = fn(block).reshape(bottom - top, width, bands)
    return out


def _same(v: np.ndarray) -> np.ndarray:
    return v
