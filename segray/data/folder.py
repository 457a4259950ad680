"""Image/mask pairs from two folders, matched by relative path without extension.

``images/a/1.jpg`` pairs with ``masks/a/1.png`` (key ``"a/1"``), and with the usual mask-name
conventions ``masks/a/1_mask.gif``, ``masks/a/1_segmentation.png`` or ``masks/a/1<suffix>.png``
(``data.mask_suffix``); two candidate masks for one image are an error. nnU-Net's layout pairs
too: ``imagesTr/case_000_0000.png`` (channel 0000) with ``labelsTr/case_000.png``. Every
problem in a dataset is collected and reported at once, in one `DatasetError`, so a user fixes
a folder in one pass:

    dataset /data/x: 3 problems (2 images without a mask, 1 size mismatch); first:
    images/a.png: no mask in /data/x/masks; images/b.png: no mask in /data/x/masks; ...
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from segray.data.io import IMAGE_EXTENSIONS, ImageError, image_size
from segray.errors import UserError

__all__ = [
    "MASK_SUFFIXES",
    "IMAGE_DIRS",
    "MASK_DIRS",
    "DatasetError",
    "Problems",
    "Sample",
    "find_layout",
    "check_headers",
    "find_pairs",
    "list_images",
    "pair_files",
]

_MAX_LISTED = 5
# Mask names that add a suffix to their image's name: x.png <-> x_mask.png, x_segmentation.png.
MASK_SUFFIXES = ("_mask", "_segmentation")
# Image and mask folder names of a dataset root (case-insensitive), nnU-Net's among them.
IMAGE_DIRS = ("images", "image", "imgs", "img", "inputs", "input", "x", "imagestr")
MASK_DIRS = (
    "masks",
    "mask",
    "labels",
    "label",
    "annotations",
    "gt",
    "ground_truth",
    "y",
    "labelstr",
)
# nnU-Net's channel suffix: imagesTr/case_000_0000.png is channel 0 of labelsTr/case_000.png.
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


class DatasetError(UserError, ValueError):
    """A dataset folder that cannot be used as it is; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    """One image and its mask: ``key`` is the relative path without extension, '/'-separated."""

    key: str
    image: str
    mask: str | None


def find_layout(names: list[str]) -> tuple[str, str] | None:
    """(images_dir, masks_dir) among the folder names of a dataset root, or None."""
    lower = {n.lower(): n for n in names}
    image = next((lower[n] for n in IMAGE_DIRS if n in lower), None)
    mask = next((lower[n] for n in MASK_DIRS if n in lower), None)
    return (image, mask) if image and mask else None


def _level_hint(images_dir: Path, masks_dir: Path) -> str:
    """Why the image folder is missing, when the dataset folder was given one level off: the
    image folder itself (``--data x/images``), or a root whose folders have other names."""
    root = images_dir.parent
    if not root.is_dir():
        return ""
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    layout = find_layout(names)
    if layout is not None:
        return (
            f"; {root} holds {layout[0]}/ and {layout[1]}/: set data.images_dir={layout[0]} "
            f"data.masks_dir={layout[1]}"
        )
    holds_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file())
    parent = root.parent
    if holds_images or root.name.lower() in IMAGE_DIRS:
        if (parent / masks_dir.name).is_dir() or find_layout(
            [p.name for p in parent.iterdir() if p.is_dir()]
        ):
            return f"; {root} is the image folder itself: give its parent {parent}"
        return f"; {root} holds images itself: give the folder that holds images/ and masks/"
    return ""


