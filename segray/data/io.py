"""Image and mask decoding shared by training and the bulk-segmentation job.

Every failure is an `ImageError` whose message is one line, ``"<name>: <problem>"``, so a bad
file in a folder of thousands (or a bad row in a Parquet shard) is named, not just reported.

    image = decode_image("photo.jpg", channels=3)          # (H, W, 3) uint8, EXIF-rotated
    raw = read_mask("mask.png")                             # (H, W) int64, raw values
    png = encode_png(prediction.astype(np.uint8) * 255)     # bytes
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Header",
    "ImageError",
    "decode_image",
    "encode_png",
    "image_size",
    "read_header",
    "read_mask",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")

# Our own pixel limit (`max_pixels`, checked from the header) replaces PIL's global
# decompression-bomb warning/error, which would fire before we could name the file.
Image.MAX_IMAGE_PIXELS = None

# Divisors that map the full range of a high-bit-depth mode onto 0..255.
_FULL_RANGE = {m: 257.0 for m in ("I;16", "I;16L", "I;16B", "I;16N")} | {"I": (2**31 - 1) / 255}
# Single-channel modes whose values read_mask returns as they are.
_RAW_MASK_MODES = ("L", "P", "F", *_FULL_RANGE)
# EXIF orientations that swap width and height (transpose, rotations by 90 degrees).
_SWAPS_AXES = {5, 6, 7, 8}
_EXIF_ERRORS = (OSError, ValueError, SyntaxError, KeyError, TypeError)
Source = bytes | str | Path


class ImageError(ValueError):
    """A file that is not a usable image or mask; the message is ``"<name>: <problem>"``."""


def decode_image(
    source: Source, *, channels: int, max_pixels: int | None = None, name: str | None = None
) -> np.ndarray:
    """Decode an image file or its bytes to ``(H, W, channels)`` uint8.

    EXIF orientation is applied. Any PIL mode is accepted: palette and bilevel images keep their
    colours, alpha is composited on black, 16-bit and 32-bit integers are scaled by the full
    range of their type (``value / 257`` for 16 bits) and float (``F``) images are taken as
    intensities in [0, 1]. ``channels`` is 1 (grayscale, ITU-R 601 luma) or 3 (RGB).
    ``max_pixels`` is checked from the header, before any pixel is decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    label = _label(source, name)
    img = _open(source, label, max_pixels)
    try:
        rgb = _to_8bit(img)
        out = rgb.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"{label}: cannot convert mode {img.mode} ({e})") from None
    array = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(array[..., None] if channels == 1 else array)


def read_mask(source: Source, *, name: str | None = None) -> np.ndarray:
    """Decode a mask to ``(H, W)`` int64 holding its RAW values (no class mapping).

    Palette images (``P``, ``PA``) keep their palette indices, grayscale and 16-bit images
    their values, bilevel images become 0/255. Gray stored as colour (``LA``, or ``RGB`` /
    ``RGBA`` whose three channels are equal everywhere) gives its gray value; alpha is
    ignored. A real colour mask is an ImageError naming the file and its first colours.
    """
    label = _label(source, name)
    img = _open(source, label, None)
    mode = img.mode
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
    packed = np.unique(rgb[coloured].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]))
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in packed[:4].tolist())
    more = f" and {len(packed) - 4} more" if len(packed) > 4 else ""
    raise ImageError(
        f"{label}: colour mask (mode {mode}; colours {shown}{more}): segray reads gray or "
        "palette masks: save it as a palette PNG (mode P, palette index = class) or as gray "
        "class values, then use data.mask_mode=index or data.mask_mode=values with "
        "data.mask_values={value: class}"
    )


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
    img = _open_header(path, label, None)
    with img:
        width, height = img.size
        try:
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except _EXIF_ERRORS:  # decoding ignores unreadable EXIF too
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
def _label(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _open_header(source: Source, label: str, max_pixels: int | None) -> Image.Image:
    """Open lazily (header only) and enforce ``max_pixels``; every failure is an ImageError."""
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageError(f"{label}: empty file (0 bytes)")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        fp = Path(source)
        try:
            if fp.stat().st_size == 0:
                raise ImageError(f"{label}: empty file (0 bytes)")
        except OSError as e:
            raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from None
    try:
        img = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (cannot identify image file)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{label}: cannot open image ({_one_line(e)})") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageError(
            f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} (segment.max_pixels)"
        )
    return img


def _open(source: Source, label: str, max_pixels: int | None) -> Image.Image:
    """Open, check the size, decode every pixel and apply EXIF orientation (if readable)."""
    img = _open_header(source, label, max_pixels)
    with img:
        try:
            img.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            problem = "truncated file" if "truncated" in str(e) else _one_line(e)
            raise ImageError(f"{label}: cannot decode image ({problem})") from None
        try:
            return ImageOps.exif_transpose(img)  # a new image, valid after img is closed
        except _EXIF_ERRORS:
            return img.copy()


def _to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit image PIL converts to L or RGB correctly: palettes expanded, high bit depths
    scaled by the range of their type, alpha composited on black."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in _FULL_RANGE:
        values = np.asarray(img).astype(np.float64) / _FULL_RANGE[img.mode]
    elif img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64)) * 255
    elif img.mode in ("LA", "RGBA"):
        array = np.asarray(img).astype(np.float64)
        values = array[..., :-1] * (array[..., -1:] / 255)
        values = values[..., 0] if img.mode == "LA" else values
    else:
        return img
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
