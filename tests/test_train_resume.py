"""Kill a training run after epoch 2, then `segray train --resume`: the same weights and history
as an uninterrupted run with the same seed."""

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
import torch

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


# 4 epochs of 3 passes over the 11 training images, with flips and brightness/contrast on:
# a few seconds between epoch 2's checkpoint and the end, to kill the run in.
RUN = [*TINY, "train.epochs=4", "data.samples_per_image=3", "data.brightness_contrast=0.5"]
METRICS = ["epoch", "lr", "train_loss", "train_loss_bce", "train_loss_dice", "val_loss", "val_dice"]


def test_killed_and_resumed_run_equals_an_uninterrupted_one(ray_exclusive, tmp_path):
    straight = tmp_path / "straight"
    full = _segray("train", "--output", str(straight), *RUN, log=tmp_path / "straight.log")
    full.wait(timeout=600)
    assert full.returncode == 0, (tmp_path / "straight.log").read_text()[-3000:]

    out = tmp_path / "run"
    first = _segray("train", "--output", str(out), *RUN, log=tmp_path / "first.log")
    _wait_for_registered_checkpoint(out / "ray", "checkpoint_epoch_0002", first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "history.parquet").exists()  # the run really was cut short

    # A setting that would bend the trajectory is refused, in one line, before any work.
    refused = _segray("train", "--resume", str(out), "optim.lr=0.5", log=tmp_path / "refused.log")
    refused.wait(timeout=300)
    lines = (tmp_path / "refused.log").read_text().strip().splitlines()
    assert refused.returncode != 0
    assert "cannot change optim.lr (0.01 -> 0.5)" in lines[-1], lines[-5:]

    second = _segray("train", "--resume", str(out), log=tmp_path / "second.log")
    second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert "epoch 1/4" not in log and "epoch 2/4" not in log  # it continued after epoch 2

    want = pd.read_parquet(straight / "history.parquet")[METRICS]
    got = pd.read_parquet(out / "history.parquet")[METRICS]
    assert got["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(got, want, rtol=1e-6)
    a = torch.load(straight / "checkpoints" / "last" / "model.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "last" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
