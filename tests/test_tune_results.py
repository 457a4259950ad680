"""Which checkpoint a finished trial offers as its best (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from segray.tune import _best_kept_epoch, _kept_epochs


def _epoch(hist: pd.DataFrame, row) -> int:
    return int(hist.loc[row, "epoch"])


def test_kept_epochs_lists_the_checkpoint_folders_ray_left(tmp_path: Path):
    for name in ("checkpoint_epoch_0003", "checkpoint_epoch_0004", "checkpoint_epoch_x"):
        (tmp_path / "trial_ab" / name).mkdir(parents=True)
    (tmp_path / "trial_ab" / "checkpoint_epoch_0005").write_text("a file, not a checkpoint")
    assert _kept_epochs(str(tmp_path), "ab") == {3, 4}
    assert _kept_epochs(str(tmp_path), "missing") == set()


def test_best_epoch_is_one_whose_checkpoint_was_kept():
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.9, 0.5, 0.6, 0.7]})
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {1, 4})) == 1
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {3, 4})) == 4  # 1 was deleted
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", -1.0, {1, 2, 3, 4})) == 2  # mode=min


def test_a_tie_goes_to_the_later_epoch():
    """A model stuck on one prediction scores the same every epoch: Ray keeps the later
    checkpoints, so the first best epoch may have no checkpoint any more."""
    hist = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_dice": [0.6] * 4})
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, {3, 4})) == 4
    assert _epoch(hist, _best_kept_epoch(hist, "val_dice", 1.0, set())) == 4
