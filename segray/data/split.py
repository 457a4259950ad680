"""Train/val/test splits: an exact cut of the keys in a stable, seeded hash order.

The keys (or, with ``data.group_by``, the groups of keys: slices of one volume, photos of one
patient) are ordered by a hash of the seed and the key, never by a shuffle, and cut at the
fractions: the first ``n * train`` images train, the next ``n * val`` validate, the rest test,
each count rounded by largest remainders (`split_counts`: within one image of its share), so 8
pairs at 0.6 / 0.2 / 0.2 split 5 / 2 / 1 (bucketing each key's hash on its own can give
1 / 6 / 1 there). A
group stays whole: it lands in one split, and the cuts fall between groups, at the image
counts nearest the fractions.

Stability: a key's place in the hash order depends only on the key and the seed, so the same
dataset always splits the same way, and the order of files never matters. What an exact cut
cannot keep is that no existing key ever moves: adding (or removing) m images shifts each cut
by at most about m + 1 positions of the order, so only the existing keys next to a cut can
change split (at most about m + 1 per cut); all others keep theirs. Adding one image moves at
most two existing ones across each cut; adding 10% more images leaves roughly 90% or more in
place. A split written down once (``splits.json``, or ``data.split_ids``) never moves.

Cross-validation folds (``data.folds``) are dealt from train + val; test stays held out. Groups
stay in one fold too, and the folds are balanced: groups ordered by their hash, dealt
round-robin.

Every run writes the split it used next to its ``config.yaml`` (`write_splits`):
``splits.json`` lists the keys of train, val and test, and of each fold when there are folds,
as nnU-Net's ``splits_final.json`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from segray.data.folder import DatasetError, Sample

__all__ = [
    "SPLITS",
    "SPLITS_FILE",
    "assign_folds",
    "assign_splits",
    "data_splits",
    "group_key",
    "slice_groups_hint",
    "small_split_warning",
    "split_counts",
    "split_samples",
    "splits_record",
    "unit_hash",
    "write_splits",
]

SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"


def unit_hash(text: str) -> float:
    """A stable, well-mixed number in [0, 1) from ``text`` (SHA-1, not Python's salted hash)."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"need 3 non-negative split fractions [train, val, test], got {fractions}")
    return [float(f) for f in fractions]


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Images per split for ``n`` images: ``n * fraction`` rounded by largest remainders.

    Each count is within one image of its share and they sum to ``n``; a zero fraction gets
    nothing. Ties go to the earlier split (train, then val).
    """
    fractions = _check_fractions(fractions)
    total = sum(fractions)
    # Rounded so that 0.15 * 20 is 3, not 3.0000000000000004 or 2.9999999999999996.
    quotas = [round(n * f / total, 9) for f in fractions]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(
    keys: Sequence[str], fractions: Sequence[float], seed: int, group_by: str | None = None
) -> dict[str, str]:
    """``{key: "train" | "val" | "test"}``: the exact hash-order cut (module docstring).

    With 2 or more groups, train is never empty, nor val when its fraction is > 0 (the cut
    moves by one group to make it so).
    """
    fractions = _check_fractions(fractions)
    groups: dict[str, list[str]] = {}
    for key in sorted(set(keys)):
        groups.setdefault(group_key(key, group_by), []).append(key)
    order = sorted(groups, key=lambda g: (unit_hash(f"{seed}:{g}"), g))
    ends = [0]  # ends[i]: images in the first i groups of the order
    for g in order:
        ends.append(ends[-1] + len(groups[g]))
    n_train, n_val, _ = split_counts(ends[-1], fractions)
    a = _nearest(ends, n_train, 0)
    b = _nearest(ends, n_train + n_val, a)
    if len(order) >= 2:  # tiny datasets: something to train on and something to validate on
        a = max(a, 1)
        b = max(b, a)
        if fractions[1] > 0 and b == a:
            if a > 1:
                a -= 1
            else:
                b += 1
    names = ["train"] * a + ["val"] * (b - a) + ["test"] * (len(order) - b)
    return {key: name for g, name in zip(order, names, strict=True) for key in groups[g]}


def _nearest(ends: Sequence[int], target: int, lo: int) -> int:
    """The cut (a number of groups, >= ``lo``) whose image count is nearest ``target``."""
    return min(range(lo, len(ends)), key=lambda i: (abs(ends[i] - target), i))


def split_samples(
    samples: Sequence[Sample],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    ids: Mapping[str, Sequence[str]] | None = None,
    group_by: str | None = None,
) -> dict[str, list[Sample]]:
    """Samples per split: always the keys train, val and test, each list sorted by key.

    With ``ids`` (explicit keys per split) those lists are used as they are; samples named in
    none are left out. Otherwise the exact hash-order cut applies (`assign_splits`), groups of
    ``group_by`` kept whole.
    """
    samples = sorted(samples, key=lambda s: s.key)
    if ids is not None:
        return _explicit(samples, ids)
    split_of = assign_splits([s.key for s in samples], fractions, seed, group_by)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        out[split_of[sample.key]].append(sample)
    return out


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
    """The group of ``key``: the match of ``pattern`` (its first group if it has one).

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
    out = split_samples(samples, data.split, data.split_seed, data.split_ids, data.group_by)
    if data.fold is None:
        return out
    return {**_fold(out, data, data.fold), "test": out["test"]}


def _fold(out: Mapping[str, Sequence[Sample]], data: Any, fold: int) -> dict[str, list[Sample]]:
    pool = sorted([*out["train"], *out["val"]], key=lambda s: s.key)
    fold_of = assign_folds([s.key for s in pool], data.folds, data.split_seed, data.group_by)
    return {
        "train": [s for s in pool if fold_of[s.key] != fold],
        "val": [s for s in pool if fold_of[s.key] == fold],
    }


# --------------------------------------------------------------------------- splits.json
def splits_record(samples: Sequence[Sample], data: Any) -> dict[str, Any]:
    """What ``splits.json`` holds: the keys of train, val and test as the run uses them (a
    fold run: that fold's), and with ``data.folds`` the keys of every fold's train and val."""
    used = data_splits(samples, data)
    record: dict[str, Any] = {
        "fractions": list(data.split),
        "seed": data.split_seed,
        "group_by": data.group_by,
        "explicit": data.split_ids is not None,
        "fold": data.fold,
        "counts": {name: len(used[name]) for name in SPLITS},
        **{name: [s.key for s in used[name]] for name in SPLITS},
    }
    if data.folds:
        base = split_samples(samples, data.split, data.split_seed, data.split_ids, data.group_by)
        record["folds"] = [
            {name: [s.key for s in part] for name, part in _fold(base, data, k).items()}
            for k in range(data.folds)
        ]
    return record


def write_splits(cfg: Any, folder: str, *, listing: Any = None) -> str:
    """Write ``splits.json`` (`splits_record`) of a prepared config's dataset into ``folder``
    (a local path or a URI), beside its ``config.yaml``; returns where it went. ``listing``:
    the dataset as listed already (`segray.data.samples.Listing`)."""
    from segray.data.samples import list_samples
    from segray.storage import Location, with_retries

    record = splits_record(list_samples(cfg.data, check=False, listing=listing), cfg.data)
    loc = Location.parse(folder).join(SPLITS_FILE)
    with_retries(loc.write, (json.dumps(record, indent=2) + "\n").encode(), what="write")
    return loc.uri


def small_split_warning(
    splits: Mapping[str, Sequence[Sample]], data: Any, least: int = 3
) -> str | None:
    """A warning when a split that should hold images holds fewer than ``least``, saying how
    the images were split; None when every such split is large enough."""
    sizes = {name: len(splits[name]) for name in SPLITS}
    wanted = [n for n, f in zip(SPLITS, data.split, strict=True) if f > 0 or data.split_ids]
    small = [n for n in wanted if sizes[n] < least]
    if not small:
        return None
    how = (
        "as data.split_ids lists them"
        if data.split_ids
        else f"cut exactly at data.split {list(data.split)} in a seeded stem-hash order"
        + (f", groups of data.group_by {data.group_by!r} kept whole" if data.group_by else "")
    )
    held = " and ".join(f"{n} {sizes[n]}" for n in small)
    return (
        f"small splits: {sum(sizes.values())} pairs split train {sizes['train']} / val "
        f"{sizes['val']} / test {sizes['test']} ({how}); {held} (< {least} images each): their "
        "scores rest on very few images; label more images, or set data.split / "
        "data.split_ids"
    )


# --------------------------------------------------------------------------- slices
_RUNNING = re.compile(r"^(.*\D)(\d+)$")  # a prefix, then a running number


def slice_groups_hint(keys: Sequence[str]) -> str | None:
    """A warning when ``keys`` look like slices of several volumes, else None.

    Slices: most stems are a prefix that carries an id (a digit) plus a running number
    (``vol3_z017``, ``case12_slice_004``), and several such prefixes each hold two or more
    stems. The warning names the volumes found and a ``data.group_by`` that keeps them whole.
    """
    prefixes = Counter(m.group(1) for k in keys if (m := _RUNNING.match(k)))
    volumes = {p: n for p, n in prefixes.items() if n >= 2 and any(c.isdigit() for c in p)}
    covered = sum(volumes.values())
    if len(volumes) < 2 or covered < 0.5 * len(keys):
        return None
    pattern = r"^(.*\D)\d+$"  # the prefix itself
    heads = {re.match(r"^(\D*)\d", p).group(1) for p in volumes}  # type: ignore[union-attr]
    if len(heads) == 1 and heads != {""}:  # one word before the volume id: ^(vol\d+)
        simple = f"^({re.escape(heads.pop())}\\d+)"
        if len({group_key(p, simple) for p in volumes}) == len(volumes):
            pattern = simple
    examples = ", ".join(sorted(volumes)[:3])
    return (
        f"{covered} of {len(keys)} stems look like slices of {len(volumes)} volumes (a prefix "
        f"plus a running number: {examples}{', ...' if len(volumes) > 3 else ''}) and "
        "data.group_by is not set: slices of one volume can land in train, val and test; keep "
        f"each volume whole with data.group_by='{pattern}'"
    )
