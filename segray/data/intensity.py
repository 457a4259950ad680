"""Bands and intensities: every band of an image, and one mapping of its values to 8 bits.

`decode_image` (`segray.data.io`) hands images to the network as ``(H, W, C)`` uint8. 8-bit
images pass as they are. High-bit-depth and float images are mapped by ``data.intensity_range``:

- ``type`` scales by the range of the value type: ``v / 257`` for 16 bits, ``[0, 1]`` for
  floats (12-bit data in a 16-bit PNG then keeps 17 grey levels);
- ``[lo, hi]`` (or one ``[lo, hi]`` per band) maps ``lo..hi`` linearly onto 0..255, clipped;
- ``auto`` is resolved once, from the dataset's fingerprint (`resolve_intensity_range`): the
  0.5 and 99.5 percentiles of each band, as nnU-Net clips its intensities, when the images
  hold more than 8 bits. ``auto`` that stays (8-bit data, or a checkpoint from before this
  setting) decodes as ``type``.

The resolved value is part of the config, so training, evaluation, bulk segmentation and the
exported artefacts of a checkpoint all decode the same way.

Bands: `read_bands` keeps every band of the file (multi-band and multi-page TIFFs through
``tifffile``; a 4th PNG band), `to_uint8` then takes ``channels`` (``model.in_channels``) of
them: all bands when they are that many; alpha composited on black when the image has one
band more than the model takes and the last is alpha; gray repeated to RGB; RGB to gray by
ITU-R 601 luma (Pillow's rounding). Anything else is an `ImageError` naming both counts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segray.config.data import intensity_ranges
from segray.data.pillow import (
    ImageError,
    composite_on_black,
    one_line,
    open_image,
    scale_16,
    scale_float,
    scale_int32,
    source_label,
)

__all__ = [
    "Bands",
    "band_stats",
    "intensity_ranges",
    "mapped_mean_std",
    "read_bands",
    "resolve_intensity_range",
    "summarise_bands",
    "to_uint8",
]

PERCENTILES = (0.5, 99.5)  # the intensity range ``auto`` derives (nnU-Net's clipping)
_VALUES_PER_IMAGE = 4096  # pixels per image kept for the dataset's percentiles
_BLOCK_PIXELS = 1 << 16  # pixels mapped at a time: bounds the float64 temporaries
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Single-band TIFF value types Pillow decodes without loss (I;16, I, F, L, 1).
_PILLOW_TIFF_GRAY = ("uint8", "uint16", "int16", "int32", "float32", "bool")


@dataclass(frozen=True)
class Bands:
    """Every band of one image: ``array`` (H, W, B) in the file's value type, whether the last
    band is alpha, and a short description (``RGBA``, ``uint16x4``) for messages."""

    array: np.ndarray
    alpha: bool
    mode: str

    @property
    def count(self) -> int:
        return int(self.array.shape[2])


# --------------------------------------------------------------------------- reading
def _head(source: bytes | str | Path) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source[:32])
    try:
        with open(source, "rb") as f:
            return f.read(32)
    except OSError:
        return b""


def own_reader(source: bytes | str | Path) -> str | None:
    """``tiff`` or ``png16`` for a file Pillow would decode with loss or not at all, else None
    (Pillow reads it, EXIF orientation included).

    ``png16``: a 16-bit colour PNG (Pillow keeps only the high byte of each sample); read
    with OpenCV. ``tiff``: a TIFF with more than 4 samples, several samples of more than 8
    bits or of floats, several pages that make one image's bands, or a value type Pillow
    has no mode for; read with ``tifffile``.
    """
    head = _head(source)
    if head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR":
        return "png16" if head[24] == 16 and head[25] in (2, 4, 6) else None
    if head[:4] not in _TIFF_MAGIC:
        return None
    return "tiff" if _tiff_needs_tifffile(source) else None


def _tiff_needs_tifffile(source: bytes | str | Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(_file(source)) as tif:
            page, series = tif.pages.first, tif.series[0]
            spp, dtype = int(page.samplesperpixel), np.dtype(page.dtype or np.uint8)
            axes = _squeezed(series.shape, series.axes)[1]
    except Exception:  # noqa: BLE001 - let Pillow report what is wrong with the file
        return False
    stacked = any(a not in "YXS" for a in axes)  # pages or planes: Pillow reads the first
    if stacked or spp > 4:
        return True
    if spp == 1:
        return dtype.name not in _PILLOW_TIFF_GRAY
    return dtype != np.uint8


def read_bands(
    source: bytes | str | Path, *, max_pixels: int | None = None, name: str | None = None
) -> Bands:
    """Every band of an image file (or its bytes), in its own value type, EXIF-rotated.

    Palettes become RGB(A), bilevel images 0/255, Pillow's other colour spaces (CMYK, YCbCr,
    LAB, HSV) RGB; ``LA`` / ``RGBA`` keep their alpha as the last band (``alpha`` True). TIFFs
    Pillow cannot keep whole (`own_reader`) are read by ``tifffile``: axes ``YX``, ``YXS``
    (samples) or ``CYX`` (pages or planes as bands); their ``alpha`` comes from the TIFF's
    extra-samples tag. ``max_pixels`` as in `decode_image`.
    """
    label = source_label(source, name)
    reader = own_reader(source)
    if reader == "tiff":
        return _read_tiff(source, label, max_pixels)
    if reader == "png16":
        return _read_png16(source, label, max_pixels)
    img = open_image(source, label, max_pixels)
    mode = img.mode
    try:
        if mode in ("P", "PA"):
            img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("RGBa", "La"):
            img = img.convert(mode[:-1] + "A")
        elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
            img = img.convert("RGB")
        array = np.asarray(img)
    except (OSError, ValueError) as e:
        raise ImageError(f"{label}: cannot convert mode {mode} ({e})") from None
    if array.dtype.byteorder == ">":  # I;16B
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 2:
        array = array[..., None]
    return Bands(np.ascontiguousarray(array), img.mode in ("LA", "RGBA"), mode)


def _file(source: bytes | str | Path) -> io.BytesIO | str:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray) else str(source)


def _squeezed(shape: Sequence[int], axes: str) -> tuple[list[int], str]:
    """``shape`` and ``axes`` without length-1 axes other than Y and X, samples (S) last."""
    kept = [(n, a) for n, a in zip(shape, axes, strict=True) if n > 1 or a in "YX"]
    kept.sort(key=lambda na: na[1] == "S")  # stable: S moves last, the others keep order
    return [n for n, _ in kept], "".join(a for _, a in kept)


def _read_tiff(source: bytes | str | Path, label: str, max_pixels: int | None) -> Bands:
    import tifffile

    try:
        with tifffile.TiffFile(_file(source)) as tif:
            series = tif.series[0]
            shape, axes = _squeezed(series.shape, series.axes)
            h, w = _tiff_size(shape, axes, label)
            if max_pixels is not None and h * w > max_pixels:
                raise ImageError(
                    f"{label}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                    "(segment.max_pixels)"
                )
            array = series.asarray().reshape(shape)
            extra = tuple(getattr(tif.pages.first, "extrasamples", ()) or ())
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds; one line names it
        raise ImageError(f"{label}: cannot decode TIFF ({one_line(e)})") from None
    if axes.endswith("S"):
        array = array if array.ndim == 3 else array[..., None]
    elif array.ndim == 3:  # CYX: pages or planes are the bands
        array = np.moveaxis(array, 0, -1)
    else:
        array = array[..., None]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f" and array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    elif array.dtype.kind not in "uif":
        raise ImageError(f"{label}: TIFF of {array.dtype} values: segray reads integers or floats")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    alpha = bool(extra) and int(extra[-1]) in (1, 2)  # associated / unassociated alpha
    mode = f"{array.dtype.name}x{array.shape[2]}"
    return Bands(np.ascontiguousarray(array), alpha, mode)


def _read_png16(source: bytes | str | Path, label: str, max_pixels: int | None) -> Bands:
    """A 16-bit colour PNG with every bit (OpenCV), as RGB(A) / gray + alpha uint16."""
    import cv2

    head = _head(source)
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{label}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(segment.max_pixels)"
        )
    data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.shape[:2] != (h, w):
        raise ImageError(f"{label}: cannot decode image (16-bit PNG)")
    if array.ndim == 2:
        array = array[..., None]
    colour_type = head[25]
    if colour_type == 4:  # gray + alpha, which OpenCV may expand to BGRA
        array = array[..., [0, -1]] if array.shape[2] == 4 else array
        mode = "LA;16"
    else:
        order = [2, 1, 0, 3][: array.shape[2]]  # BGR(A) -> RGB(A)
        array = array[..., order]
        mode = "RGBA;16" if array.shape[2] == 4 else "RGB;16"
    return Bands(np.ascontiguousarray(array), colour_type in (4, 6), mode)


def _tiff_size(shape: Sequence[int], axes: str, label: str) -> tuple[int, int]:
    """(H, W) of a squeezed TIFF series; an error unless it is YX, YXS or one band axis + YX."""
    ok = axes == "YX" or axes == "YXS" or (len(axes) == 3 and axes.endswith("YX"))
    if not ok:
        raise ImageError(
            f"{label}: TIFF of shape {tuple(shape)} (axes {axes}): segray reads 2-D images "
            "with bands (axes YX, YXS or CYX); save one plane per file"
        )
    y = axes.index("Y")
    return int(shape[y]), int(shape[y + 1])


def tiff_header(path: str | Path) -> tuple[int, int, str, int, int]:
    """``(width, height, mode, bands, bits)`` of a TIFF read by ``tifffile`` (no pixels)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            shape, axes = _squeezed(series.shape, series.axes)
            dtype = np.dtype(series.dtype)
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{path}: cannot open TIFF ({one_line(e)})") from None
    h, w = _tiff_size(shape, axes, str(path))
    bands = shape[-1] if axes.endswith("S") else shape[0] if len(shape) == 3 else 1
    return w, h, f"{dtype.name}x{bands}", bands, dtype.itemsize * 8