def list_images(folder: str | Path, what: str = "image") -> dict[str, list[Path]]:
    """Key -> image files under ``folder`` (recursive, hidden files and folders skipped).

    More than one file for a key (``a.png`` and ``a.jpg``) is kept, for the caller to report.
    An empty or missing folder is a one-line DatasetError naming it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: {what} folder not found")
    found: dict[str, list[Path]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath, filename)
            if filename.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found[path.relative_to(root).with_suffix("").as_posix()].append(path)
    if not found:
        raise DatasetError(
            f"{root}: no {what} files found (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return dict(found)


def pair_files(
    images_dir: str | Path, masks_dir: str | Path, *, mask_suffix: str | None = None
) -> tuple[list[Sample], Problems]:
    """The (image, mask) pairs, sorted by key, and the pairing problems (not raised).

    A mask matches the image with its key, or, failing that, the image whose key it extends by
    ``mask_suffix`` or one of `MASK_SUFFIXES`, or the image that is its only nnU-Net channel
    (``case_000_0000`` for ``case_000``). Problems: two files with one key, images without
    a mask, masks without an image, images with two candidate masks, cases with several
    channel files. A missing image folder is an error with a hint when the dataset folder
    looks one level off.
    """
    images_dir, masks_dir = Path(images_dir).absolute(), Path(masks_dir).absolute()
    if not images_dir.is_dir():
        raise DatasetError(
            f"{images_dir}: image folder not found{_level_hint(images_dir, masks_dir)}"
        )
    images = list_images(images_dir, "image")
    masks = list_images(masks_dir, "mask")
    problems = Problems(Path(os.path.commonpath([images_dir, masks_dir])))
    suffixes = tuple(dict.fromkeys(s for s in (mask_suffix, *MASK_SUFFIXES) if s))

    for files in (images, masks):
        for paths in files.values():
            for extra in paths[1:]:
                problems.add("duplicate name", extra, f"same name as {problems.rel(paths[0])}")
    candidates: dict[str, list[str]] = defaultdict(list)  # image key -> mask keys
    channels: dict[str, list[str]] = defaultdict(list)  # case_000 -> [case_000_0000, ...]
    for key in images:
        if (m := _CHANNEL.match(key)) is not None and m.group(1) not in images:
            channels[m.group(1)].append(key)
    for key in sorted(masks):
        owner = key if key in images else None
        for suffix in suffixes if owner is None else ():
            if key.endswith(suffix) and key[: -len(suffix)] in images:
                owner = key[: -len(suffix)]
                break
        if owner is None and len(channels.get(key, ())) > 1:
            files = sorted(channels[key])
            names = ", ".join(problems.rel(images[k][0]) for k in files)
            problems.add(
                "multi-channel case",
                masks[key][0],
                f"{len(files)} channel files ({names}): segray reads one image file per "
                "mask: merge the channels into one multi-band TIFF",
            )
            for k in files:  # reported here, not also as images without a mask
                candidates[k].append("")
            continue
        if owner is None and key in channels:
            owner = channels[key][0]
        if owner is None:
            problems.add("mask without an image", masks[key][0], f"no image in {images_dir}")
        else:
            candidates[owner].append(key)
    samples = []
    for key in sorted(images):
        found = candidates.get(key, [])
        if found == [""]:  # a channel of a multi-channel case, reported with its mask
            continue
        if not found:
            problems.add("image without a mask", images[key][0], f"no mask in {masks_dir}")
        elif len(found) > 1:
            names = " and ".join(problems.rel(masks[k][0]) for k in found)
            problems.add("ambiguous mask", images[key][0], f"two candidate masks, {names}")
        else:
            samples.append(Sample(key, str(images[key][0]), str(masks[found[0]][0])))
    # problems in the order a user reads a folder: duplicates, unmatched images, then masks
    order = (
        "duplicate name",
        "image without a mask",
        "ambiguous mask",
        "multi-channel case",
        "mask without an image",
    )
    problems.sort(order)
    return samples, problems


def find_pairs(
    images_dir: str | Path,
    masks_dir: str | Path,
    *,
    check: bool = True,
    mask_suffix: str | None = None,
) -> list[Sample]:
    """Every (image, mask) pair, sorted by key; all problems raised together as a DatasetError.

    Problems: those of `pair_files`, and (with ``check``, from the file headers) unreadable
    files and image/mask size mismatches.
    """
    samples, problems = pair_files(images_dir, masks_dir, mask_suffix=mask_suffix)
    if check:
        check_headers(samples, problems)
    problems.raise_if_any()
    return samples


def check_headers(samples: list[Sample], problems: Problems) -> None:
    """Add to ``problems`` the unreadable files and image/mask size mismatches of ``samples``
    (from the file headers)."""
    for sample in samples:
        sizes = []
        for path in (sample.image, sample.mask):
            if path is None:
                continue
            try:
                sizes.append(image_size(path))
            except ImageError as e:
                problems.add("unreadable file", Path(path), str(e).removeprefix(f"{path}: "))
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            (iw, ih), (mw, mh) = sizes
            problems.add(
                "size mismatch",
                Path(sample.image),
                f"{iw}x{ih} but {problems.rel(Path(sample.mask))} is {mw}x{mh}",
            )


class Problems:
    """Collects (kind, file, problem) and raises them as one summarised DatasetError."""

    _PLURALS = {
        "image without a mask": "images without a mask",
        "mask without an image": "masks without an image",
        "size mismatch": "size mismatches",
    }

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)  # how messages name the dataset (a URI for a mirrored one)
        self.items: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    def copy(self) -> Problems:
        other = Problems(self.root)
        other.label, other.items, other.counts = self.label, list(self.items), dict(self.counts)
        return other

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add(self, kind: str, path: Path, problem: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.items.append((kind, f"{self.rel(path)}: {problem}"))

    def sort(self, kinds: tuple[str, ...]) -> None:
        """Order the problems (and their counts) by kind, stably, in the order of ``kinds``."""
        rank = {k: i for i, k in enumerate(kinds)}
        self.items.sort(key=lambda item: rank.get(item[0], len(kinds)))
        self.counts = dict(sorted(self.counts.items(), key=lambda kc: rank.get(kc[0], len(kinds))))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        n = len(self.items)
        kinds = ", ".join(
            f"{c} {kind if c == 1 else self._PLURALS.get(kind, kind + 's')}"
            for kind, c in self.counts.items()
        )
        listed = "; ".join(text for _, text in self.items[:_MAX_LISTED])
        more = f"; ... and {n - _MAX_LISTED} more" if n > _MAX_LISTED else ""
        raise DatasetError(
            f"dataset {self.label}: {n} problem{'s' * (n != 1)} ({kinds}); first: {listed}{more}"
        )
