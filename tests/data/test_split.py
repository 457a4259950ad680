"""Exact hash-order splits: sizes, stability when files are added, groups, tiny datasets,
explicit ids, splits.json, slices of volumes."""

from __future__ import annotations

from collections import Counter

import pytest

from segray.data.folder import DatasetError, Sample
from segray.data.split import (
    assign_splits,
    group_key,
    slice_groups_hint,
    split_counts,
    split_samples,
    splits_record,
)


def samples(keys) -> list[Sample]:
    return [Sample(k, f"/i/{k}.png", f"/m/{k}.png") for k in keys]


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.7, 0.15, 0.15), (0.8, 0.1, 0.1)])
def test_split_sizes_for_5_to_20_pairs_are_within_one_image_of_the_fractions(fractions):
    for n in range(5, 21):
        for seed in range(5):
            out = split_samples(samples(f"img_{i:03d}" for i in range(n)), fractions, seed)
            for name, fraction in zip(("train", "val", "test"), fractions, strict=True):
                assert abs(len(out[name]) - n * fraction) <= 1, (n, seed, name, len(out[name]))
            assert sum(len(v) for v in out.values()) == n


def test_8_pairs_split_5_2_1_whatever_the_seed():
    for seed in range(20):
        out = split_samples(samples(f"s{i}" for i in range(8)), (0.6, 0.2, 0.2), seed)
        assert [len(out[k]) for k in ("train", "val", "test")] == [5, 2, 1], seed
    assert split_counts(10, (0.6, 0.2, 0.2)) == (6, 2, 2)
    assert split_counts(12, (0.6, 0.2, 0.2)) == (7, 3, 2)
    assert split_counts(20, (0.7, 0.15, 0.15)) == (14, 3, 3)
    assert split_counts(10_000, (0.7, 0.15, 0.15)) == (7000, 1500, 1500)


def test_assignment_is_stable_independent_of_order_and_depends_on_the_seed():
    keys = [f"k{i}" for i in range(200)]
    first = assign_splits(keys, (0.7, 0.15, 0.15), 0)
    assert first == assign_splits(list(reversed(keys)), [0.7, 0.15, 0.15], 0)
    assert first != assign_splits(keys, (0.7, 0.15, 0.15), 1)


def test_adding_files_moves_only_keys_next_to_a_cut():
    """An exact cut cannot promise that no old key ever moves (the cuts shift as files are
    added), but only keys next to a cut in the hash order move: at most m + 1 for m new files,
    and at most 2 for one new file."""
    old = [f"a{i}" for i in range(300)]
    before = assign_splits(old, (0.7, 0.15, 0.15), 5)
    for j in range(20):
        after = assign_splits([*old, f"b{j}"], (0.7, 0.15, 0.15), 5)
        assert sum(before[k] != after[k] for k in old) <= 2
    after = assign_splits(old + [f"b{j}" for j in range(30)], (0.7, 0.15, 0.15), 5)
    assert sum(before[k] != after[k] for k in old) <= 31


def test_splits_are_disjoint_cover_everything_and_sorted():
    data = samples(f"{i:03d}" for i in range(100, 0, -1))
    out = split_samples(data, (0.6, 0.2, 0.2), seed=2)
    assert list(out) == ["train", "val", "test"]
    assert [len(v) for v in out.values()] == [60, 20, 20]
    keys = [s.key for name in out for s in out[name]]
    assert sorted(keys) == sorted(s.key for s in data) and len(set(keys)) == len(keys)
    for part in out.values():
        assert [s.key for s in part] == sorted(s.key for s in part)


def test_zero_fraction_split_stays_empty():
    out = split_samples(samples(str(i) for i in range(500)), (0.8, 0.2, 0.0), seed=0)
    assert out["test"] == [] and len(out["train"]) == 400 and len(out["val"]) == 100


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_tiny_datasets_still_train_and_validate(n):
    for seed in range(30):
        out = split_samples(samples(f"s{i}" for i in range(n)), seed=seed)
        assert out["train"] and out["val"], (n, seed)
        assert sum(len(v) for v in out.values()) == n
    # 2 pairs at 0.7 / 0.15 / 0.15 round to 2 / 0 / 0: one moves to val
    out = split_samples(samples(["s0", "s1"]), seed=0)
    assert [len(out[k]) for k in ("train", "val", "test")] == [1, 1, 0]


GROUP = r"^(vol\d+)_"


