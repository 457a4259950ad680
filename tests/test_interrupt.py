"""Interrupted and resumed runs: Ctrl-C on `segray tune` exits 130 and publishes nothing, its
resume (with a changed setting) finishes; `segray auto` killed after its search resumes without
searching again; inputs and cluster addresses that cannot work are refused at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_train_resume import _segray, _wait_for
from tests.test_tune import SEARCH


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def _run(*args: str, log: Path, timeout: float = 900) -> int:
    proc = _segray(*args, log=log)
    proc.wait(timeout=timeout)
    return proc.returncode


@pytest.mark.integration
@pytest.mark.slow
def test_ctrl_c_stops_a_search_unpublished_and_its_resume_finishes(ray_exclusive, tmp_path):
    from segray.search.results import config_from_yaml

    out = tmp_path / "search"
    args = [*SEARCH, "tune.num_samples=2", "train.epochs=3", "tune.scheduler=none"]
    first = _segray("tune", "--output", str(out), *args, log=tmp_path / "first.log")
    _wait_for((out / "ray" / "trials", "trial_*/checkpoint_epoch_0001"), first)  # mid-trial
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    first.wait(timeout=300)
    said = [line for line in _lines(tmp_path / "first.log") if line.startswith("segray:")]
    assert first.returncode == 130, said
    assert said == [
        f"segray: interrupted: the search in {out} stopped before it finished (Ctrl-C); nothing "
        f"was published; continue it with: segray tune --resume {out}"
    ]
    assert not (out / "best").exists() and not (out / "summary.json").exists()

    # A setting that would change the restored trials is refused, naming it.
    refused = tmp_path / "refused.log"
    assert _run("tune", "--resume", str(out), "train.epochs=5", log=refused) == 2
    said = [line for line in _lines(refused) if line.startswith("segray:")]
    assert len(said) == 1 and "cannot change train.epochs (3 -> 5)" in said[0], said

    # One that does not is applied and printed; the search finishes and publishes best/.
    log = tmp_path / "second.log"
    assert _run("tune", "--resume", str(out), "segment.batch_size=3", log=log) == 0, (
        log.read_text()[-3000:]
    )
    assert "resume: applying segment.batch_size (8 -> 3)" in log.read_text()
    assert config_from_yaml((out / "config.yaml").read_text()).segment.batch_size == 3
    assert (out / "best" / "model.pt").is_file()
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all(), trials["error"]
    assert trials["stopped_by"].isna().all() and not trials["stopped_early"].any()
    history = pd.read_parquet(out / "history.parquet")
    assert history.groupby("trial_id")["epoch"].apply(lambda e: sorted(e) == [1, 2, 3]).all()


@pytest.mark.integration
@pytest.mark.slow
def test_auto_killed_after_its_search_resumes_without_searching_again(ray_exclusive, tmp_path):
    from segray.data.synth import generate

    data = generate(tmp_path / "data", num=16, size=32, seed=1)
    out = tmp_path / "auto"
    fixed = ["tune.num_samples=2", "train.epochs=2", "tune.time_budget_s=null"]
    args = ["auto", "--data", str(data), "--output", str(out), "--folds", "0", *fixed]
    first = _segray(*args, log=tmp_path / "first.log")
    summary = out / "tune" / "summary.json"
    deadline = time.monotonic() + 900
    while not summary.exists():  # the search published: kill before the run can finish
        assert first.poll() is None and time.monotonic() < deadline, _lines(tmp_path / "first.log")
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "auto_summary.json").exists()
    searched = pd.read_parquet(out / "tune" / "trials.parquet")

    # A rerun without --resume refuses, and says how to continue.
    again = tmp_path / "again.log"
    assert _run(*args, log=again, timeout=300) == 2
    assert f"continue it with segray auto --resume {out}" in again.read_text()

    log = tmp_path / "resume.log"
    assert _run("auto", "--resume", str(out), log=log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "epoch 1/" not in text and "training:" not in text  # no trial trained again
    assert (out / "auto_summary.json").is_file() and (out / "eval" / "metrics.json").is_file()

    # The same trials with the same results (a restored Tune lists them in another order).
    def rows(t: pd.DataFrame) -> pd.DataFrame:
        return t.sort_values("trial_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(
        rows(pd.read_parquet(out / "tune" / "trials.parquet")), rows(searched)
    )


def test_auto_dry_run_refuses_a_missing_unlabelled_folder_before_ray(tmp_path, monkeypatch):
    from segray.cli import main
    from segray.data.synth import generate

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the inputs were checked")

    monkeypatch.setattr("segray.cluster.ensure_ray", no_ray)
    data = generate(tmp_path / "data", num=12, size=32, seed=0)
    missing = tmp_path / "archive"
    argv = ["auto", "--data", str(data), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*argv, "--unlabelled", str(missing)]) == 2
    assert main([*argv, "--folds", "20"]) == 2  # 10 train + val images: at most 10 folds
    assert main([*argv, "data.split=[0.8,0.2,0.0]"]) == 2  # no test split to score on
    assert main([*argv, "tune.num_sample=3"]) == 2  # a misspelt key


def test_an_unreachable_address_is_one_line(tmp_path):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    proc = subprocess.run(
        [sys.executable, "-m", "segray.cli", "tune", "--address", address, *SEARCH],
        capture_output=True,
        text=True,
        timeout=300,  # a guard only: Ray's own connect would retry for minutes
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"segray: error: --address {address}: no Ray cluster answers at {address} (Connection "
        "refused): check the address (a head node's GCS port, 6379 by default), or leave "
        "--address and RAY_ADDRESS unset for a local Ray"
    ]
    assert "Failed to connect to GCS" not in proc.stdout + proc.stderr
