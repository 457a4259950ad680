"""The dataset's fingerprint: what is in it, read before anything trains on it.

As nnU-Net does before it plans a network, segray reads every image and mask header (size,
mode, bands, bit depth) and the pixels of a bounded sample of pairs, then reports the mask
value histogram, the class mapping it will use (``data.mask_mode: auto`` is chosen here), the
class balance and suspicious files. `segray inspect` prints it; `prepare_data` runs it before
every training and search and writes ``fingerprint.json`` next to their outputs.

    fp = fingerprint(cfg.data)          # never raises on a bad dataset: fp.error / fp.problems
    print(fp.table()); fp.save("runs/a")
    cfg = apply_overrides(cfg, fp.updates)   # the concrete data.mask_mode (and its settings)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segray.config import DataConfig
from segray.data.folder import Problems, Sample, pair_files
from segray.data.intensity import (
    band_stats,
    mapped_mean_std,
    read_bands,
    resolve_intensity_range,
    to_uint8,
)
from segray.data.intensity import summarise_bands as _summarise_bands
from segray.data.io import Header, ImageError, read_header, read_mask
from segray.data.mask_mode import (
    choose,
    no_foreground,
    resolve_mask_mode,
    value_name,
    values_text,
)
from segray.data.masks import MaskMapper
from segray.data.pet import pet_samples
from segray.data.remote import dataset_root, is_remote, renamed
from segray.data.split import slice_groups_hint

__all__ = ["DEFAULT_SAMPLE", "Fingerprint", "fingerprint", "resolve_mask_mode"]

DEFAULT_SAMPLE = 256  # pairs whose pixels are read (evenly spaced over the sorted keys)
_LISTED = 5  # offenders named in the table and in one-line errors
_KEPT = 50  # offenders kept in fingerprint.json
_GRAY_MODES = ("1", "L", "LA", "P", "PA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass
class _Pair:
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


@dataclass
class Fingerprint:
    """A dataset's fingerprint (`fingerprint`); ``to_dict`` is ``fingerprint.json``."""

    root: str
    source: str
    pairs: int
    problems: Problems
    images: dict[str, Any]
    masks: dict[str, Any]
    sampled: int
    histogram: dict[int, int]
    mask_mode: str | None
    auto: bool
    updates: dict[str, Any]
    reason: str
    mapping: dict[int, str]
    class_fraction: dict[str, float]
    suspicious: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    warning: str | None = None  # a mask reading chosen with a caveat (near-binary masks)
    intensity_range: Any = "auto"  # data.intensity_range, ``auto`` resolved (from images)

    @property
    def foreground_fraction(self) -> float | None:
        """Fraction of the sampled labelled pixels that are any class but background."""
        if not self.class_fraction:
            return None
        return 1.0 - next(iter(self.class_fraction.values()))

    @property
    def usable(self) -> bool:
        """No pairing/header problem and a mapping that finds foreground."""
        return not self.problems.items and self.error is None

    def raise_if_unusable(self) -> None:
        """The pairing/header problems (one DatasetError), else the mapping's error, if any."""
        from segray.data.folder import DatasetError

        self.problems.raise_if_any()
        if self.error is not None:
            raise DatasetError(self.error)

    def to_dict(self) -> dict[str, Any]:
        from segray.version import __version__

        return {
            "segray_version": __version__,
            "root": self.root,
            "source": self.source,
            "pairs": self.pairs,
            "problems": {
                "counts": dict(self.problems.counts),
                "first": [text for _, text in self.problems.items[:_KEPT]],
            },
            "images": self.images,
            "masks": self.masks,
            "sampled_pairs": self.sampled,
            "mask_histogram": {value_name(v): c for v, c in self.histogram.items()},
            "mask_mode": self.mask_mode,
            "mask_mode_auto": self.auto,
            "mask_settings": self.updates,
            "mask_mode_reason": self.reason,
            "mapping": {value_name(v): c for v, c in self.mapping.items()},
            "class_fraction": self.class_fraction,
            "foreground_fraction": self.foreground_fraction,
            "suspicious": {
                "counts": dict(Counter(kind for kind, _ in self.suspicious)),
                "first": [text for _, text in self.suspicious[:_KEPT]],
            },
            "error": self.error,
            "warning": self.warning,
            "intensity_range": self.intensity_range,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, folder: str | Path) -> Path | str:
        """Write ``fingerprint.json`` into ``folder`` (a local path, created, or a URI);
        returns where it went."""
        from segray.storage import Location

        loc = Location.parse(folder).join("fingerprint.json")
        loc.write(self.to_json().encode())
        return Path(loc.path) if loc.is_local else loc.uri

    def summary(self) -> str:
        """One line: pairs, image size and mode, the mask mapping, the foreground fraction."""
        im = self.images
        size = f"{_size(im, 'median')}" if im.get("count") else "?"
        modes = "/".join(im.get("modes", {})) or "?"
        if im.get("bands") not in (None, 1, 3):
            modes += f", {im['bands']} bands"
        if isinstance(self.intensity_range, list):
            bits = im.get("bit_depth_used")
            depth = f"{bits}-bit" if bits else str(im.get("value_type"))
            modes += f", {depth}: intensity_range {self.intensity_range}"
        fg = self.foreground_fraction
        fg_text = f"{fg:.1%}" if fg is not None else "?"
        how = "auto" if self.auto else "set"
        mapping = ", ".join(f"{v}->{c}" for v, c in _ranges(self.mapping)[:6])
        warning = f"; warning: {self.warning}" if self.warning else ""
        return (
            f"data: {self.pairs} pairs in {self.root} ({size} median, {modes}); masks "
            f"{values_text(self.histogram)}: mask_mode {self.mask_mode} ({how}; {mapping}); "
            f"foreground {fg_text} of {self.sampled} sampled masks{warning}"
        )

    def table(self) -> str:
        """The readable report `segray inspect` prints."""
        rows: list[tuple[str, str]] = [
            ("dataset", f"{self.root} ({self.source})"),
            ("pairs", str(self.pairs)),
        ]
        for what, info in (("images", self.images), ("masks", self.masks)):
            if not info.get("count"):
                continue
            rows += [
                (what, f"{info['count']} files; {_counts(info['modes'])} mode"),
                ("  size min/median/max", " / ".join(_size(info, k) for k in _STATS)),
                ("  channels", _counts(info["channels"])),
                ("  bit depth", _counts(info["bit_depth"])),
            ]
            if info.get("mean"):
                mean, std = (", ".join(f"{x:.3f}" for x in info[k]) for k in ("mean", "std"))
                rows.append(("  mean / std", f"[{mean}] / [{std}]"))
            rows += _band_rows(info, self.intensity_range)
        rows += [
            ("sampled pairs", f"{self.sampled} (pixels read)"),
            ("mask values", values_text(self.histogram, limit=12)),
            ("mask_mode", f"{self.mask_mode} ({'auto: ' if self.auto else 'set: '}{self.reason})"),
            ("mapping", ", ".join(f"{v} -> {c}" for v, c in _ranges(self.mapping)) or "-"),
            ("class balance", ", ".join(f"{c} {f:.1%}" for c, f in self.class_fraction.items())),
        ]
        fg = self.foreground_fraction
        rows.append(("foreground", f"{fg:.1%}" if fg is not None else "-"))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        for title, items in (
            ("problems", [t for _, t in self.problems.items]),
            ("suspicious", [t for _, t in self.suspicious]),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {t}" for t in items[:_LISTED]]
                if len(items) > _LISTED:
                    lines.append(f"  ... and {len(items) - _LISTED} more")
        if self.warning:
            lines.append(f"warning: {self.warning}")
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- entry point
def fingerprint(
    data_cfg: DataConfig,
    *,
    sample: int = DEFAULT_SAMPLE,
    workers: int | None = None,
    root: Path | None = None,
    infer_classes: bool = False,
) -> Fingerprint:
    """The fingerprint of ``data_cfg``'s dataset (``data.root`` must be set; a URI is read from
    its local mirror, `segray.data.remote.dataset_root`, or from ``root`` when the caller has
    resolved it already).

    Problems (unmatched, unreadable, size-mismatched files) and a mapping that cannot be
    chosen or finds no foreground are recorded, not raised (`Fingerprint.raise_if_unusable`).
    With no foreground in the sample, the remaining masks are read until one has some.
    ``infer_classes``: index masks 0..K-1 give K classes when ``data.classes`` is the default
    (`resolve_mask_mode`; `segray.data.inspect_data` asks for it, a checkpoint's config not).
    """
    if not data_cfg.root:
        raise ValueError("fingerprint needs data.root (run prepare_data first)")
    root = root or dataset_root(data_cfg)
    shown = data_cfg.root.rstrip("/") if is_remote(data_cfg.root) else str(root)
    with renamed(data_cfg.root, root):
        samples, problems = _list(data_cfg, root)
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(workers, thread_name_prefix="segray-inspect") as pool:
        images, masks, bad = _headers(pool, samples, problems)
        readable = [s for s in samples if s.image not in bad and s.mask not in bad]
        order = [readable[i] for i in _spread(len(readable))]
        colors = bool(data_cfg.mask_colors)
        pairs = list(pool.map(lambda s: _read_pair(s, colors=colors), order[:sample]))
        rest = order[sample:]
        while True:
            histogram = _histogram(pairs)
            resolved = resolve_mask_mode(
                data_cfg, histogram, masks=masks, infer_classes=infer_classes
            )
            mapper, mode, updates, reason, error = resolved
            resolved_cfg = data_cfg.model_copy(
                update={k.split(".")[1]: v for k, v in updates.items()}
            )
            fractions, empty = _balance(pairs, mapper, resolved_cfg) if mapper else ({}, [])
            found = any(f > 0 for f in list(fractions.values())[1:])
            if (mapper is None and not no_foreground(histogram, data_cfg)) or found or not rest:
                break
            more, rest = rest[: max(sample, 1)], rest[max(sample, 1) :]
            pairs += pool.map(lambda s: _read_pair(s, image=False, colors=colors), more)
    if error is None and mapper is not None and not found and pairs:
        error = (
            f"{shown}: no mask has foreground under data.mask_mode={mode} ({reason}); mask "
            f"values {values_text(histogram)} over {len(pairs)} masks: {choose(data_cfg)}"
        )
    for p in pairs:
        if p.error is not None and p.error_path is not None:
            problems.add("unusable file", Path(p.error_path), p.error)
    suspicious = [("empty mask", f"{_rel(root, p)}: empty mask (all background)") for p in empty]
    suspicious += [
        (
            "constant image",
            f"{_rel(root, p.sample.image)}: constant image (every pixel {p.constant})",
        )
        for p in pairs
        if p.constant is not None
    ]
    if data_cfg.group_by is None and data_cfg.split_ids is None:  # slices of one volume leak
        slices = slice_groups_hint([s.key for s in samples])
        suspicious[:0] = [("slices of volumes", f"warning: {slices}")] if slices else []
    if is_remote(data_cfg.root):  # name the URI, not its mirror in the cache
        problems.label = str(problems.root).replace(str(root), shown, 1)
        problems.items = [(kind, text.replace(str(root), shown)) for kind, text in problems.items]
    images.update(_intensity(pairs))
    images.update(_summarise_bands([p.bands for p in pairs if p.bands]))
    intensity_range = resolve_intensity_range(data_cfg.intensity_range, images)
    images.update(mapped_mean_std([p.bands for p in pairs if p.bands], intensity_range))
    return Fingerprint(
        root=shown,
        source=data_cfg.source,
        pairs=len(samples),
        problems=problems,
        images=images,
        masks=masks,
        sampled=len(pairs),
        histogram=histogram,
        mask_mode=mode,
        auto=data_cfg.mask_mode == "auto",
        updates=updates,
        reason=reason,
        mapping=_mapping(mapper, histogram, resolved_cfg) if mapper else {},
        class_fraction=fractions,
        suspicious=suspicious,
        error=error,
        warning=_warning(mode, updates, reason),
        intensity_range=intensity_range,
    )


def _band_rows(info: dict[str, Any], intensity_range: Any) -> list[tuple[str, str]]:
    """The table's rows on the sampled images' bands, alpha and intensities."""
    if "bands" not in info:
        return []
    alpha = ", ".join(f"{kind} ({n})" for kind, n in info["alpha"].items())
    rows = [("  data bands", f"{info['bands']}" + (f"; last band: {alpha}" if alpha else ""))]
    bits = info.get("bit_depth_used")
    used = f", {bits} bits used" if bits is not None else ""
    pct = "; ".join(f"{lo:g}..{hi:g}" for lo, hi in info["percentiles"])
    rows.append(("  values", f"{info['value_type']}{used}; 0.5..99.5 percentiles {pct}"))
    rows.append(("  intensity_range", str(intensity_range)))
    return rows


def _warning(mode: str | None, updates: dict[str, Any], reason: str) -> str | None:
    """What ``auto`` chose that a user should know of: in-between mask values read as binary."""
    if mode == "threshold" and updates and reason.startswith("near-binary"):
        return f"masks are {reason}; set data.mask_mode and data.mask_threshold to choose"
    return None


def _mapping(mapper: MaskMapper, histogram: dict[int, int], data_cfg: DataConfig) -> dict:
    values = np.array([sorted(histogram)], dtype=np.int64)
    classes = mapper(values, "k")[0].tolist()
    out: dict[int, str] = {}
    for value, cls in zip(values[0].tolist(), classes, strict=True):
        if mapper.mode == "trimap" and value == 3 and mapper.trimap_uncertain == "random":
            out[value] = "background or foreground (seeded per image)"
        else:
            out[value] = "ignored" if cls == mapper.ignore_index else data_cfg.classes[cls]
    return out


def _balance(
    pairs: Sequence[_Pair], mapper: MaskMapper, data_cfg: DataConfig
) -> tuple[dict[str, float], list[str]]:
    """Class fractions over the labelled sampled pixels, and the masks with no foreground."""
    totals = np.zeros(len(data_cfg.classes), dtype=np.int64)
    empty = []
    for p in pairs:
        if p.values is None or p.counts is None:
            continue
        classes = mapper(p.values[None], p.sample.key)[0]
        labelled = classes != mapper.ignore_index
        per = np.bincount(classes[labelled], p.counts[labelled], minlength=len(totals))
        totals += per.astype(np.int64)
        if not per[1:].any():
            empty.append(p.sample.mask or p.sample.image)
    n = int(totals.sum())
    if not n:
        return {}, empty
    return {c: float(t) / n for c, t in zip(data_cfg.classes, totals, strict=True)}, empty


# --------------------------------------------------------------------------- reading
def _list(data_cfg: DataConfig, root: Path) -> tuple[list[Sample], Problems]:
    if data_cfg.source == "pet":
        return pet_samples(root, "trainval"), Problems(root)
    if data_cfg.source == "synthetic":
        return pair_files(root / "images", root / "masks")
    return pair_files(
        root / data_cfg.images_dir, root / data_cfg.masks_dir, mask_suffix=data_cfg.mask_suffix
    )


def _headers(
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


def _read_pair(sample: Sample, image: bool = True, colors: bool = False) -> _Pair:
    """Mask value counts (and, with ``image``, intensity statistics) of one pair; ``colors``:
    a colour mask's values are its packed colours (`read_mask`)."""
    pair = _Pair(sample)
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


def _histogram(pairs: Iterable[_Pair]) -> dict[int, int]:
    total: Counter[int] = Counter()
    for p in pairs:
        if p.values is not None and p.counts is not None:
            total.update(dict(zip(p.values.tolist(), p.counts.tolist(), strict=True)))
    return dict(sorted(total.items()))


def _intensity(pairs: Sequence[_Pair]) -> dict[str, Any]:
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


def _spread(n: int) -> list[int]:
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


# --------------------------------------------------------------------------- formatting
def _rel(root: Path, path: str | Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _size(info: dict[str, Any], stat: str) -> str:
    return f"{info['width'][stat]}x{info['height'][stat]}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" if len(counts) > 1 else str(k) for k, v in counts.items())


def _ranges(mapping: dict[int, str]) -> list[tuple[str, str]]:
    """``(values, class)`` with runs of three or more values (in order) of one class joined:
    ``0..126`` for the values from 0 to 126 that the masks hold."""
    out: list[tuple[str, str]] = []
    run: list[int] = []
    items = list(mapping.items())
    for i, (value, cls) in enumerate(items):
        run.append(value)
        nxt = items[i + 1] if i + 1 < len(items) else None
        if nxt is None or nxt[1] != cls:
            shown = value_name(run[0]) if len(run) < 3 else f"{run[0]}..{run[-1]}"
            out += [(value_name(v), cls) for v in run] if len(run) == 2 else [(shown, cls)]
            run = []
    return out
