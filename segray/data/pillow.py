"""Opening an image file with Pillow: the one-line `ImageError`, size limits and EXIF, and
the value scales (16-bit, 32-bit, float, alpha on black) that decoding shares.

The lowest layer of `segray.data`: `segray.data.intensity` (bands, intensity ranges) and
`segray.data.io` (decode images, read masks and headers) both build on it.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segray.errors import UserError

__all__ = [
    "EXIF_ERRORS",
    "ImageError",
    "Source",
    "composite_on_black",
    "one_line",
    "open_header",
    "open_image",
    "pillow_limit_lifted",
    "scale_16",
    "scale_float",
    "scale_int32",
    "source_label",
]

_INT32_MAX = 2**31 - 1  # mode I is scaled by value / (_INT32_MAX / 255)
EXIF_ERRORS = (OSError, ValueError, SyntaxError, KeyError, TypeError)
Source = bytes | str | Path


class ImageError(UserError, ValueError):
    """A file that is not a usable image or mask; the message is ``"<name>: <problem>"``."""


def source_label(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, bytes | bytearray) else str(source)


def open_header(
    source: Source, label: str, max_pixels: int | None, *, pillow_check: bool
) -> Image.Image:
    """Open lazily (header only) and enforce ``max_pixels``; every failure is an ImageError.

    With ``pillow_check`` Pillow's process-wide decompression-bomb error stands (as an
    ImageError); without it an image Pillow refuses is opened anyway, and only ``max_pixels``
    applies. The caller silences Pillow's warning (`pillow_limit_lifted`).
    """
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
    refused = False
    try:
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError:
            img, refused = _open_past_pillow_limit(fp), True
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (cannot identify image file)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{label}: cannot open image ({one_line(e)})") from None
    if refused and pillow_check:
        img.close()
        raise ImageError(
            f"{label}: {_pixels(img)} exceeds Pillow's decompression-bomb limit of "
            f"{_pillow_limit()}: pass max_pixels (segment.max_pixels) to apply segray's own "
            "limit instead"
        )
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageError(
            f"{label}: {_pixels(img)} exceeds the limit of {max_pixels} (segment.max_pixels)"
        )
    return img


def open_image(source: Source, label: str, max_pixels: int | None) -> Image.Image:
    """Open, check the size, decode every pixel and apply EXIF orientation (if readable)."""
    own_limit = max_pixels is not None
    with pillow_limit_lifted(own_limit):
        img = open_header(source, label, max_pixels, pillow_check=not own_limit)
        with img:
            try:
                img.load()
            except Image.DecompressionBombError:  # some decoders check again (TIFF, GIF)
                raise ImageError(
                    f"{label}: {_pixels(img)} is within max_pixels, but Pillow's {img.format} "
                    f"decoder refuses more than {_pillow_limit()}: convert the image to PNG, "
                    "or raise PIL.Image.MAX_IMAGE_PIXELS in the decoding process"
                ) from None
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                problem = "truncated file" if "truncated" in str(e) else one_line(e)
                raise ImageError(f"{label}: cannot decode image ({problem})") from None
            try:
                return ImageOps.exif_transpose(img)  # a new image, valid after img is closed
            except EXIF_ERRORS:
                return img.copy()


@contextmanager
def pillow_limit_lifted(active: bool) -> Iterator[None]:
    """While ``active``, silence Pillow's DecompressionBombWarning: our own limit replaces it.

    `warnings.catch_warnings` swaps the process's warning filters for the duration (before
    Python 3.14 that is not thread-safe, at worst a warning filter is lost or kept); unlike
    setting ``PIL.Image.MAX_IMAGE_PIXELS`` it never lowers any other caller's protection.
    """
    if not active:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _open_past_pillow_limit(fp: io.BytesIO | Path) -> Image.Image:
    """`Image.open` without its process-wide decompression-bomb check, for an image Pillow
    refused as larger than twice ``PIL.Image.MAX_IMAGE_PIXELS``: the caller checks the size.

    The same plugin loop as `Image.open`: the first registered format (``Image.ID``) that
    accepts the first 16 bytes and parses the header. Paths are opened by the plugin itself,
    so closing the image closes the file.
    """
    if isinstance(fp, Path):
        with fp.open("rb") as f:
            prefix = f.read(16)
        target: io.BytesIO | str = os.fspath(fp)
    else:
        fp.seek(0)
        prefix, target = fp.read(16), fp
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "almost" warning
            continue
        if isinstance(target, io.BytesIO):
            target.seek(0)
        try:
            return factory(target, "" if isinstance(target, io.BytesIO) else target)
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError(f"cannot identify image file {target!r}")


def _pixels(img: Image.Image) -> str:
    width, height = img.size
    return f"{width}x{height} = {width * height} pixels"


def _pillow_limit() -> str:
    """Pillow's decompression-bomb error threshold, as the one setting that controls it."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    return f"{2 * limit} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS, a process-wide setting)"


def scale_16(v: np.ndarray) -> np.ndarray:
    # rint(v / 257) == (v + 128) // 257: 257 is odd, so v / 257 is never halfway.
    wide = v.astype(np.uint32)
    wide += 128
    wide //= 257
    return wide.astype(np.uint8)


def scale_int32(v: np.ndarray) -> np.ndarray:
    # rint(v * 255 / M) == (v * 255 + (M - 1) // 2) // M for M = 2**31 - 1 (odd: no ties).
    wide = v.astype(np.int64)
    np.maximum(wide, 0, out=wide)
    wide *= 255
    wide += (_INT32_MAX - 1) // 2
    wide //= _INT32_MAX
    return wide.astype(np.uint8)


def scale_float(v: np.ndarray) -> np.ndarray:
    # NaN as 0; infinities as values that clip to 0 / 255 (255 * inf would overflow).
    values = np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    values *= 255
    np.rint(values, out=values)
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def composite_on_black(v: np.ndarray) -> np.ndarray:
    # rint(c * a / 255) == (c * a + 127) // 255 (255 is odd: no ties); c * a + 127 < 2**16.
    colour = v[..., :-1].astype(np.uint16)
    colour *= v[..., -1:]
    colour += 127
    colour //= 255
    return colour.astype(np.uint8)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