def test_groups_stay_whole_in_train_val_and_test():
    keys = [f"vol{v}_z{z:03d}" for v in range(12) for z in range(5)]  # 12 volumes x 5 slices
    for seed in range(20):
        split_of = assign_splits(keys, (0.6, 0.2, 0.2), seed, group_by=GROUP)
        owner: dict[str, set[str]] = {}
        for key, name in split_of.items():
            owner.setdefault(group_key(key, GROUP), set()).add(name)
        assert all(len(names) == 1 for names in owner.values()), owner
        counts = Counter(split_of.values())
        assert (counts["train"], counts["val"], counts["test"]) in {(35, 15, 10), (35, 10, 15)}


def test_groups_of_unequal_size_cut_nearest_the_fractions():
    keys = [f"vol{v}_z{z:02d}" for v in range(10) for z in range(2 + v % 3)]  # 2..4 slices
    split_of = assign_splits(keys, (0.6, 0.2, 0.2), 3, group_by=GROUP)
    counts = Counter(split_of.values())
    biggest = 4
    for name, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        assert abs(counts[name] - len(keys) * fraction) <= biggest, counts


def test_two_groups_still_train_and_validate():
    keys = ["vol1_z1", "vol1_z2", "vol2_z1", "vol2_z2"]
    for seed in range(10):
        split_of = assign_splits(keys, (0.7, 0.15, 0.15), seed, group_by=GROUP)
        assert sorted(Counter(split_of.values()).items()) == [("train", 2), ("val", 2)]


def test_splits_record_lists_the_splits_and_every_fold():
    class Data:
        split, split_seed, split_ids, group_by = [0.6, 0.2, 0.2], 0, None, GROUP
        folds, fold = 3, None

    data = samples(f"vol{v}_z{z}" for v in range(10) for z in range(3))
    record = splits_record(data, Data)
    assert record["counts"] == {"train": 18, "val": 6, "test": 6}
    assert sorted(record["train"] + record["val"] + record["test"]) == sorted(s.key for s in data)
    assert len(record["folds"]) == 3
    pool = set(record["train"] + record["val"])
    vals = [set(f["val"]) for f in record["folds"]]
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)
    for fold in record["folds"]:
        assert set(fold["train"]) == pool - set(fold["val"])
        groups = [{group_key(k, GROUP) for k in fold[name]} for name in ("train", "val")]
        assert not groups[0] & groups[1]


@pytest.mark.parametrize(
    "keys, pattern",
    [
        ([f"vol{v}_z{z:03d}" for v in range(6) for z in range(4)], r"^(vol\d+)"),
        ([f"case{v}_slice_{z:03d}" for v in range(3) for z in range(8)], r"^(case\d+)"),
    ],
)
def test_slices_of_volumes_are_recognised(keys, pattern):
    hint = slice_groups_hint(keys)
    assert hint is not None and f"data.group_by='{pattern}'" in hint
    groups = {group_key(k, pattern) for k in keys}
    assert len(groups) == len({k.rsplit("_", 1)[0] for k in keys})


@pytest.mark.parametrize(
    "keys",
    [
        [f"img_{i:03d}" for i in range(40)],  # one running number: no volumes
        [f"cat_{i}" for i in range(20)] + [f"dog_{i}" for i in range(20)],  # no volume id
        ["a", "b", "c"],
    ],
)
def test_plain_stems_are_not_called_slices(keys):
    assert slice_groups_hint(keys) is None


def test_explicit_ids():
    data = samples(["a", "b", "c", "d"])
    out = split_samples(data, ids={"train": ["b", "a"], "val": ["c"]})
    assert [s.key for s in out["train"]] == ["a", "b"]
    assert [s.key for s in out["val"]] == ["c"] and out["test"] == []  # "d": in no list


def test_explicit_ids_naming_missing_keys():
    data = samples(["a", "b"])
    with pytest.raises(DatasetError) as e:
        split_samples(data, ids={"train": ["a", "x1", "x2"], "val": ["x3", "x4", "x5", "x6"]})
    msg = str(e.value)
    assert msg == (
        "split ids: 6 keys not in the dataset (2 samples): 'x1', 'x2', 'x3', 'x4', 'x5', ..."
    )


def test_explicit_ids_key_in_two_splits():
    with pytest.raises(DatasetError, match="'a' is listed in both train and val"):
        split_samples(samples(["a"]), ids={"train": ["a"], "val": ["a"]})
