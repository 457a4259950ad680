"""Stable hash splits: fractions, stability when files are added, tiny datasets, explicit ids."""

from __future__ import annotations

from collections import Counter

import pytest

from segray.data.folder import DatasetError, Sample
from segray.data.split import assign_split, split_samples


def samples(keys) -> list[Sample]:
    return [Sample(k, f"/i/{k}.png", f"/m/{k}.png") for k in keys]


def test_fractions_within_two_percent_on_10000_keys():
    counts = Counter(assign_split(f"img_{i:05d}", (0.7, 0.15, 0.15), seed=0) for i in range(10_000))
    for name, target in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(counts[name] / 10_000 - target) < 0.02, counts


def test_assignment_is_stable_and_depends_on_the_seed():
    keys = [f"k{i}" for i in range(200)]
    first = [assign_split(k, (0.7, 0.15, 0.15), 0) for k in keys]
    assert first == [assign_split(k, [0.7, 0.15, 0.15], 0) for k in keys]
    assert first != [assign_split(k, (0.7, 0.15, 0.15), 1) for k in keys]


def test_adding_files_never_moves_old_ones():
    old = samples(f"a{i}" for i in range(300))
    new = samples(f"b{i}" for i in range(300))
    before = split_samples(old, seed=5)
    after = split_samples(old + new, seed=5)
    for name in ("train", "val", "test"):
        old_keys = {s.key for s in before[name]}
        assert old_keys == {s.key for s in after[name] if s.key.startswith("a")}


def test_splits_are_disjoint_cover_everything_and_sorted():
    data = samples(f"{i:03d}" for i in range(100, 0, -1))
    out = split_samples(data, (0.6, 0.2, 0.2), seed=2)
    assert list(out) == ["train", "val", "test"]
    keys = [s.key for name in out for s in out[name]]
    assert sorted(keys) == sorted(s.key for s in data) and len(set(keys)) == len(keys)
    for part in out.values():
        assert [s.key for s in part] == sorted(s.key for s in part)


def test_zero_fraction_split_stays_empty():
    out = split_samples(samples(str(i) for i in range(500)), (0.8, 0.2, 0.0), seed=0)
    assert out["test"] == [] and out["train"] and out["val"]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_tiny_datasets_still_train_and_validate(n):
    for seed in range(30):
        out = split_samples(samples(f"s{i}" for i in range(n)), seed=seed)
        assert out["train"] and out["val"], (n, seed)
        assert sum(len(v) for v in out.values()) == n


def test_tiny_repair_moves_the_first_train_key_when_hash_gives_no_val():
    data = samples(f"s{i}" for i in range(4))
    seed = next(
        s
        for s in range(1000)
        if all(assign_split(x.key, (0.7, 0.15, 0.15), s) == "train" for x in data)
    )
    out = split_samples(data, seed=seed)
    assert [s.key for s in out["val"]] == ["s0"]
    assert [s.key for s in out["train"]] == ["s1", "s2", "s3"]


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
