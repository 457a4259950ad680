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
        StepConfig.from_config(ckpt_cfg.train, ckpt_cfg.optim, torch.device("cpu")),
    )
    assert saved["val_num_images"] == 5 == got["num_images"]
    for key in ("dice", "iou", "accuracy", "precision", "recall", "roc_auc", "pr_auc", "mse"):
        assert saved[f"val_{key}"] == pytest.approx(got[key], abs=1e-6, nan_ok=True), key
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


def _folder_dataset(root, sizes: list[tuple[int, int]]) -> None:
    """images/NNNN.png (random RGB) + masks/NNNN.png (0/255 blobs) of the given (h, w) sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, (h, w) in enumerate(sizes):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 3 :] = 255
        Image.fromarray(image).save(root / "images" / f"{k:04d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k:04d}.png")


def test_one_val_image_on_two_workers_finishes(ray_local, tmp_path):
    """Rank 1's val shard is empty: every rank still runs the same collectives."""
    ids = "{train: ['0000','0001','0002','0003','0004','0005'], val: ['0011']}"
    cfg = load_config(None, TINY + ["train.epochs=1", f"data.split_ids={ids}"])
    result = run_training(cfg, tmp_path / "run")
    row = result.history.iloc[-1]
    assert row["val_num_images"] == 1
    model, ckpt_cfg = load_model(result.last)
    val = build_datasets(prepare_data(ckpt_cfg))["val"]
    got = evaluate(
        model,
        DataLoader(val),
        build_loss(ckpt_cfg),
        build_metrics(ckpt_cfg),
        StepConfig.from_config(ckpt_cfg.train, ckpt_cfg.optim, torch.device("cpu")),
    )
    assert row["val_dice"] == pytest.approx(got["dice"], abs=1e-6)


def test_mixed_size_full_resolution_validation(ray_local, tmp_path):
    """eval_transform=none with eval_batch_size=4: images of 3 sizes, batched by size."""
    sizes = [(64, 64)] * 4 + [(64, 64), (48, 80), (64, 64), (80, 48), (48, 80)]
    _folder_dataset(tmp_path / "data", sizes)
    ids = "{train: ['0000','0001','0002','0003'], val: ['0004','0005','0006','0007','0008']}"
    overrides = [
        "data.source=folder",
        f"data.root={tmp_path / 'data'}",
        "data.mask_mode=threshold",
        f"data.split_ids={ids}",
        "data.image_size=32",
        "data.batch_size=2",
        "data.eval_transform=none",
        "data.eval_batch_size=4",
        "model.name=unet",
        "model.base_width=8",
        "train.epochs=1",
        "train.num_workers=2",
    ]
    result = run_training(load_config(None, overrides), tmp_path / "run")
    row = result.history.iloc[-1]
    assert row["val_num_images"] == 5
    model, ckpt_cfg = load_model(result.last)
    val = build_datasets(prepare_data(ckpt_cfg))["val"]
    got = evaluate(
        model,
        DataLoader(val),
        build_loss(ckpt_cfg),
        build_metrics(ckpt_cfg),
        StepConfig.from_config(ckpt_cfg.train, ckpt_cfg.optim, torch.device("cpu")),
    )  # one image at a time: the reference
    for key in ("dice", "iou", "accuracy", "roc_auc"):
        assert row[f"val_{key}"] == pytest.approx(got[key], abs=1e-6), key


def test_diverging_run_stops_with_one_clear_error_on_every_rank(ray_local, tmp_path):
    """lr 1e20 blows the weights up in epoch 1; epoch 2's loss is NaN on both ranks."""
    from segray.engine import NonFiniteLossError

    ids = "{train: ['0000','0001','0002','0003','0004','0005','0006','0007']}"  # no val
    cfg = load_config(
        None,
        TINY
        + [
            f"data.split_ids={ids}",
            "optim.name=sgd",
            "optim.lr=1e20",
            "optim.grad_clip=null",
            "train.precision=fp32",
            "train.max_failures=0",
        ],
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"^non-finite training loss at epoch 2, step 1/1 \(rank 0: nan, rank 1: nan\)",
    ):
        run_training(cfg, tmp_path / "run")


def test_empty_training_split_is_refused_before_any_worker_starts(ray_local, tmp_path):
    from segray.data.folder import DatasetError

    cfg = load_config(None, TINY + ["data.split_ids={val: ['0011', '0012']}"])
    with pytest.raises(DatasetError, match="the training split is empty"):
        run_training(cfg, tmp_path / "run")


def test_grouped_slices_stay_whole_and_splits_json_lists_them(ray_local, tmp_path):
    """`segray train` on 6 volumes x 4 slices with data.group_by: splits.json beside config.yaml
    lists every key once, and each volume's slices sit in one split, used as listed."""
    import re

    from PIL import Image

    from segray.cli import main

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    keys = [f"vol{v}_z{z:03d}" for v in range(6) for z in range(4)]
    for key in keys:
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, rng.integers(4, 12) :] = 255
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / "images" / f"{key}.png"
        )
        Image.fromarray(mask).save(root / "masks" / f"{key}.png")
    out = tmp_path / "run"
    group = r"^(vol\d+)_"
    overrides = [
        "data.source=folder",
        f"data.root={root}",
        f"data.group_by={group}",
        "data.split=[0.5,0.25,0.25]",
        "data.image_size=32",
        "data.batch_size=4",
        "model.name=unet",
        "model.base_width=8",
        "train.epochs=1",
        "train.num_workers=1",
    ]
    assert main(["train", "--output", str(out), *overrides]) == 0
    assert (out / "config.yaml").is_file()
    splits = json.loads((out / "splits.json").read_text())
    parts = {name: splits[name] for name in ("train", "val", "test")}
    listed = [k for part in parts.values() for k in part]
    assert sorted(listed) == sorted(keys) and len(set(listed)) == len(keys)  # disjoint, complete
    owners: dict[str, set[str]] = {}
    for name, part in parts.items():
        assert part, name  # 6 volumes at 0.5 / 0.25 / 0.25: every split holds a volume
        for key in part:
            owners.setdefault(re.match(group, key).group(1), set()).add(name)
    assert len(owners) == 6 and all(len(o) == 1 for o in owners.values()), owners
    assert splits["group_by"] == group and splits["counts"]["train"] == 12
    history = pd.read_parquet(out / "history.parquet")
    assert history["val_num_images"].iloc[-1] == len(parts["val"])  # the run used that split
