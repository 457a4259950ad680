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
from segray.data.io import Header, ImageError, decode_image, read_header, read_mask
from segray.data.masks import MaskMapper
from segray.data.pet import pet_samples
from segray.data.remote import dataset_root, is_remote, renamed

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
        from segray import __version__

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
            "mask_histogram": {str(v): c for v, c in self.histogram.items()},
            "mask_mode": self.mask_mode,
            "mask_mode_auto": self.auto,
            "mask_settings": self.updates,
            "mask_mode_reason": self.reason,
            "mapping": {str(v): c for v, c in self.mapping.items()},
            "class_fraction": self.class_fraction,
            "foreground_fraction": self.foreground_fraction,
            "suspicious": {
                "counts": dict(Counter(kind for kind, _ in self.suspicious)),
                "first": [text for _, text in self.suspicious[:_KEPT]],
            },
            "error": self.error,
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
        fg = self.foreground_fraction
        fg_text = f"{fg:.1%}" if fg is not None else "?"
        how = "auto" if self.auto else "set"
        mapping = ", ".join(f"{v}->{c}" for v, c in list(self.mapping.items())[:6])
        return (
            f"data: {self.pairs} pairs in {self.root} ({size} median, {modes}); masks "
            f"{_values(self.histogram)}: mask_mode {self.mask_mode} ({how}; {mapping}); "
            f"foreground {fg_text} of {self.sampled} sampled masks"
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
        rows += [
            ("sampled pairs", f"{self.sampled} (pixels read)"),
            ("mask values", _values(self.histogram, limit=12)),
            ("mask_mode", f"{self.mask_mode} ({'auto: ' if self.auto else 'set: '}{self.reason})"),
            ("mapping", ", ".join(f"{v} -> {c}" for v, c in self.mapping.items()) or "-"),
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
) -> Fingerprint:
    """The fingerprint of ``data_cfg``'s dataset (``data.root`` must be set; a URI is read from
    its local mirror, `segray.data.remote.dataset_root`, or from ``root`` when the caller has
    resolved it already).

    Problems (unmatched, unreadable, size-mismatched files) and a mapping that cannot be
    chosen or finds no foreground are recorded, not raised (`Fingerprint.raise_if_unusable`).
    With no foreground in the sample, the remaining masks are read until one has some.
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
        pairs = list(pool.map(_read_pair, order[:sample]))
        rest = order[sample:]
        while True:
            histogram = _histogram(pairs)
            resolved = resolve_mask_mode(data_cfg, histogram)
            mapper, mode, updates, reason, error = resolved
            fractions, empty = _balance(pairs, mapper, data_cfg) if mapper else ({}, [])
            found = any(f > 0 for f in list(fractions.values())[1:])
            if (mapper is None and not _no_foreground(histogram, data_cfg)) or found or not rest:
                break
            more, rest = rest[: max(sample, 1)], rest[max(sample, 1) :]
            pairs += pool.map(lambda s: _read_pair(s, image=False), more)
    if error is None and mapper is not None and not found and pairs:
        error = (
            f"{shown}: no mask has foreground under data.mask_mode={mode} ({reason}); mask "
            f"values {_values(histogram)} over {len(pairs)} masks: {_choose(data_cfg)}"
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
    if is_remote(data_cfg.root):  # name the URI, not its mirror in the cache
        problems.label = str(problems.root).replace(str(root), shown, 1)
        problems.items = [(kind, text.replace(str(root), shown)) for kind, text in problems.items]
    images.update(_intensity(pairs))
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
        mapping=_mapping(mapper, histogram, data_cfg) if mapper else {},
        class_fraction=fractions,
        suspicious=suspicious,
        error=error,
    )


# --------------------------------------------------------------------------- mask mode
Resolved = tuple[MaskMapper | None, str | None, dict[str, Any], str, str | None]


def resolve_mask_mode(data_cfg: DataConfig, histogram: dict[int, int]) -> Resolved:
    """``(mapper, mode, config updates, reason, error)`` for the mask values in ``histogram``.

    An explicit ``data.mask_mode`` is kept (its mapper must accept the values); ``auto`` picks:
    Pet trimaps {1, 2, 3} (``source: pet``) -> trimap; {0..K-1} (plus ``ignore_index``) ->
    index (0/1 masks, palettes); binary {0, v} (0/255, 0/65535, ...) -> threshold at v // 2.
    Anything else is an error naming the values and the settings to choose from.
    """
    k = len(data_cfg.classes)
    values = set(histogram)
    ignore = data_cfg.ignore_index
    root = data_cfg.root
    if data_cfg.mask_mode != "auto":
        mode = data_cfg.mask_mode
        mapper = MaskMapper.from_config(data_cfg)
        try:
            mapper(np.array([sorted(values)], dtype=np.int64), "k")
        except ImageError as e:
            return None, mode, {}, "explicit", f"{root}: data.mask_mode={mode}: {e}"
        reason = {
            "threshold": f"value > {data_cfg.mask_threshold} is foreground",
            "index": "values are class indices",
            "values": "data.mask_values",
            "trimap": f"Pet trimap, border -> {data_cfg.trimap_uncertain}",
        }[mode]
        return mapper, mode, {}, reason, None
    if not values:
        return None, None, {}, "", f"{root}: no readable mask to choose data.mask_mode from"
    updates: dict[str, Any]
    if data_cfg.source == "pet" and values <= {1, 2, 3}:
        updates, reason = {"data.mask_mode": "trimap"}, "Pet trimap {1, 2, 3}"
    elif values <= set(range(k)) | {ignore} and values - {0, ignore}:
        ignored = f", {ignore} ignored" if ignore in values else ""
        updates, reason = {"data.mask_mode": "index"}, f"values in 0..{k - 1}{ignored}"
    elif k == 2 and len(values) == 2 and 0 in values and max(values) > 1:
        top = max(values)
        updates = {"data.mask_mode": "threshold", "data.mask_threshold": top // 2}
        reason = f"binary 0/{top}, value > {top // 2} is foreground"
    else:
        if _no_foreground(histogram, data_cfg):
            problem = "no foreground: every sampled mask is background"
        else:
            problem = "cannot choose data.mask_mode"
        return (
            None,
            None,
            {},
            "",
            (
                f"{root}: {problem}; mask values {_values(histogram)} for {k} classes "
                f"{data_cfg.classes}: {_choose(data_cfg, sorted(values))}"
            ),
        )
    cfg = data_cfg.model_copy(update={k_.split(".")[1]: v for k_, v in updates.items()})
    return MaskMapper.from_config(cfg), updates["data.mask_mode"], updates, reason, None


def _no_foreground(histogram: dict[int, int], data_cfg: DataConfig) -> bool:
    return bool(histogram) and set(histogram) <= {0, data_cfg.ignore_index}


def _choose(data_cfg: DataConfig, values: Sequence[int] = ()) -> str:
    """The settings a user chooses from, as one phrase."""
    k = len(data_cfg.classes)
    options = [
        "data.mask_mode=threshold data.mask_threshold=T (binary: value > T is foreground)",
        f"data.mask_mode=index (values are class indices 0..{k - 1})",
    ]
    if len(values) == k:
        pairs = ",".join(f"{v}:{i}" for i, v in enumerate(values))
        options.append(f"data.mask_mode=values 'data.mask_values={{{pairs}}}'")
    else:
        options.append("data.mask_mode=values 'data.mask_values={value:class,...}'")
    if values and set(values) <= {1, 2, 3} and k == 2:
        options.insert(0, "data.mask_mode=trimap (Oxford Pet: 1 pet, 2 background, 3 border)")
    return "set one of " + "; ".join(options)


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


def _read_pair(sample: Sample, image: bool = True) -> _Pair:
    """Mask value counts (and, with ``image``, intensity statistics) of one pair."""
    pair = _Pair(sample)
    try:
        if sample.mask is not None:
            pair.values, pair.counts = np.unique(read_mask(sample.mask), return_counts=True)
        if image:
            mode = read_header(sample.image).mode
            pixels = decode_image(sample.image, channels=1 if mode in _GRAY_MODES else 3)
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


def _values(histogram: dict[int, int], limit: int = 8) -> str:
    """``{0: 91.2%, 255: 8.8%}`` (pixel share of each value), the most frequent first if more
    than ``limit``."""
    total = sum(histogram.values()) or 1
    shown = sorted(histogram.items(), key=lambda vc: -vc[1])[:limit]
    text = ", ".join(f"{v}: {c / total:.1%}" for v, c in sorted(shown))
    more = f", ... {len(histogram)} values" if len(histogram) > limit else ""
    return "{" + text + more + "}"
