"""Reading a dataset for its fingerprint: every file's header, and the pixels of sampled pairs.

`segray.data.inspect.fingerprint` runs these on a thread pool and decides from what they return.

    images, masks, bad = read_headers(pool, samples, problems)   # header statistics
    pairs = [read_pair(s) for s in samples[:n]]                   # mask value counts, intensities
    histogram = mask_histogram(pairs)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segray.data.folder import Problems, Sample
from segray.data.intensity import band_stats, read_bands, to_uint8
from segray.data.io import Header, ImageError, read_header, read_mask

__all__ = [
    "Pair",
    "intensity_means",
    "mask_histogram",
    "read_headers",
    "read_pair",
    "spread_order",
]

_GRAY_MODES = ("1", "L", "LA", "P", "PA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass
class Pair:
    """The pixels of one sampled pair: mask value counts and image intensity statistics."""

    sample: Sample
    values: np.ndarray | None = None  # unique raw mask values
    counts: np.ndarray | None = None  # pixels per value
    mean: list[float] | None = None  # image, per channel, in [0, 1]
    std: list[float] | None = None
    constant: int | None = None  # the image's only value, if it has one
    bands: dict[str, Any] | None = None  # segray.data.intensity.band_stats of the image
    error: str | None = None  # why a file could not be used, without its name
    error_path: str | None = None


def read_headers(
    pool: ThreadPoolExecutor, samples: Sequence[Sample], problems: Problems
) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """Header statistics of every image and mask, and the unreadable files; those and size
    mismatches are added to ``problems`` (as `find_pairs` words them)."""

    def read(path: str) -> Header | str:
        try:
            return read_header(path)
        except ImageError as e:
            return str(e).removeprefix(f"{path}: ")

    image_h = list(pool.map(read, [s.image for s in samples]))
    mask_h = list(pool.map(read, [s.mask or "" for s in samples]))
    bad: set[str] = set()
    for s, ih, mh in zip(samples, image_h, mask_h, strict=True):
        for path, h in ((s.image, ih), (s.mask or "", mh)):
            if isinstance(h, str):
                problems.add("unreadable file", Path(path), h)
                bad.add(path)
        if not isinstance(ih, Header) or not isinstance(mh, Header):
            continue
        if (ih.width, ih.height) != (mh.width, mh.height):
            problems.add(
                "size mismatch",
                Path(s.image),
                f"{ih.width}x{ih.height} but {problems.rel(Path(s.mask or ''))} is "
                f"{mh.width}x{mh.height}",
            )
    images = _header_stats(h for h in image_h if isinstance(h, Header))
    masks = _header_stats(h for h in mask_h if isinstance(h, Header))
    return images, masks, bad


_STATS: dict[str, Callable[[np.ndarray], float]] = {
    "min": np.min,
    "median": np.median,
    "max": np.max,
}


def _header_stats(headers: Iterable[Header]) -> dict[str, Any]:
    hs = list(headers)
    if not hs:
        return {"count": 0}
    out: dict[str, Any] = {"count": len(hs)}
    for axis in ("width", "height"):
        arr = np.array([getattr(h, axis) for h in hs])
        out[axis] = {name: int(fn(arr)) for name, fn in _STATS.items()}
    out["modes"] = dict(Counter(h.mode for h in hs).most_common())
    out["channels"] = {str(c): n for c, n in Counter(h.bands for h in hs).most_common()}
    out["bit_depth"] = {str(b): n for b, n in Counter(h.bit_depth for h in hs).most_common()}
    out["formats"] = dict(Counter(h.format for h in hs).most_common())
    return out


def read_pair(sample: Sample, image: bool = True, colors: bool = False) -> Pair:
    """Mask value counts (and, with ``image``, intensity statistics) of one pair; ``colors``:
    a colour mask's values are its packed colours (`read_mask`)."""
    pair = Pair(sample)
    try:
        if sample.mask is not None:
            raw = read_mask(sample.mask, colors=colors)
            pair.values, pair.counts = np.unique(raw, return_counts=True)
        if image:
            bands = read_bands(sample.image)
            pair.bands = band_stats(bands)
            channels = 1 if bands.mode in _GRAY_MODES else pair.bands["bands"]
            pixels = to_uint8(bands, channels=channels, name=str(sample.image))
            flat = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
            pair.mean, pair.std = flat.mean(0).tolist(), flat.std(0).tolist()
            lo, hi = int(pixels.min()), int(pixels.max())
            pair.constant = lo if lo == hi else None
    except ImageError as e:
        path = sample.mask if pair.values is None else sample.image
        pair.error, pair.error_path = str(e).removeprefix(f"{path}: "), path
        pair.values = pair.counts = None
    return pair


def mask_histogram(pairs: Iterable[Pair]) -> dict[int, int]:
    total: Counter[int] = Counter()
    for p in pairs:
        if p.values is not None and p.counts is not None:
            total.update(dict(zip(p.values.tolist(), p.counts.tolist(), strict=True)))
    return dict(sorted(total.items()))


def intensity_means(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Mean of the sampled images' per-channel means and standard deviations (in [0, 1])."""
    stats = [(p.mean, p.std) for p in pairs if p.mean is not None and p.std is not None]
    widths = Counter(len(m) for m, _ in stats)
    if not widths:
        return {}
    c = widths.most_common(1)[0][0]
    kept = [(m, s) for m, s in stats if len(m) == c]
    return {
        "mean": [round(float(x), 4) for x in np.mean([m for m, _ in kept], axis=0)],
        "std": [round(float(x), 4) for x in np.mean([s for _, s in kept], axis=0)],
    }


def spread_order(n: int) -> list[int]:
    """0..n-1 reordered so that every prefix is spread evenly over the range (bit reversal
    of a stride): the first N indices sample the whole sorted dataset, not its start."""
    order, seen = [], set()
    step = 1 << max(n - 1, 1).bit_length()
    while step >= 1:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return order
