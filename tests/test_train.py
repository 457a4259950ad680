"""Ray Train DDP integration: a real local Ray, 2 gloo workers, tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from segray.checkpoint import load_model
from segray.config import load_config
from segray.data import build_datasets, prepare_data
from segray.engine import StepConfig, evaluate
from segray.train import build_loss, build_metrics, run_training
from tests.conftest import TINY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = load_config(None, TINY + ["train.epochs=3"])
    return run_training(cfg, out / "run"), cfg


def test_outputs_are_complete(trained):
    result, cfg = trained
    out = result.output
    assert (out / "config.yaml").is_file()
    for name in ("last", "best"):
        d = out / "checkpoints" / name
        assert {"model.pt", "config.yaml", "metrics.json"} <= {p.name for p in d.iterdir()}
        metrics = json.loads((d / "metrics.json").read_text())
        assert {"val_dice", "val_iou", "val_loss", "epoch"} <= metrics.keys()
    history = pd.read_parquet(out / "history.parquet")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert {
        "train_loss",
        "train_loss_bce",
        "train_loss_dice",
        "val_loss_dice",
        "val_loss",
        "val_dice",
        "val_roc_auc",
    } <= set(history.columns)
    best = json.loads((out / "checkpoints" / "best" / "metrics.json").read_text())
    assert best["val_dice"] == pytest.approx(history["val_dice"].max())


def test_ddp_ranks_hold_identical_parameters(trained):
    result, _ = trained
    h = result.history
    assert (h["param_rank_spread"] == 0.0).all()
    # ... and the parameters did move, so the check compared something that changes.
    assert h["param_fingerprint"].nunique() == len(h)


def test_val_metrics_equal_single_process_eval(trained):
    """5 val images over 2 ranks: nothing padded, nothing counted twice."""
    result, cfg = trained
    ckpt = result.output / "checkpoints" / "best"
    saved = json.loads((ckpt / "metrics.json").read_text())
    model, ckpt_cfg = load_model(ckpt)
    val = build_datasets(prepare_data(ckpt_cfg))["val"]
    assert len(val) == 5
    got = evaluate(
        model,
        DataLoader(val, batch_size=2),
        build_loss(ckpt_cfg),
        build_metrics(ckpt_cfg),
        StepConfig(torch.device("cpu")),
    )
    assert saved["val_num_images"] == 5 == got["num_images"]
    for key in ("dice", "iou", "accuracy", "precision", "recall", "roc_auc", "pr_auc", "mse"):
        assert saved[f"val_{key}"] == pytest.approx(got[key], abs=1e-6), key
    # The BCE part is a per-pixel mean: batching cannot change it. (The soft-Dice part is taken
    # over each batch, so the total loss depends on how images are batched per rank.)
    assert saved["val_loss_bce"] == pytest.approx(got["loss_bce"], rel=1e-5)


def test_checkpoint_loads_weights_only_and_predicts_any_size(trained):
    result, _ = trained
    state = torch.load(result.best / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    import segray

    seg = segray.load_segmenter(result.best, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (97, 131, 3), dtype=np.uint8)
    mask = seg.predict(image)
    assert mask.shape == (97, 131)
    assert set(np.unique(mask)) <= {0, 1}


def test_existing_run_is_not_silently_resumed(trained):
    result, cfg = trained
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg, result.output)
