"""DataLoaders of a DDP worker: which samples each rank sees, in which order and batches.

    sampler, train = train_loader(cfg, datasets["train"], rank, world)
    sampler.set_epoch(epoch)                      # every epoch, before iterating
    val = val_loader(cfg, datasets["val"], rank, world)

Training: a DistributedSampler (shuffled by seed + epoch, padded so every rank runs the same
number of steps) whose items are ``(epoch, index)``, so augmentations depend on (seed, epoch,
index) only. Validation: a strided shard without padding (every image counted exactly once over
all ranks, a shard may be empty), batched by image size (never stacked or padded across sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from segray.config import Config
from segray.data.dataset import SegmentationDataset

__all__ = ["EpochSampler", "ShardSampler", "SizeBatchSampler", "train_loader", "val_loader"]


class ShardSampler(Sampler[int]):
    """Strided, padding-free shard of ``range(n)`` for ``rank`` of ``world``.

    Unlike DistributedSampler it never repeats a sample to even out the shards, so metrics
    all-reduced over ranks count every validation image exactly once.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SizeBatchSampler(Sampler[list[int]]):
    """Batches of ``indices`` in which every image has the same size, each index exactly once.

    Full-resolution evaluation (``data.eval_transform: none``) meets images of many sizes, which
    cannot be stacked, and padding would change the metrics. ``size_of(i)`` (e.g. the image
    header's size) groups the indices, groups in order of first appearance; ``size_of=None``:
    every image has the same size, plain consecutive batches.
    """

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        size_of: Callable[[int], Hashable] | None = None,
    ) -> None:
        groups: dict[Hashable, list[int]] = {}
        for i in indices:
            groups.setdefault(None if size_of is None else size_of(i), []).append(i)
        self.batches = [
            group[j : j + batch_size]
            for group in groups.values()
            for j in range(0, len(group), batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` pairs of ``sampler`` (a DistributedSampler) for a dataset whose
    augmentation is seeded per (seed, epoch, index): DataLoader worker processes, persistent
    or not, then augment sample ``index`` of epoch ``epoch`` the same way on every run."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def train_loader(
    cfg: Config, train_ds: Dataset, rank: int, world: int, *, pin_memory: bool = False
) -> tuple[EpochSampler, DataLoader]:
    """(sampler, loader) of this rank's training shard; call ``sampler.set_epoch`` per epoch.

    The DistributedSampler pads every shard to the same length, so every rank runs the same
    number of steps (DDP needs that). Items are ``(epoch, index)``: augmentations depend on
    (seed, epoch, index) only, so a resumed epoch replays exactly.
    """
    batch = cfg.data.batch_size
    sampler = EpochSampler(
        DistributedSampler(
            train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed
        )
    )
    # Drop the last incomplete batch (BatchNorm cannot train on a batch of 1) unless that
    # would leave a shard with no batch at all.
    loader = DataLoader(
        train_ds,
        batch_size=batch,
        sampler=sampler,
        drop_last=len(sampler) >= batch,
        num_workers=cfg.data.loader_workers,
        pin_memory=pin_memory,
        persistent_workers=cfg.data.loader_workers > 0,
    )
    return sampler, loader


def val_loader(cfg: Config, val_ds: SegmentationDataset, rank: int, world: int) -> DataLoader:
    """This rank's strided, padding-free val shard (possibly empty), in batches of equal-sized
    images: full-resolution images of different sizes are never stacked or padded."""
    indices = ShardSampler(len(val_ds), rank, world).indices
    batch = cfg.data.eval_batch_size or cfg.data.batch_size
    mode, side = cfg.data.eval_transform, cfg.data.image_size

    def padded_size(i: int) -> tuple[int, ...]:  # padded up to side x side, larger ones kept
        return tuple(max(n, side) for n in val_ds.image_size(i))

    size_of: Callable[[int], Any] | None = None
    if batch > 1 and mode != "resize":
        size_of = val_ds.image_size if mode == "none" else padded_size
    return DataLoader(
        val_ds,
        batch_sampler=SizeBatchSampler(indices, batch, size_of),
        num_workers=cfg.data.loader_workers,
    )
