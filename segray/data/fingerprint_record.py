"""A dataset's fingerprint: the record `segray.data.inspect.fingerprint` returns, and every way
it is shown: ``fingerprint.json`` (`Fingerprint.to_dict`), the one-line summary each run prints
and the table `segray inspect` prints.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segray.data.folder import Problems
from segray.data.mask_mode import value_name, values_text

__all__ = ["Fingerprint"]

_LISTED = 5  # offenders named in the table and in one-line errors
_KEPT = 50  # offenders kept in fingerprint.json
_SIZE_STATS = ("min", "median", "max")


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
    # the samples as listed (`segray.data.samples.Listing`): what trials, workers and folds
    # get instead of listing again; not part of fingerprint.json
    listing: Any = field(default=None, repr=False, compare=False)

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
                ("  size min/median/max", " / ".join(_size(info, k) for k in _SIZE_STATS)),
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
