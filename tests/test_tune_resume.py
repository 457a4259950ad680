"""Kill a search's driver after its first trial finished, `segray tune --resume`: every trial once."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

from tests.test_train_resume import _segray, _wait_for
from tests.test_tune import SEARCH

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_interrupted_search_resumes_without_rerunning_trials(ray_exclusive, tmp_path):
    out = tmp_path / "search"
    args = [*SEARCH, "tune.num_samples=3", "train.epochs=2", "tune.scheduler=none"]
    first = _segray("tune", "--output", str(out), *args, log=tmp_path / "first.log")
    trials_dir = out / "ray" / "trials"
    _wait_for((trials_dir, "trial_*/segray_done.json"), first)
    done_before = {p.parent.name for p in trials_dir.glob("trial_*/segray_done.json")}
    stamps = {
        p: p.stat().st_mtime_ns
        for name in done_before
        for p in (trials_dir / name).glob("checkpoint_epoch_*/model.pt")
    }
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "trials.parquet").exists()

    second = _segray("tune", "--resume", str(out), log=tmp_path / "second.log")
    second.wait(timeout=900)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert (trials["status"] == "TERMINATED").all(), trials["error"].tolist()
    assert {f"trial_{t}" for t in trials["trial_id"]} >= done_before
    # The trial that had finished was not trained again: its checkpoints were not rewritten.
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    history = pd.read_parquet(out / "history.parquet")
    assert history.groupby("trial_id")["epoch"].apply(lambda e: sorted(e) == [1, 2]).all()
