"""The samples of the configured source: image/mask pairs of a folder, the Oxford Pet layout
or the synthetic dataset, sorted by key; listed once per run.

    samples = list_samples(cfg.data)                  # file headers checked, errors raised
    samples, problems = list_pairs(cfg.data, root)    # no header read; problems recorded
    with listed_once():                               # a run: each folder listed once
        ...
    listing = Listing.of(samples, root)               # what other processes get instead
    samples = list_samples(cfg.data, check=False, listing=listing)

A run lists its dataset once. Within `listed_once` (a search, a cross-validation, `segray auto`)
a listing is remembered by what it depends on (source, root, folders, mask suffix). Trial
drivers, Train workers and the fold tasks run in other processes, on any node: they get the
driver's `Listing` (paths relative to the root, rebased on their own copy of the data).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from segray.config import DataConfig
from segray.data.folder import Problems, Sample, check_headers, pair_files
from segray.data.pet import pet_samples
from segray.data.remote import dataset_root, renamed
from segray.timeline import mark

__all__ = ["Listing", "list_pairs", "list_samples", "listed_once"]

_MEMO: ContextVar[dict | None] = ContextVar("segray_listings", default=None)


@dataclass(frozen=True)
class Listing:
    """A dataset's samples, listed once on the driver, as paths relative to its root."""

    samples: tuple[tuple[str, str, str | None], ...]  # (key, image, mask) under the root

    @classmethod
    def of(cls, samples: Sequence[Sample], root: str | Path) -> Listing:
        """``samples`` relative to ``root``; a file outside it keeps its absolute path."""
        base = Path(root).absolute()

        def rel(path: str | None) -> str | None:
            if path is None:
                return None
            try:
                return Path(path).absolute().relative_to(base).as_posix()
            except ValueError:
                return str(Path(path).absolute())

        return cls(tuple((s.key, rel(s.image), rel(s.mask)) for s in samples))

    def at(self, root: str | Path) -> list[Sample]:
        """The samples under ``root`` (this process's copy of the dataset)."""
        base = Path(root).absolute()
        return [
            Sample(key, str(base / image), None if mask is None else str(base / mask))
            for key, image, mask in self.samples
        ]


@contextmanager
def listed_once() -> Iterator[None]:
    """Within: each dataset folder is listed once (nested scopes share the outer one)."""
    if _MEMO.get() is not None:
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def list_samples(
    data_cfg: DataConfig, *, check: bool = True, listing: Listing | None = None
) -> list[Sample]:
    """Every sample of the configured source, sorted by key (``check``: read file headers).
    ``listing``: the driver's listing of this dataset, rebased here instead of listing again."""
    root = dataset_root(data_cfg)
    if listing is not None:
        return listing.at(root)
    with renamed(data_cfg.root, root):
        samples, problems = list_pairs(data_cfg, root)
        if check and data_cfg.source != "pet":
            check_headers(samples, problems)
        problems.raise_if_any()
        return samples


def list_pairs(data_cfg: DataConfig, root: Path) -> tuple[list[Sample], Problems]:
    """The samples under the local ``root`` of ``data_cfg``'s dataset, and the pairing problems
    (unmatched files), recorded instead of raised."""
    key = (data_cfg.source, str(root), data_cfg.images_dir, data_cfg.masks_dir)
    key += (data_cfg.mask_suffix,)
    memo = _MEMO.get()
    if memo is not None and key in memo:
        samples, problems = memo[key]
        return list(samples), problems.copy()
    samples, problems = _list(data_cfg, root)
    if memo is not None:
        memo[key] = (list(samples), problems.copy())
    return samples, problems


def _list(data_cfg: DataConfig, root: Path) -> tuple[list[Sample], Problems]:
    mark("listing", root=str(root))
    if data_cfg.source == "pet":
        return pet_samples(root, "trainval"), Problems(root)
    if data_cfg.source == "synthetic":
        return pair_files(root / "images", root / "masks")
    return pair_files(
        root / data_cfg.images_dir, root / data_cfg.masks_dir, mask_suffix=data_cfg.mask_suffix
    )