# --------------------------------------------------------------------------- mapping
def to_uint8(
    bands: Bands,
    *,
    channels: int,
    intensity_range: Any = None,
    name: str = "<image>",
) -> np.ndarray:
    """``(H, W, channels)`` uint8 of ``bands``, by ``data.intensity_range`` (module docstring),
    a block of rows at a time. Alpha is composited on black when the model takes one band
    fewer than the image has (gray + alpha to RGB too); it is never range-mapped."""
    array = bands.array
    h, w, count = array.shape
    composite = bands.alpha and count in (2, 4) and channels != count
    colour = count - 1 if composite else count
    ranges = intensity_ranges(intensity_range)
    if ranges is not None and len(ranges) not in (1, colour):
        raise ImageError(
            f"{name}: data.intensity_range gives {len(ranges)} ranges but the image has "
            f"{colour} bands ({bands.mode}): give one [lo, hi] or one per band"
        )
    if not (colour == channels or (colour, channels) in ((1, 3), (3, 1))):
        raise ImageError(
            f"{name}: image has {count} bands ({bands.mode}) but the model takes {channels} "
            f"(model.in_channels={channels}): set model.in_channels={colour} or convert the image"
        )
    out = np.empty((h, w, channels), np.uint8)
    step = max(1, _BLOCK_PIXELS // max(1, w))
    for top in range(0, h, step):
        block = array[top : top + step]
        mapped = _map(block[..., :colour], ranges)
        if composite:
            mapped = _composite(mapped, _type_scale(block[..., colour:]))
        out[top : top + step] = _convert(mapped, channels)
    return out


def _map(values: np.ndarray, ranges: list[tuple[float, float]] | None) -> np.ndarray:
    """Values -> uint8 by the type's range (``ranges`` None) or by ``[lo, hi]`` per band."""
    if ranges is None:
        return _type_scale(values)
    lo = np.array([r[0] for r in ranges], np.float64)
    hi = np.array([r[1] for r in ranges], np.float64)
    scaled = values.astype(np.float64)
    scaled -= lo
    scaled *= 255.0 / (hi - lo)
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.rint(scaled, out=scaled)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


def _type_scale(values: np.ndarray) -> np.ndarray:
    """The ``type`` mapping, as Pillow-decoded images always had it."""
    kind, dtype = values.dtype.kind, values.dtype
    if dtype == np.uint8:
        return values
    if dtype == np.uint16:
        return scale_16(values)
    if dtype == np.int32:
        return scale_int32(values)
    if kind == "f":
        return scale_float(values)
    top = float(np.iinfo(dtype).max)  # other integers: negatives clip to 0
    scaled = np.clip(values.astype(np.float64), 0, None) * (255.0 / top)
    return np.rint(scaled).astype(np.uint8)


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return composite_on_black(np.concatenate([colour, alpha], axis=-1))


def _convert(values: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (rows, W, b) -> (rows, W, channels): as is, gray repeated, or Pillow's luma."""
    if values.shape[-1] == channels:
        return values
    if channels == 3:
        return np.repeat(values, 3, axis=-1)
    rgb = values.astype(np.uint32)  # Pillow's RGB -> L: ITU-R 601 luma in 16-bit fixed point
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(np.uint8)[..., None]


# --------------------------------------------------------------------------- statistics
def band_stats(bands: Bands) -> dict[str, Any]:
    """What the fingerprint keeps of one image: value type, bands, alpha (``opaque``,
    ``alpha`` or ``data``: a last band of 2 or 4 that is all 255, only 0/255, or other
    values), the bits its largest value needs, and up to `_VALUES_PER_IMAGE` evenly spaced
    pixels of each data band (for the dataset's percentiles)."""
    array = bands.array
    alpha = None
    if bands.alpha and bands.count in (2, 4):
        last = array[..., -1]
        top = 255 if last.dtype == np.uint8 else np.iinfo(last.dtype).max
        if last.dtype.kind in "ui" and (last == top).all():
            alpha = "opaque"
        elif last.dtype.kind in "ui" and np.isin(last, (0, top)).all():
            alpha = "alpha"
        else:
            alpha = "data"
    data = array[..., :-1] if alpha in ("opaque", "alpha") else array
    flat = data.reshape(-1, data.shape[-1])
    step = max(1, flat.shape[0] // _VALUES_PER_IMAGE)
    finite = flat[::step].astype(np.float64)
    bits = None
    if data.dtype.kind in "ui" and data.size:
        bits = max(1, int(max(int(data.max()), 0)).bit_length())
    return {
        "dtype": data.dtype.name,
        "bands": int(data.shape[-1]),
        "alpha": alpha,
        "bits_used": bits,
        "values": finite,
    }


def summarise_bands(per_image: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fingerprint's band and intensity entries from the sampled images' `band_stats`:
    ``bands`` (data bands, most common), ``alpha`` (counts of opaque/alpha/data last bands),
    ``value_type``, ``bit_depth_used`` (bits the largest integer value needs; None for
    floats), ``high_bit_depth`` and ``percentiles`` (0.5 and 99.5 of each band)."""
    stats = [s for s in per_image if s]
    if not stats:
        return {}
    counts: dict[int, int] = {}
    for s in stats:
        counts[s["bands"]] = counts.get(s["bands"], 0) + 1
    bands = max(counts, key=lambda b: (counts[b], b))
    kept = [s for s in stats if s["bands"] == bands]
    values = np.concatenate([s["values"] for s in kept])
    values = values[np.isfinite(values).all(axis=1)]
    lo_p, hi_p = PERCENTILES
    if values.size:
        pct = np.percentile(values, [lo_p, hi_p], axis=0).T
        percentiles = [[_round(lo), _round(hi)] for lo, hi in pct.tolist()]
    else:
        percentiles = []
    types = sorted({s["dtype"] for s in stats})
    bits = [s["bits_used"] for s in stats if s["bits_used"] is not None]
    alpha: dict[str, int] = {}
    for s in stats:
        if s["alpha"]:
            alpha[s["alpha"]] = alpha.get(s["alpha"], 0) + 1
    return {
        "bands": bands,
        "alpha": alpha,
        "value_type": "/".join(types),
        "bit_depth_used": max(bits) if bits and len(bits) == len(stats) else None,
        "high_bit_depth": any(t != "uint8" for t in types),
        "percentiles": percentiles,
    }


def resolve_intensity_range(value: Any, summary: dict[str, Any]) -> Any:
    """The concrete ``data.intensity_range`` for ``auto`` (module docstring); other values
    as they are. 8-bit data keeps ``auto``, which decodes as ``type`` (unchanged)."""
    if value != "auto" or not summary:
        return value
    pct = summary.get("percentiles") or []
    if not summary.get("high_bit_depth") or not pct:
        return "auto"  # 8-bit data: decoded as it is (auto decodes as type)
    ranges = [[lo, hi if hi > lo else lo + 1] for lo, hi in pct]
    if all(r == ranges[0] for r in ranges):
        return ranges[0]
    return ranges


def _round(x: float) -> float:
    """6 significant digits: stable in JSON and YAML, exact for integer data."""
    return float(f"{x:.6g}")


def mapped_mean_std(per_image: Sequence[dict[str, Any]], intensity_range: Any) -> dict[str, Any]:
    """``{"mean", "std"}`` per band in [0, 1] of the sampled images (`band_stats`) as
    ``intensity_range`` maps them (mean over the images, as the fingerprint's 8-bit ones);
    empty when the range does not fit their bands."""
    ranges = intensity_ranges(intensity_range)
    stats = [s for s in per_image if s and len(s["values"])]
    if ranges is None or not stats:
        return {}
    bands = summarise_bands(stats)["bands"]
    kept = [s["values"] for s in stats if s["bands"] == bands]
    if len(ranges) not in (1, bands):
        return {}
    lo = np.array([r[0] for r in ranges])
    hi = np.array([r[1] for r in ranges])
    means, stds = [], []
    for values in kept:
        mapped = np.clip(np.nan_to_num((values - lo) / (hi - lo)), 0.0, 1.0)
        means.append(mapped.mean(0))
        stds.append(mapped.std(0))
    return {
        "mean": [round(float(x), 4) for x in np.mean(means, axis=0)],
        "std": [round(float(x), 4) for x in np.mean(stds, axis=0)],
    }
