"""Train/val/test splits that are stable per file: a hash of the key, not a shuffle.

A file's split depends only on its key and the seed, so adding files to a dataset never moves
an existing file to another split (no leak of old validation images into training).

Cross-validation folds (``data.folds``) are dealt from train + val; test stays held out. Groups
of stems (``data.group_by``: slices of one volume, photos of one patient) stay in one fold, and
the folds are balanced: groups ordered by their hash, dealt round-robin.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from segray.data.folder import DatasetError, Sample

__all__ = [
    "SPLITS",
    "assign_folds",
    "assign_split",
    "data_splits",
    "group_key",
    "split_samples",
    "unit_hash",
]

SPLITS = ("train", "val", "test")


def unit_hash(text: str) -> float:
    """A stable, well-mixed number in [0, 1) from ``text`` (SHA-1, not Python's salted hash)."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, fractions: Sequence[float], seed: int) -> str:
    """The split ("train", "val" or "test") of ``key``: its hash, bucketed by the fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"need 3 non-negative split fractions [train, val, test], got {fractions}")
    u = unit_hash(f"{seed}:{key}") * sum(fractions)
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if u < cumulative:
            return name
    # Rounding of the cumulative sum: the last split that takes anything.
    return next(
        name for name, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0
    )


def split_samples(
    samples: Sequence[Sample],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    ids: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Sample]]:
    """Samples per split: always the keys train, val and test, each list sorted by key.

    With ``ids`` (explicit keys per split) those lists are used as they are; samples named in
    none are left out. Otherwise the hash split applies, with one repair for tiny datasets:
    with 2 or more samples, train and (if its fraction is > 0) val are never empty.
    """
    samples = sorted(samples, key=lambda s: s.key)
    if ids is not None:
        return _explicit(samples, ids)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        out[assign_split(sample.key, fractions, seed)].append(sample)
    if len(samples) >= 2:
        if not out["train"]:
            _move_first(out, max(("val", "test"), key=lambda s: len(out[s])), "train")
        if fractions[1] > 0 and not out["val"]:
            _move_first(out, "train" if len(out["train"]) > 1 else "test", "val")
    return out


def _move_first(out: dict[str, list[Sample]], source: str, target: str) -> None:
    """Move the sample with the smallest key from ``source`` to ``target``."""
    first = min(out[source], key=lambda s: s.key)
    out[source].remove(first)
    out[target].append(first)
    out[target].sort(key=lambda s: s.key)


def _explicit(
    samples: Sequence[Sample], ids: Mapping[str, Sequence[str]]
) -> dict[str, list[Sample]]:
    unknown = sorted(set(ids) - set(SPLITS))
    if unknown:
        raise ValueError(f"split ids name unknown splits {unknown}; valid: {', '.join(SPLITS)}")
    owner: dict[str, str] = {}
    for name in SPLITS:
        for key in ids.get(name, ()):
            if key in owner:
                raise DatasetError(f"split ids: {key!r} is listed in both {owner[key]} and {name}")
            owner[key] = name
    known = {s.key for s in samples}
    missing = [key for key in owner if key not in known]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"split ids: {len(missing)} key{'s' * (len(missing) != 1)} not in the dataset "
            f"({len(known)} samples): {shown}"
        )
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        if sample.key in owner:
            out[owner[sample.key]].append(sample)
    return out


def group_key(key: str, pattern: str | None) -> str:
    """The fold group of ``key``: the match of ``pattern`` (its first group if it has one).

    A key the pattern does not match is a group of its own.
    """
    if pattern is None:
        return key
    m = re.search(pattern, key)
    if m is None:
        return key
    return m.group(1) if m.re.groups else m.group(0)


def assign_folds(
    keys: Sequence[str], folds: int, seed: int = 0, group_by: str | None = None
) -> dict[str, int]:
    """``{key: fold}`` for ``folds``-fold cross-validation, groups kept whole.

    Groups are ordered by a stable hash and dealt round-robin, so fold sizes (in groups) differ
    by at most one and the assignment depends only on the keys, the seed and the pattern.
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(group_key(key, group_by), []).append(key)
    if len(groups) < folds:
        by = f" grouped by {group_by!r}" if group_by else ""
        raise DatasetError(
            f"{folds}-fold cross-validation needs at least {folds} groups of images, found "
            f"{len(groups)} ({len(keys)} train + val images{by})"
        )
    order = sorted(groups, key=lambda g: (unit_hash(f"{seed}:fold:{g}"), g))
    return {key: i % folds for i, g in enumerate(order) for key in groups[g]}


def data_splits(samples: Sequence[Sample], data: Any) -> dict[str, list[Sample]]:
    """The splits a ``DataConfig`` asks for: ``split_samples``, then the fold if one is set.

    With ``data.fold``, train + val are pooled and dealt into ``data.folds`` folds: the fold
    ``data.fold`` validates, the others train; test is unchanged, so it stays held out.
    """
    out = split_samples(samples, data.split, data.split_seed, data.split_ids)
    if data.fold is None:
        return out
    pool = sorted([*out["train"], *out["val"]], key=lambda s: s.key)
    fold_of = assign_folds([s.key for s in pool], data.folds, data.split_seed, data.group_by)
    return {
        "train": [s for s in pool if fold_of[s.key] != data.fold],
        "val": [s for s in pool if fold_of[s.key] == data.fold],
        "test": out["test"],
    }
