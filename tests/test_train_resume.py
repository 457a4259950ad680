"""Kill a training run after its first epoch, then `segray train --resume`: same end, unbroken history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _segray(*args: str, log: Path) -> subprocess.Popen:
    """`segray ARGS` in its own process group (so a test can kill it with its local Ray)."""
    return subprocess.Popen(
        [sys.executable, "-m", "segray.cli", *args],
        start_new_session=True,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def _poll(done: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float) -> None:
    """Poll ``done()`` every 0.5 s while ``proc`` runs; fail if it ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"not {what} within {timeout} s")


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll for a file matching ``path_glob`` (root, pattern) while ``proc`` runs."""
    root, pattern = path_glob
    _poll(lambda: root.exists() and any(root.glob(pattern)), proc, f"{pattern} appeared", timeout)


def _wait_for_registered_checkpoint(
    root: Path, name: str, proc: subprocess.Popen, timeout: float = 300
) -> None:
    """Poll until Ray Train's controller has *registered* checkpoint ``name``.

    The checkpoint's files land in storage before the controller records them in its
    checkpoint-manager snapshot; a run killed in between resumes from the previous
    checkpoint (or none), so the files alone are not the signal.
    """

    def registered() -> bool:
        for snap in root.glob("*/checkpoint_manager_snapshot.json") if root.exists() else ():
            try:
                if name in snap.read_text():
                    return True
            except OSError:  # being replaced
                pass
        return False

    _poll(registered, proc, f"{name} was registered", timeout)


def test_kill_after_epoch_one_then_resume(ray_exclusive, tmp_path):
    out = tmp_path / "run"
    first = _segray(
        "train", "--output", str(out), *TINY, "train.epochs=4", log=tmp_path / "first.log"
    )
    _wait_for_registered_checkpoint(out / "ray", "checkpoint_epoch_0001", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "history.parquet").exists()  # the run really was cut short

    second = _segray("train", "--resume", str(out), log=tmp_path / "second.log")
    second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    # The resumed run started after epoch 1 or later: it never re-ran epoch 1.
    assert "epoch 1/4" not in log
    # Same LR schedule as an uninterrupted cosine run over 4 epochs.
    lrs = history["lr"].to_numpy()
    assert (lrs[1:] < lrs[:-1]).all()
