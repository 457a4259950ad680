"""Kill a search's driver after its first trial finished, `segray tune --resume`: every trial
once; lose a trial's worker, and Tune's retry of the trial resumes from its checkpoint."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest

from tests.test_train_resume import _segray, _wait_for, _wait_for_registered_checkpoint
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


def _session_pids(session: int, title: bytes = b"") -> list[int]:
    """Processes of ``session`` whose command line starts with ``title`` (Ray gives each of
    its workers a process group of its own, but they stay in the driver's session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile (ProcessLookupError is an OSError)
            continue
        if cmdline.startswith(title):
            pids.append(int(entry.name))
    return pids


def test_a_failed_trial_is_retried_from_its_last_checkpoint(ray_exclusive, tmp_path):
    """Lose a DDP worker after epoch 1: the trial fails (Train may not retry:
    ``train.max_failures=0``), Tune retries it (``tune.max_failures=1``), and the retry
    continues from the trial's last checkpoint instead of training epoch 1 again."""
    out, log = tmp_path / "search", tmp_path / "tune.log"
    # 4 passes over the images an epoch: seconds between epoch 1's checkpoint and the end
    args = [*SEARCH, "tune.num_samples=1", "train.epochs=4", "data.samples_per_image=4"]
    args += ["tune.scheduler=none", "tune.max_failures=1"]
    proc = _segray("tune", "--output", str(out), *args, log=log)
    try:
        _wait_for_registered_checkpoint(out / "ray" / "trials", "checkpoint_epoch_0001", proc)
        workers = _session_pids(proc.pid, b"ray::RayTrainWorker")
        assert len(workers) == 2, workers  # the trial's two DDP workers
        os.kill(workers[-1], signal.SIGKILL)
        proc.wait(timeout=900)
    finally:  # never leave a local Ray behind for the next test
        for pid in _session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 1 and trials["status"].tolist() == ["TERMINATED"], trials["error"]
    assert trials["epochs_run"].tolist() == [4]
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    # Two attempts: the first from scratch, the retry from a checkpoint (epoch 1 or later) ...
    starts = re.findall(r"training: .* epochs (\d+)-4", text)
    assert starts[0] == "1" and len(starts) == 2 and int(starts[1]) >= 2, starts
    # ... so epoch 1 was trained exactly once.
    assert len(re.findall(r"epoch 1/4\b", text)) == 1
