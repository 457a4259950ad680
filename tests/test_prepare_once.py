"""A run fingerprints and lists its dataset once: trials, Train workers, folds and the test
evaluation get the driver's listing (`segray.data.samples.Listing`) instead of redoing it.

The whole-run check counts the moments every process records (`segray.timeline`): the
variable that turns them on is set before Ray starts, so every Ray process inherits it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from segray.config import Config, apply_overrides
from segray.data import Listing, Sample, inspect_data, list_samples, listed_once, prepared_with
from segray.data.synth import generate
from segray.timeline import ENV, mark, process_started


# --------------------------------------------------------------------------- units
def _folder(root: Path, n: int = 6) -> Config:
    generate(root, num=n, size=32, seed=1)
    return apply_overrides(Config(), {"data.source": "folder", "data.root": str(root)})


def _count_listings(path: Path) -> int:
    return sum(json.loads(line)["event"] == "listing" for line in path.read_text().splitlines())


def test_a_listing_rebases_on_another_copy_of_the_dataset(tmp_path):
    cfg = _folder(tmp_path / "a")
    samples = list_samples(cfg.data)
    listing = Listing.of(samples, tmp_path / "a")
    assert all(not Path(img).is_absolute() for _, img, _ in listing.samples)
    moved = listing.at(tmp_path / "b")
    assert [s.key for s in moved] == [s.key for s in samples]
    assert moved[0].image == str(
        tmp_path / "b" / Path(samples[0].image).relative_to(tmp_path / "a")
    )
    # what the Train workers get: the same samples, without listing the folder
    again = list_samples(cfg.data, check=False, listing=listing)
    assert again == samples
    # a file outside the root (a layout that points elsewhere) keeps its absolute path
    outside = Listing.of([Sample("x", str(tmp_path / "elsewhere.png"), None)], tmp_path / "a")
    assert outside.at(tmp_path / "b") == [Sample("x", str(tmp_path / "elsewhere.png"), None)]


def test_within_a_run_a_folder_is_listed_once(tmp_path, monkeypatch):
    moments = tmp_path / "moments.jsonl"
    monkeypatch.setenv(ENV, str(moments))
    cfg = _folder(tmp_path / "d")
    with listed_once():
        first = list_samples(cfg.data, check=False)
        _, fp = inspect_data(cfg)  # the fingerprint lists through the same memo
        with listed_once():  # a nested run shares the outer one
            assert list_samples(cfg.data, check=False) == first
    assert _count_listings(moments) == 1
    assert fp.listing.at(tmp_path / "d") == first
    list_samples(cfg.data, check=False)  # outside any run: listed again, never stale
    assert _count_listings(moments) == 2


def test_a_problem_found_in_a_remembered_listing_is_raised_every_time(tmp_path):
    from segray.data import DatasetError

    cfg = _folder(tmp_path / "d")
    (tmp_path / "d" / "images" / "extra.png").write_bytes(
        (tmp_path / "d" / "images" / "0000.png").read_bytes()
    )
    with listed_once():
        for _ in range(2):
            with pytest.raises(DatasetError, match="image without a mask"):
                list_samples(cfg.data, check=False)


def test_prepared_with_knows_its_own_dataset(tmp_path):
    cfg = _folder(tmp_path / "d")
    prepared, fp = inspect_data(cfg)
    assert prepared_with(prepared, fp)
    assert not prepared_with(cfg, fp)  # mask_mode still auto: not prepared
    other = _folder(tmp_path / "e")
    assert not prepared_with(inspect_data(other)[0], fp)
    assert not prepared_with(prepared, None)


def test_moments_are_recorded_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    mark("nothing")  # no file named: nothing written, nothing raised
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(ENV, str(path))
    mark("a", run="r", x=1)
    (event,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (event["event"], event["run"], event["x"], event["pid"]) == ("a", "r", 1, os.getpid())
    started = process_started()
    assert started is not None and started <= event["t"]


# --------------------------------------------------------------------------- a whole run
@pytest.fixture(scope="module")
def ray_recording(tmp_path_factory):
    """A local Ray whose every process records its moments to one file."""
    import ray

    from segray.cluster import local_ray_lock, start_local

    path = tmp_path_factory.mktemp("moments") / "moments.jsonl"
    old = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        with local_ray_lock():
            start_local(num_cpus=2)
            try:
                yield path
            finally:
                ray.shutdown()
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


@pytest.mark.integration
@pytest.mark.slow
def test_segray_auto_fingerprints_and_lists_its_dataset_once(ray_recording, tmp_path, monkeypatch):
    from segray.auto import run_auto

    data = generate(tmp_path / "data", num=24, size=32, seed=2)
    monkeypatch.setattr("segray.auto.plan.MIN_CV_PIXELS", 0)  # let the tiny folds run
    monkeypatch.setattr("segray.auto.plan.MIN_CV_EPOCHS", 1)
    fixed = ["tune.num_samples=1", "train.epochs=1", "tune.time_budget_s=null"]
    result = run_auto(str(data), tmp_path / "auto", time_budget_s=600, folds=2, overrides=fixed)
    assert result.summary["model"]["kind"] == "2-fold ensemble"
    events = [json.loads(line) for line in ray_recording.read_text().splitlines()]
    counts = Counter(e["event"] for e in events)
    # The moments came from every kind of process: 1 trial + 2 folds, each a trial driver
    # and 2 DDP workers, so a listing anywhere among them would have been counted.
    assert counts["trial_start"] == 3 and counts["loop_start"] == 6, counts
    assert len({e["pid"] for e in events}) >= 7
    assert (counts["fingerprint"], counts["listing"]) == (1, 1), counts
